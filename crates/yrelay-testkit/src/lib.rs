//! Test support shared by the integration tests of several yrelay crates.
//!
//! - [`skip_or_fail`]: the policy for tests that need an external program (PostgreSQL,
//!   Redis, Node, ...): print a clear `SKIPPED` line when it is missing, unless
//!   `YRELAY_REQUIRE_SERVICES=1` (set by `.ci/run` after installing everything), where a
//!   missing service fails the test instead of passing silently.
//! - [`free_port`]: a free TCP port on 127.0.0.1 (tests never use fixed ports).
//! - [`Rng`]: a tiny seeded xorshift64* generator, so a test or benchmark produces the same
//!   data on every run and a failure can be replayed from its seed.
//! - [`PrivatePostgres`] and [`PrivateRedis`]: a private server for one test (or one test
//!   binary), started from the installed binaries on a free loopback port in a temporary
//!   directory, and stopped and removed again when the handle drops. Both can be stopped and
//!   started again on the same port and data, for tests of outages. `start_tls` variants
//!   serve TLS only (with the certificate and key in [`TlsFiles`]), for tests of encrypted
//!   connections to them.
//!
//! # Layout
//!
//! - this file: the skip policy, [`free_port`], [`Rng`].
//! - `process.rs`: running, signalling and waiting for the server processes, and the *reaper*
//!   that cleans up a server whose test process died without dropping its handle.
//! - `postgres.rs`: [`PrivatePostgres`].
//! - `redis.rs`: [`PrivateRedis`].
//!
//! This crate must not depend on the server or the bench crates: they use it.
//!
//! # Panics
//!
//! This is test support: where a test cannot go on (a server that does not come up, a
//! temporary directory that cannot be made) the functions panic with a message that says
//! what happened, including the tail of the server's log, rather than returning errors every
//! test would unwrap anyway.

mod postgres;
mod process;
mod redis;

pub use postgres::PrivatePostgres;
pub use redis::PrivateRedis;

/// A server certificate chain and its private key, PEM files, for a private server that
/// speaks TLS (the test makes them, e.g. with `rcgen`, for `127.0.0.1`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// The private key.
    pub key: std::path::PathBuf,
}

/// Environment variable that turns a missing service from a skip into a failure.
pub const REQUIRE_SERVICES: &str = "YRELAY_REQUIRE_SERVICES";

/// Whether `YRELAY_REQUIRE_SERVICES=1` is set (CI): a missing service must fail the test.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES).as_deref() == Ok("1")
}

/// Reports that `test` cannot run because of `reason` (with a hint on how to install what is
/// missing): panics when [`services_required`], else prints
/// `SKIPPED: <test>: <reason> (<hint>)` to stderr, and the caller returns (passes).
///
/// # Panics
///
/// When `YRELAY_REQUIRE_SERVICES=1`.
pub fn skip_or_fail(test: &str, reason: &str, hint: &str) {
    if services_required() {
        panic!("{test}: {reason}, and {REQUIRE_SERVICES}=1 forbids skipping ({hint})");
    }
    say(&format!("SKIPPED: {test}: {reason} ({hint})"));
}

/// Writes a line straight to stderr, so it shows even when libtest captures output.
pub fn say(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    // Nothing useful to do if stderr is gone.
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// A TCP port that was free on 127.0.0.1 a moment ago (the OS picked it for a listener that
/// is closed again). Another process can take it in between: the private servers retry with
/// a new port when theirs turns out to be taken.
///
/// # Panics
///
/// If no loopback listener can be bound at all.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind a listener on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("a bound listener has no address: {e}"))
        .port()
}

/// A small, fast, seeded pseudo-random generator (xorshift64*, Vigna 2014): the same seed
/// gives the same sequence on every run and platform. Not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0, which xorshift cannot leave, is replaced by a
    /// fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (of the type of `n`: `u32`, `u64` or `usize`). The modulo bias is
    /// negligible for the small `n` tests use.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn below<N: Bound>(&mut self, n: N) -> N {
        let n = n.to_u64();
        assert!(n > 0, "Rng::below(0): empty range");
        N::from_u64(self.next_u64() % n)
    }

    /// `true` with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill(&mut out);
        out
    }
}

/// The integer types [`Rng::below`] accepts.
pub trait Bound: Copy {
    /// Widens to `u64` (lossless for every implementor on 64-bit platforms).
    fn to_u64(self) -> u64;
    /// Narrows a value known to be below an original `Self`, so it fits.
    fn from_u64(v: u64) -> Self;
}

impl Bound for u64 {
    fn to_u64(self) -> u64 {
        self
    }
    fn from_u64(v: u64) -> Self {
        v
    }
}

impl Bound for u32 {
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
    fn from_u64(v: u64) -> Self {
        // Only called with a value below a `u32`: it fits.
        v as u32
    }
}

impl Bound for usize {
    fn to_u64(self) -> u64 {
        // usize is at most 64 bits on every platform Rust supports.
        self as u64
    }
    fn from_u64(v: u64) -> Self {
        // Only called with a value below a `usize`: it fits.
        v as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spreads() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(43).next_u64(), xs[0]);
        // xorshift64* (Vigna) from seed 1: the first output, computed independently.
        let mut c = Rng::new(1);
        assert_eq!(c.next_u64(), 0x47e4_ce4b_896c_dd1d);
        let mut counts = [0u32; 10];
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            counts[r.below(10usize)] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert!(r.below(3u32) < 3);
        assert!(r.below(5u64) < 5);
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), 0, "a zero seed does not get stuck");
    }

    #[test]
    fn fill_covers_odd_lengths() {
        let mut r = Rng::new(9);
        let bytes = r.bytes(13);
        assert_eq!(bytes.len(), 13);
        assert!(bytes.iter().any(|&b| b != 0));
        let mut again = Rng::new(9);
        assert_eq!(again.bytes(13), bytes);
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }
}
