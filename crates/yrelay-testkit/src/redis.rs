//! [`PrivateRedis`]: a Redis server of its own for one test.
//!
//! `redis-server` from PATH, on 127.0.0.1 and a free port, without any persistence
//! (`--save "" --appendonly no`), working directory and log in a temporary directory. Redis
//! runs fine as root, so no user switch is needed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, Reaper, STOP_TIMEOUT};
use crate::TlsFiles;

/// How to get the binary, for the SKIPPED line.
const HINT: &str = "install Redis: apt-get install redis-server";
/// How long the server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What Redis logs when its port is taken (then a new port is tried).
const PORT_TAKEN: &str = "Address already in use";
/// Attempts with a new port when the chosen one was taken in between.
const PORT_ATTEMPTS: usize = 5;
/// What Redis logs once it accepts connections (how a TLS-only server is waited for: a
/// plain PING cannot reach it).
const READY_LINE: &str = "Ready to accept connections";

/// A running private Redis server. Dropping it kills the server and removes its directory.
///
/// ```no_run
/// let Some(mut redis) = yrelay_testkit::PrivateRedis::start("my_test") else { return };
/// let url = redis.url(); // redis://127.0.0.1:PORT/
/// redis.stop();          // an outage...
/// redis.start_again();   // ...and the same address again, empty
/// ```
#[derive(Debug)]
pub struct PrivateRedis {
    test: String,
    program: PathBuf,
    /// Working directory and `server.log`; removed when dropped.
    root: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
    reaper: Option<Reaper>,
    /// Serve TLS only, with these files.
    tls: Option<TlsFiles>,
}

impl PrivateRedis {
    /// Starts `redis-server` for `test` and waits until it answers PING. Returns `None`
    /// after [`crate::skip_or_fail`] when `redis-server` is not on PATH.
    ///
    /// # Panics
    ///
    /// If the server does not answer within 30 s (the message includes its log), or under
    /// `YRELAY_REQUIRE_SERVICES=1` when it is missing.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// [`Self::start`], but the server speaks only TLS (no plain port), with the certificate
    /// and key in `tls`; [`Self::url`] is then `rediss://`. Clients need not present a
    /// certificate.
    pub fn start_tls(test: &str, tls: &TlsFiles) -> Option<Self> {
        Self::start_with(test, Some(tls.clone()))
    }

    fn start_with(test: &str, tls: Option<TlsFiles>) -> Option<Self> {
        let Some(program) = process::find_on_path("redis-server") else {
            crate::skip_or_fail(test, "`redis-server` not found on PATH", HINT);
            return None;
        };
        let root = tempfile::Builder::new()
            .prefix("yrelay-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{test}: cannot create a temporary directory: {e}"));
        let mut redis = Self {
            test: test.to_owned(),
            program,
            root,
            port: 0,
            server: None,
            reaper: None,
            tls,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            redis.port = crate::free_port();
            match redis.spawn_server() {
                Ok(()) => return Some(redis),
                Err(log) if log.contains(PORT_TAKEN) && attempt < PORT_ATTEMPTS => continue,
                Err(log) => redis.fail("did not start", &log),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The server's TCP port on 127.0.0.1 (the same across [`Self::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (not [`Self::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Kills the server (SIGKILL: an abrupt outage; there is nothing to persist) and waits
    /// for it to exit. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Our own child, by its pid.
            let _ = server.kill();
            let _ = server.wait();
        }
        self.reaper = None;
    }

    /// Starts the server again on the same port (empty: no persistence) and waits until it
    /// answers PING.
    ///
    /// # Panics
    ///
    /// If it is running, or does not come back within 30 s.
    pub fn start_again(&mut self) {
        assert!(
            self.server.is_none(),
            "{}: Redis is still running",
            self.test
        );
        if let Err(log) = self.spawn_server() {
            self.fail("did not start again", &log);
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log_path(), lines)
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn spawn_server(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        // A fresh log per start: the port check below reads only this start's lines.
        let _ = std::fs::remove_file(&log_path);
        let mut command = Command::new(&self.program);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                // Redis wants a CA even when it does not ask clients for certificates.
                .arg("--tls-ca-cert-file")
                .arg(&tls.cert)
                .args(["--tls-auth-clients", "no"]),
        };
        let mut server = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.root.path())
            .arg("--logfile")
            .arg(&log_path)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start redis-server: {e}", self.test));
        self.reaper = Reaper::start(server.id(), "KILL", self.root.path()).ok();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = match self.tls {
                None => ping(self.port),
                Some(_) => process::tail(&log_path, 50).contains(READY_LINE),
            };
            if ready {
                self.server = Some(server);
                return Ok(());
            }
            let exited = matches!(server.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                process::stop_child(&mut server, "KILL", STOP_TIMEOUT);
                self.reaper = None;
                let why = if exited {
                    "the server exited"
                } else {
                    "timed out waiting for it to accept connections"
                };
                return Err(format!("{why}; log:\n{}", process::tail(&log_path, 30)));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn fail(&self, what: &str, detail: &str) -> ! {
        panic!(
            "{}: private Redis (port {}, {}): {what}:\n{detail}",
            self.test,
            self.port,
            self.root.path().display()
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}
