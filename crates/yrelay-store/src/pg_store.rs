//! [`PgStore`]: the shared store of cluster mode, in PostgreSQL (cargo feature `postgres`).
//!
//! The schema (drawn in the crate docs, created by the embedded migrations in
//! `pg_migrations/`) keeps the same records as the sled store, one table per kind. Every
//! operation is one transaction on a pooled connection of the synchronous `postgres` client:
//!
//! - A write of a room (append, compact, save_version, delete, import) locks the room's row
//!   in `yrelay_rooms` (`SELECT ... FOR UPDATE`, inserting it first if new), updates its
//!   counters with the same [`RoomMeta`] methods as the other stores, writes the data rows
//!   and the counters, and commits. The row lock is what makes appends of several nodes to
//!   one room get distinct, consecutive seqs.
//! - Operations that remove or replace a room's snapshot or log (compact, compact_with,
//!   delete_room, import_room) also take the room's transaction-scoped advisory lock (a
//!   64-bit FNV-1a hash of the name): [`Store::compact_with`] *tries* it and gives up at once
//!   when another node holds it, so two nodes never compact one room at once, and its merge
//!   runs without the row lock (appends go on meanwhile) because nothing else can remove
//!   what it loaded.
//! - Reads run in a `REPEATABLE READ READ ONLY` transaction, so a load sees one consistent
//!   snapshot of the room's rows.
//!
//! Connections are pooled (a mutex-guarded list, at most [`PgOptions::pool_size`]). A
//! connection that turns out closed or fails with a connection error is dropped, and so are
//! the idle ones (they are very likely from the same, gone, server); the next call connects
//! anew. A call whose `BEGIN` fails that way on a reused connection retries once on a fresh
//! one — nothing was sent yet — so after a PostgreSQL restart the store recovers by itself,
//! without an error for the first caller.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::config::SslMode;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls, Row, Statement, Transaction};

use crate::meta::{len64, RoomMeta};
use crate::pg_tls::PgTls;
use crate::{
    AppendEntry, AuditRecord, LoadedRoom, Result, RoomDump, RoomInfo, Seq, Store, StoreError,
    VersionInfo, VersionKind,
};

/// One schema migration.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Append only: a released migration never changes.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "rooms, log, snapshots, audit records, versions, health probe",
    sql: include_str!("pg_migrations/0001_rooms.sql"),
}];

/// Advisory lock held (transaction-scoped) while migrations are checked and applied, so
/// that nodes starting at once apply each migration exactly once.
const MIGRATION_LOCK: i64 = fnv1a(b"yrelay schema migrations", b"");

/// Rows per `INSERT ... SELECT unnest(...)` statement of an import (bounds one message).
const IMPORT_CHUNK: usize = 1000;

/// The columns of a room's counters, in [`meta_of`]'s order.
const META_COLUMNS: &str = "live, next_seq, last_change_ms, snapshot_seq, snapshot_bytes, \
                            tail_entries, tail_bytes, next_version_id";

/// 64-bit FNV-1a of `prefix ‖ bytes`, as a bigint: stable across builds and machines (every
/// node must compute the same lock key for a room), unlike `std`'s hashers.
const fn fnv1a(prefix: &[u8], bytes: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < prefix.len() + bytes.len() {
        let b = if i < prefix.len() {
            prefix[i]
        } else {
            bytes[i - prefix.len()]
        };
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    // Bit for bit: the lock key is any 64-bit value.
    hash as i64
}

/// The advisory lock key of `room`.
fn room_lock_key(room: &str) -> i64 {
    fnv1a(b"yrelay room\0", room.as_bytes())
}

/// A `u64` that the store does not compare in SQL (times, sizes, a version's seq), bit for
/// bit as a bigint: values above `i64::MAX` come back unchanged through [`uint`].
fn int(v: u64) -> i64 {
    v as i64
}

/// The inverse of [`int`].
fn uint(v: i64) -> u64 {
    v as u64
}

/// A seq or version id as a bigint. They are compared and ordered in SQL, so they must stay
/// below 2^63 (9.2e18 appends to one room): beyond, an error instead of a wrong order.
fn counter(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!(
            "counter {v} exceeds PostgreSQL's bigint (sequence numbers exhausted)"
        ))
    })
}

/// Milliseconds since the Unix epoch, for the health probe.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `e` means the connection is unusable: closed, an I/O failure (including connect
/// errors and timeouts), or the server ending the session (SQLSTATE class 08, connection
/// exception; 57P01-03, shutdown or not yet accepting connections).
fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// `url` with libpq's `sslmode=verify-full` and `verify-ca`, which the driver does not know,
/// as `require`: with TLS, yrelay always verifies the chain and the host name anyway.
fn with_verified_ssl_modes(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// The driver's error with what caused it: its own `Display` says only "db error" or
/// "error connecting to server"; the server's message (severity, text, SQLSTATE, detail,
/// hint) or the I/O error is in the source.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if is_connection_error(&e) {
            StoreError::Unavailable(describe(&e))
        } else {
            StoreError::Database(describe(&e))
        }
    }
}

/// Tuning of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections kept open at most (default 4). Each blocking call holds one for its
    /// duration; more concurrent calls wait for one.
    pub pool_size: usize,
    /// How long connecting (TCP connect, startup and authentication together) may take
    /// before the call fails with [`StoreError::Unavailable`] (default 5 s). A
    /// `connect_timeout` in the URL wins.
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection when all are busy before failing with
    /// [`StoreError::Unavailable`] (default 30 s).
    pub checkout_timeout: Duration,
    /// PEM certificates of the CA(s) that signed the server's certificate, trusted *instead
    /// of* the webpki roots for TLS (default: none, the webpki roots). Only used when the URL
    /// asks for TLS (`sslmode=require`); given without that, opening fails rather than
    /// silently connecting in the clear.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_secs(30),
            ca_pem: None,
        }
    }
}

/// A [`Store`] in a PostgreSQL database, shared by every node of a cluster.
///
/// # Durability
///
/// Every write is one transaction, committed before the call returns: with PostgreSQL's
/// default `synchronous_commit = on` it is on disk (WAL fsynced) by then, so
/// [`Store::flush`] has nothing to do and returns `Ok` at once. (A database configured
/// with `synchronous_commit = off` or `fsync = off` gives that up; so does a replica set
/// up asynchronously, for a failover.)
///
/// # Threads
///
/// Every method blocks. The synchronous `postgres` client runs each connection on a small
/// tokio runtime of its own, so it must not be used on a tokio worker thread (it panics
/// there: "Cannot start a runtime from within a runtime"): call it from `spawn_blocking` or
/// a plain thread, like every [`Store`].
pub struct PgStore {
    pool: Pool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.size)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// The schema version this build creates and reads.
    pub const SCHEMA_VERSION: u32 = 1;

    /// Opens the store in the database at `url` (`postgres://user:password@host:port/db`,
    /// or PostgreSQL's `key=value` form) with [`PgOptions::default`]: connects, and applies
    /// the schema migrations this build knows and the database lacks.
    ///
    /// TLS: `sslmode=require` (or libpq's `verify-full` / `verify-ca`, which mean the same
    /// here) connects over TLS and verifies the server's certificate chain and host name;
    /// any other `sslmode` (libpq's default `prefer` included) connects without TLS.
    ///
    /// Fails with [`StoreError::Unavailable`] if the database cannot be reached within the
    /// connect timeout, [`StoreError::UnsupportedFormat`] if a newer yrelay migrated the
    /// schema beyond what this build knows, [`StoreError::Database`] otherwise (a bad URL,
    /// refused credentials, missing privileges).
    ///
    /// Blocking, like every method: never call it on a tokio worker thread (see the type's
    /// docs); the client would panic there.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, PgOptions::default())
    }

    /// [`PgStore::open`] with explicit options.
    pub fn open_with(url: &str, options: PgOptions) -> Result<Self> {
        // The parse error does not echo the URL (which may hold a password).
        let mut config: postgres::Config = with_verified_ssl_modes(url).parse().map_err(
            |e: postgres::Error| {
                let hint = if e.to_string().contains("sslrootcert") {
                    " (give the CA file with --database-ca-file / YRELAY_DATABASE_CA_FILE instead)"
                } else {
                    ""
                };
                StoreError::Database(format!("invalid database URL: {e}{hint}"))
            },
        )?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(PgTls::new(options.ca_pem.as_deref())?),
            _ if options.ca_pem.is_some() => {
                return Err(StoreError::Database(
                    "a CA certificate for the database is given, but the database URL does not ask for TLS: add sslmode=require".to_owned(),
                ))
            }
            _ => {
                // `prefer` would try TLS only to fall back to the clear on failure: no
                // protection. Say what happens: no TLS.
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        let connect_timeout = *config
            .get_connect_timeout()
            .unwrap_or(&options.connect_timeout);
        config.connect_timeout(connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("yrelay");
        }
        // Notice a dead server or network on an idle connection within a minute or so,
        // not after the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(30));
        let pool = Pool {
            config,
            tls,
            connect_timeout,
            size: options.pool_size.max(1),
            checkout_timeout: options.checkout_timeout,
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        };
        let mut client = pool.connect_client()?;
        migrate_schema(&mut client)?;
        let conn = Conn::prepare(client)?;
        {
            let mut state = pool.state();
            state.open += 1;
            state.idle.push(conn);
        }
        Ok(Self { pool })
    }

    /// Runs `body` in a write transaction (`READ COMMITTED`) and commits.
    fn write<T>(&self, body: impl FnMut(&mut Transaction<'_>, &Queries) -> Result<T>) -> Result<T> {
        self.run(false, body)
    }

    /// Runs `body` in a `REPEATABLE READ READ ONLY` transaction (one consistent snapshot).
    fn read<T>(&self, body: impl FnMut(&mut Transaction<'_>, &Queries) -> Result<T>) -> Result<T> {
        self.run(true, body)
    }

    fn run<T>(
        &self,
        read_only: bool,
        mut body: impl FnMut(&mut Transaction<'_>, &Queries) -> Result<T>,
    ) -> Result<T> {
        let mut retried = false;
        loop {
            let mut lease = self.pool.get()?;
            let reused = lease.reused;
            // `Err(Ok(e))`: BEGIN failed; `Err(Err(e))` / `Ok(v)`: the transaction's result.
            let outcome: std::result::Result<T, std::result::Result<StoreError, StoreError>> = {
                let Some(Conn { client, queries }) = lease.conn.as_mut() else {
                    return Err(StoreError::Unavailable("no connection".to_owned()));
                };
                let begun = if read_only {
                    client
                        .build_transaction()
                        .isolation_level(IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                } else {
                    client.transaction()
                };
                match begun {
                    Err(e) => Err(Ok(StoreError::from(e))),
                    Ok(mut tx) => match body(&mut tx, queries) {
                        Ok(value) => tx.commit().map(|()| value).map_err(|e| Err(e.into())),
                        // Dropping the transaction rolls it back.
                        Err(e) => Err(Err(e)),
                    },
                }
            };
            let (error, at_begin) = match outcome {
                Ok(value) => return Ok(value),
                Err(Ok(e)) => (e, true),
                Err(Err(e)) => (e, false),
            };
            if matches!(error, StoreError::Unavailable(_)) {
                lease.discard();
                drop(lease);
                self.pool.drop_idle();
                // Nothing but BEGIN was sent on a connection from the pool: safe to try once
                // more on a fresh one (the pooled one was likely from before a restart).
                if at_begin && reused && !retried {
                    retried = true;
                    continue;
                }
            }
            return Err(error);
        }
    }
}

/// Checks the schema version and applies the missing migrations, in one transaction under
/// [`MIGRATION_LOCK`].
fn migrate_schema(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS yrelay_schema_migrations (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM yrelay_schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::UnsupportedFormat {
            found: u32::try_from(current).unwrap_or(u32::MAX),
            supported: PgStore::SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql)?;
        tx.execute(
            "INSERT INTO yrelay_schema_migrations (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    queries: Queries,
}

/// Every statement the store runs, prepared once per connection.
struct Queries {
    meta_get: Statement,
    meta_lock: Statement,
    meta_create: Statement,
    meta_put: Statement,
    rooms_live: Statement,
    rooms_all: Statement,
    snapshot_get: Statement,
    snapshot_put: Statement,
    log_below: Statement,
    log_insert: Statement,
    log_trim: Statement,
    audit_from: Statement,
    audit_insert: Statement,
    version_insert: Statement,
    versions_info: Statement,
    versions_all: Statement,
    version_get: Statement,
    delete_snapshot: Statement,
    delete_log: Statement,
    delete_audit: Statement,
    delete_versions: Statement,
    health: Statement,
    lock_room: Statement,
    try_lock_room: Statement,
}

impl Conn {
    fn prepare(mut client: Client) -> Result<Self> {
        let c = &mut client;
        let queries = Queries {
            meta_get: c.prepare(&format!(
                "SELECT {META_COLUMNS} FROM yrelay_rooms WHERE room = $1"
            ))?,
            meta_lock: c.prepare(&format!(
                "SELECT {META_COLUMNS} FROM yrelay_rooms WHERE room = $1 FOR UPDATE"
            ))?,
            meta_create: c.prepare(&format!(
                "INSERT INTO yrelay_rooms (room, {META_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (room) DO NOTHING"
            ))?,
            meta_put: c.prepare(
                "UPDATE yrelay_rooms SET live = $2, next_seq = $3, last_change_ms = $4,
                     snapshot_seq = $5, snapshot_bytes = $6, tail_entries = $7,
                     tail_bytes = $8, next_version_id = $9
                 WHERE room = $1",
            )?,
            rooms_live: c.prepare(&format!(
                "SELECT room, {META_COLUMNS} FROM yrelay_rooms WHERE live ORDER BY room"
            ))?,
            rooms_all: c.prepare("SELECT room FROM yrelay_rooms ORDER BY room")?,
            snapshot_get: c.prepare("SELECT seq, state FROM yrelay_snapshots WHERE room = $1")?,
            snapshot_put: c.prepare(
                "INSERT INTO yrelay_snapshots (room, seq, state) VALUES ($1, $2, $3)
                 ON CONFLICT (room) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state",
            )?,
            log_below: c.prepare(
                "SELECT seq, payload FROM yrelay_log WHERE room = $1 AND seq < $2 ORDER BY seq",
            )?,
            log_insert: c.prepare(
                "INSERT INTO yrelay_log (room, seq, payload)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bytea[])",
            )?,
            log_trim: c.prepare(
                "WITH gone AS (
                     DELETE FROM yrelay_log WHERE room = $1 AND seq <= $2
                     RETURNING octet_length(payload) AS n
                 )
                 SELECT count(*), coalesce(sum(n), 0)::bigint FROM gone",
            )?,
            audit_from: c.prepare(
                "SELECT seq, author, origin, time_ms, bytes FROM yrelay_audit
                 WHERE room = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            )?,
            audit_insert: c.prepare(
                "INSERT INTO yrelay_audit (room, seq, author, origin, time_ms, bytes)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bytea[], $4::bytea[],
                                          $5::bigint[], $6::bigint[])",
            )?,
            version_insert: c.prepare(
                "INSERT INTO yrelay_versions (room, id, kind, label, created_ms, seq, bytes, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )?,
            versions_info: c.prepare(
                "SELECT id, kind, label, created_ms, seq, bytes FROM yrelay_versions
                 WHERE room = $1 ORDER BY id DESC",
            )?,
            versions_all: c.prepare(
                "SELECT id, kind, label, created_ms, seq, bytes, state FROM yrelay_versions
                 WHERE room = $1 ORDER BY id",
            )?,
            version_get: c.prepare(
                "SELECT id, kind, label, created_ms, seq, bytes, state FROM yrelay_versions
                 WHERE room = $1 AND id = $2",
            )?,
            delete_snapshot: c.prepare("DELETE FROM yrelay_snapshots WHERE room = $1")?,
            delete_log: c.prepare("DELETE FROM yrelay_log WHERE room = $1")?,
            delete_audit: c.prepare("DELETE FROM yrelay_audit WHERE room = $1")?,
            delete_versions: c.prepare("DELETE FROM yrelay_versions WHERE room = $1")?,
            health: c.prepare(
                "INSERT INTO yrelay_health (id, checked_ms) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET checked_ms = EXCLUDED.checked_ms",
            )?,
            lock_room: c.prepare("SELECT pg_advisory_xact_lock($1)")?,
            try_lock_room: c.prepare("SELECT pg_try_advisory_xact_lock($1)")?,
        };
        Ok(Self { client, queries })
    }
}

/// The connection pool: idle connections and how many exist.
struct Pool {
    config: postgres::Config,
    /// The TLS connector when the URL asks for TLS.
    tls: Option<PgTls>,
    /// Bound of a whole connect (see [`Pool::connect_client`]).
    connect_timeout: Duration,
    size: usize,
    checkout_timeout: Duration,
    /// A `std::sync::Mutex`: held only to push or pop a connection or count (never while
    /// connecting or running a query), on blocking threads.
    state: Mutex<PoolState>,
    /// Signalled when a connection is returned or closed.
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    /// Connections in existence: idle ones plus those lent out (and ones being opened).
    open: usize,
}

/// A connection lent out by [`Pool::get`]; returned to the pool on drop unless discarded.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// Whether it was used before (so it may be stale after a server restart).
    reused: bool,
}

impl Lease<'_> {
    /// Closes the connection instead of returning it.
    fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take().filter(|c| !c.client.is_closed());
        let mut state = self.pool.state();
        match conn {
            Some(conn) => state.idle.push(conn),
            None => state.open = state.open.saturating_sub(1),
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        // The state is a list and a count, each updated in one step: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a connection, bounding the whole handshake (TCP connect, startup,
    /// authentication) by the connect timeout. The driver's `connect_timeout` covers only
    /// the TCP connect: a server that accepts but never answers (stuck, or not PostgreSQL)
    /// would block the caller for ever. So the connect runs on a short-lived thread, and a
    /// caller that waited long enough gives up; the thread ends when the connect does (a
    /// late connection is closed at once).
    fn connect_client(&self) -> Result<Client> {
        let unavailable =
            |msg: String| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {msg}"));
        let config = self.config.clone();
        let tls = self.tls.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("yrelay-pg-connect".to_owned())
            .spawn(move || {
                // The caller may have given up: then the connection is dropped (closed).
                let _ = sender.send(match tls {
                    Some(tls) => config.connect(tls),
                    None => config.connect(NoTls),
                });
            })
            .map_err(|e| unavailable(format!("cannot start a thread to connect: {e}")))?;
        match receiver.recv_timeout(self.connect_timeout) {
            Ok(Ok(client)) => Ok(client),
            // Connecting can fail for reasons that are not the network (bad password,
            // unknown database): those are reported as such.
            Ok(Err(e)) => match StoreError::from(e) {
                StoreError::Unavailable(msg) => Err(unavailable(msg)),
                other => Err(other),
            },
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.connect_timeout
            ))),
        }
    }

    /// An idle connection, or a new one while fewer than `size` exist, else waits for one.
    fn get(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + self.checkout_timeout;
        let mut state = self.state();
        loop {
            if let Some(conn) = state.idle.pop() {
                if conn.client.is_closed() {
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                    reused: true,
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                // From here the lease accounts for the slot: dropped without a connection
                // it gives the slot back.
                let mut lease = Lease {
                    pool: self,
                    conn: None,
                    reused: false,
                };
                lease.conn = Some(Conn::prepare(self.connect_client()?)?);
                return Ok(lease);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "all {} database connections stayed busy for {:?}",
                    self.size, self.checkout_timeout
                )));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Closes every idle connection (after one failed: they are likely stale too).
    fn drop_idle(&self) {
        let idle = {
            let mut state = self.state();
            let idle = std::mem::take(&mut state.idle);
            state.open = state.open.saturating_sub(idle.len());
            idle
        };
        // Closed outside the lock (closing talks to the server).
        drop(idle);
        self.freed.notify_all();
    }
}

/// A room's counters from the row's columns starting at `first` ([`META_COLUMNS`] order).
fn meta_of(row: &Row, first: usize) -> Result<RoomMeta> {
    let n = |i: usize| -> Result<u64> { Ok(uint(row.try_get::<_, i64>(first + i)?)) };
    Ok(RoomMeta {
        live: row.try_get(first)?,
        next_seq: n(1)?,
        last_change_ms: n(2)?,
        snapshot_seq: n(3)?,
        snapshot_bytes: n(4)?,
        tail_entries: n(5)?,
        tail_bytes: n(6)?,
        next_version_id: n(7)?,
    })
}

/// A UTF-8 string stored as bytea.
fn text_of(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
}

fn kind_name(kind: VersionKind) -> &'static str {
    match kind {
        VersionKind::Auto => "auto",
        VersionKind::Named => "named",
    }
}

/// A version's description from a row of `id, kind, label, created_ms, seq, bytes, ...`.
fn version_of(row: &Row) -> Result<VersionInfo> {
    let kind = match row.try_get::<_, &str>(1)? {
        "auto" => VersionKind::Auto,
        "named" => VersionKind::Named,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown version kind {other:?}"
            )))
        }
    };
    let label = row
        .try_get::<_, Option<Vec<u8>>>(2)?
        .map(|l| text_of(l, "a version label"))
        .transpose()?;
    Ok(VersionInfo {
        id: uint(row.try_get(0)?),
        kind,
        label,
        created_ms: uint(row.try_get(3)?),
        seq: uint(row.try_get(4)?),
        bytes: uint(row.try_get(5)?),
    })
}

fn audit_of(row: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: uint(row.try_get(0)?),
        author: text_of(row.try_get(1)?, "an audit author")?,
        origin: text_of(row.try_get(2)?, "an audit origin")?,
        time_ms: uint(row.try_get(3)?),
        bytes: uint(row.try_get(4)?),
    })
}

/// The operations of one transaction on one room.
struct RoomTx<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    q: &'t Queries,
    room: &'t str,
}

impl RoomTx<'_, '_> {
    fn key(&self) -> &[u8] {
        self.room.as_bytes()
    }

    /// The room's counters (`None`: never written), optionally locking its row.
    fn meta(&mut self, lock: bool) -> Result<Option<RoomMeta>> {
        let statement = if lock {
            &self.q.meta_lock
        } else {
            &self.q.meta_get
        };
        let room = self.room.as_bytes();
        self.tx
            .query_opt(statement, &[&room])?
            .map(|row| meta_of(&row, 0))
            .transpose()
    }

    /// Locks the room's row, creating it (with the default counters) if new.
    fn lock_meta(&mut self) -> Result<RoomMeta> {
        if let Some(meta) = self.meta(true)? {
            return Ok(meta);
        }
        let d = RoomMeta::default();
        // Two nodes creating one room at once: the second waits for the first's commit
        // on the primary key, inserts nothing, and locks the committed row below.
        let params = meta_params(&d)?;
        let room = self.room.as_bytes();
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&room];
        args.extend(params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        self.tx.execute(&self.q.meta_create, &args)?;
        self.meta(true)?
            .ok_or_else(|| StoreError::Corrupt(format!("room {:?}: its row vanished", self.room)))
    }

    fn put_meta(&mut self, meta: &RoomMeta) -> Result<()> {
        let params = meta_params(meta)?;
        let room = self.room.as_bytes();
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&room];
        args.extend(params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        self.tx.execute(&self.q.meta_put, &args)?;
        Ok(())
    }

    /// Blocks until this transaction holds the room's advisory lock.
    fn lock_room(&mut self) -> Result<()> {
        self.tx
            .execute(&self.q.lock_room, &[&room_lock_key(self.room)])?;
        Ok(())
    }

    /// Takes the room's advisory lock if nobody holds it.
    fn try_lock_room(&mut self) -> Result<bool> {
        Ok(self
            .tx
            .query_one(&self.q.try_lock_room, &[&room_lock_key(self.room)])?
            .try_get(0)?)
    }

    /// Snapshot and the log entries below `next_seq` of `meta`, checked against `meta` like
    /// the sled store checks its keys.
    fn load(&mut self, meta: &RoomMeta) -> Result<LoadedRoom> {
        let room = self.room.as_bytes();
        let snapshot = match self.tx.query_opt(&self.q.snapshot_get, &[&room])? {
            Some(row) => {
                let seq = uint(row.try_get(0)?);
                if seq != meta.snapshot_seq {
                    return Err(StoreError::Corrupt(format!(
                        "room {:?}: snapshot at seq {seq} but the room row says {}",
                        self.room, meta.snapshot_seq
                    )));
                }
                Some(row.try_get::<_, Vec<u8>>(1)?)
            }
            None if meta.snapshot_seq != 0 => {
                return Err(StoreError::Corrupt(format!(
                    "room {:?}: snapshot at seq {} is missing",
                    self.room, meta.snapshot_seq
                )));
            }
            None => None,
        };
        // Entries at or after next_seq are appends committed after `meta` was read (in a
        // READ COMMITTED transaction): not part of this load.
        let below = counter(meta.next_seq)?;
        let tail = self
            .tx
            .query(&self.q.log_below, &[&room, &below])?
            .iter()
            .map(|row| Ok((uint(row.try_get(0)?), row.try_get::<_, Vec<u8>>(1)?)))
            .collect::<Result<Vec<(Seq, Vec<u8>)>>>()?;
        if let Some((seq, _)) = tail.iter().find(|(seq, _)| *seq <= meta.snapshot_seq) {
            return Err(StoreError::Corrupt(format!(
                "room {:?}: log entry {seq} at or below the snapshot's seq {}",
                self.room, meta.snapshot_seq
            )));
        }
        if len64_count(tail.len()) != meta.tail_entries {
            return Err(StoreError::Corrupt(format!(
                "room {:?}: {} log entries but the room row counts {}",
                self.room,
                tail.len(),
                meta.tail_entries
            )));
        }
        Ok(LoadedRoom {
            snapshot,
            snapshot_seq: meta.snapshot_seq,
            tail,
            next_seq: meta.next_seq,
        })
    }

    /// Removes the log entries up to `upto`; returns how many and their bytes.
    fn trim(&mut self, upto: Seq) -> Result<(u64, u64)> {
        let room = self.room.as_bytes();
        // Every seq ever given out is below 2^63: a larger `upto` covers them all.
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        let row = self.tx.query_one(&self.q.log_trim, &[&room, &upto])?;
        Ok((uint(row.try_get(0)?), uint(row.try_get(1)?)))
    }

    fn put_snapshot(&mut self, seq: Seq, state: &[u8]) -> Result<()> {
        let room = self.room.as_bytes();
        self.tx
            .execute(&self.q.snapshot_put, &[&room, &counter(seq)?, &state])?;
        Ok(())
    }

    /// Inserts log entries and their audit records (in chunks of [`IMPORT_CHUNK`]).
    fn insert_log(&mut self, entries: &[(Seq, &[u8])]) -> Result<()> {
        let room = self.room.as_bytes();
        for chunk in entries.chunks(IMPORT_CHUNK) {
            let seqs = chunk
                .iter()
                .map(|(seq, _)| counter(*seq))
                .collect::<Result<Vec<i64>>>()?;
            let payloads: Vec<&[u8]> = chunk.iter().map(|(_, u)| *u).collect();
            self.tx
                .execute(&self.q.log_insert, &[&room, &seqs, &payloads])?;
        }
        Ok(())
    }

    fn insert_audit(&mut self, records: &[AuditRecord]) -> Result<()> {
        let room = self.room.as_bytes();
        for chunk in records.chunks(IMPORT_CHUNK) {
            let seqs = chunk
                .iter()
                .map(|r| counter(r.seq))
                .collect::<Result<Vec<i64>>>()?;
            let authors: Vec<&[u8]> = chunk.iter().map(|r| r.author.as_bytes()).collect();
            let origins: Vec<&[u8]> = chunk.iter().map(|r| r.origin.as_bytes()).collect();
            let times: Vec<i64> = chunk.iter().map(|r| int(r.time_ms)).collect();
            let bytes: Vec<i64> = chunk.iter().map(|r| int(r.bytes)).collect();
            self.tx.execute(
                &self.q.audit_insert,
                &[&room, &seqs, &authors, &origins, &times, &bytes],
            )?;
        }
        Ok(())
    }

    fn insert_version(&mut self, info: &VersionInfo, state: &[u8]) -> Result<()> {
        let room = self.room.as_bytes();
        let label = info.label.as_deref().map(str::as_bytes);
        self.tx.execute(
            &self.q.version_insert,
            &[
                &room,
                &counter(info.id)?,
                &kind_name(info.kind),
                &label,
                &int(info.created_ms),
                &int(info.seq),
                &int(info.bytes),
                &state,
            ],
        )?;
        Ok(())
    }

    /// Removes every data row of the room (not its counters).
    fn delete_rows(&mut self) -> Result<()> {
        let room = self.room.as_bytes();
        for statement in [
            &self.q.delete_snapshot,
            &self.q.delete_log,
            &self.q.delete_audit,
            &self.q.delete_versions,
        ] {
            self.tx.execute(statement, &[&room])?;
        }
        Ok(())
    }

    fn audit(&mut self, first: Seq, limit: usize) -> Result<Vec<AuditRecord>> {
        // No seq is above i64::MAX: from there on there is nothing.
        let Ok(first) = i64::try_from(first) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let room = self.room.as_bytes();
        self.tx
            .query(&self.q.audit_from, &[&room, &first, &limit])?
            .iter()
            .map(audit_of)
            .collect()
    }
}

/// A count as stored in counters.
fn len64_count(n: usize) -> u64 {
    crate::meta::count64(n)
}

/// The parameters `$2..$9` of `meta_create` / `meta_put`.
fn meta_params(meta: &RoomMeta) -> Result<Vec<Box<dyn ToSql + Sync>>> {
    Ok(vec![
        Box::new(meta.live),
        Box::new(counter(meta.next_seq)?),
        Box::new(int(meta.last_change_ms)),
        Box::new(counter(meta.snapshot_seq)?),
        Box::new(int(meta.snapshot_bytes)),
        Box::new(int(meta.tail_entries)),
        Box::new(int(meta.tail_bytes)),
        Box::new(counter(meta.next_version_id)?),
    ])
}

impl Store for PgStore {
    fn append(&self, room: &str, entries: &[AppendEntry]) -> Result<Vec<Seq>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            // The row lock: concurrent appends of other nodes wait here, then see the
            // counters this one committed.
            let mut meta = r.lock_meta()?;
            let records = entries
                .iter()
                .map(|e| meta.push_entry(e))
                .collect::<Result<Vec<AuditRecord>>>()?;
            let log: Vec<(Seq, &[u8])> = records
                .iter()
                .zip(entries)
                .map(|(rec, e)| (rec.seq, e.update.as_slice()))
                .collect();
            r.insert_log(&log)?;
            r.insert_audit(&records)?;
            r.put_meta(&meta)?;
            Ok(records.iter().map(|rec| rec.seq).collect())
        })
    }

    /// Nothing to do: every write was a committed transaction when it returned.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn load(&self, room: &str) -> Result<LoadedRoom> {
        self.read(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            let meta = r.meta(false)?.unwrap_or_default();
            r.load(&meta)
        })
    }

    fn compact(&self, room: &str, state: &[u8], upto: Seq) -> Result<()> {
        self.write(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            r.lock_room()?;
            let mut meta = r.lock_meta()?;
            // A refusal rolls back, so the row created above for a new room goes too.
            meta.check_compact(upto)?;
            let (entries, bytes) = r.trim(upto)?;
            meta.compacted(upto, len64(state), entries, bytes)?;
            r.put_snapshot(upto, state)?;
            r.put_meta(&meta)
        })
    }

    /// One transaction holding the room's advisory lock (tried: `Ok(None)` at once if
    /// another node holds it). The load and `merge` run without the room's row lock, so
    /// appends go on meanwhile; under the advisory lock nothing else can remove or replace
    /// what was loaded, which is checked again before the snapshot is replaced.
    fn compact_with(
        &self,
        room: &str,
        merge: &mut dyn FnMut(&LoadedRoom) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<Seq>> {
        self.write(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            if !r.try_lock_room()? {
                return Ok(None);
            }
            let Some(meta) = r.meta(false)? else {
                return Ok(None);
            };
            let loaded = r.load(&meta)?;
            let Some(&(upto, _)) = loaded.tail.last() else {
                return Ok(None);
            };
            let state = merge(&loaded).map_err(StoreError::Merge)?;
            let mut meta = r.lock_meta()?;
            if meta.snapshot_seq != loaded.snapshot_seq || !meta.live {
                return Err(StoreError::Corrupt(format!(
                    "room {room:?} changed under its compaction lock (snapshot seq {} → {})",
                    loaded.snapshot_seq, meta.snapshot_seq
                )));
            }
            meta.check_compact(upto)?;
            let (entries, bytes) = r.trim(upto)?;
            if entries != len64_count(loaded.tail.len()) {
                return Err(StoreError::Corrupt(format!(
                    "room {room:?}: compaction loaded {} log entries up to {upto} but removed {entries}",
                    loaded.tail.len()
                )));
            }
            meta.compacted(upto, len64(&state), entries, bytes)?;
            r.put_snapshot(upto, &state)?;
            r.put_meta(&meta)?;
            Ok(Some(upto))
        })
    }

    fn list_rooms(&self) -> Result<Vec<RoomInfo>> {
        self.read(|tx, q| {
            tx.query(&q.rooms_live, &[])?
                .iter()
                .map(|row| {
                    let name = text_of(row.try_get(0)?, "a room name")?;
                    Ok(meta_of(row, 1)?.info(&name))
                })
                .collect()
        })
    }

    fn delete_room(&self, room: &str) -> Result<()> {
        self.write(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            // Waits for a compaction of the room to finish.
            r.lock_room()?;
            let Some(mut meta) = r.meta(true)? else {
                return Ok(());
            };
            r.delete_rows()?;
            meta.tombstone();
            r.put_meta(&meta)
        })
    }

    fn save_version(
        &self,
        room: &str,
        kind: VersionKind,
        label: Option<&str>,
        state: &[u8],
        seq: Seq,
        created_ms: u64,
    ) -> Result<VersionInfo> {
        self.write(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            let mut meta = r.lock_meta()?;
            let info = VersionInfo {
                id: meta.take_version_id()?,
                kind,
                label: label.map(str::to_owned),
                created_ms,
                seq,
                bytes: len64(state),
            };
            r.insert_version(&info, state)?;
            r.put_meta(&meta)?;
            Ok(info)
        })
    }

    fn list_versions(&self, room: &str) -> Result<Vec<VersionInfo>> {
        self.read(|tx, q| {
            let room = room.as_bytes();
            tx.query(&q.versions_info, &[&room])?
                .iter()
                .map(version_of)
                .collect()
        })
    }

    fn get_version(&self, room: &str, id: u64) -> Result<Option<(VersionInfo, Vec<u8>)>> {
        // No version id is above i64::MAX.
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.read(|tx, q| {
            let room = room.as_bytes();
            tx.query_opt(&q.version_get, &[&room, &id])?
                .map(|row| Ok((version_of(&row)?, row.try_get::<_, Vec<u8>>(6)?)))
                .transpose()
        })
    }

    fn audit(&self, room: &str, after: Option<Seq>, limit: usize) -> Result<Vec<AuditRecord>> {
        let Some(first) = after.map_or(Some(0), |a| a.checked_add(1)) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|tx, q| RoomTx { tx, q, room }.audit(first, limit))
    }

    /// Upserts the one health row in a committed transaction: proves the database is
    /// reachable and accepts writes.
    fn check(&self) -> Result<()> {
        let now = int(now_ms());
        self.write(|tx, q| {
            tx.execute(&q.health, &[&now])?;
            Ok(())
        })
    }

    fn room_names(&self) -> Result<Vec<String>> {
        self.read(|tx, q| {
            tx.query(&q.rooms_all, &[])?
                .iter()
                .map(|row| text_of(row.try_get(0)?, "a room name"))
                .collect()
        })
    }

    fn export_room(&self, room: &str) -> Result<Option<RoomDump>> {
        self.read(|tx, q| {
            let mut r = RoomTx { tx, q, room };
            let Some(meta) = r.meta(false)? else {
                return Ok(None);
            };
            let loaded = r.load(&meta)?;
            let audit = r.audit(0, usize::MAX)?;
            let key = r.key().to_vec();
            let versions =
                r.tx.query(&q.versions_all, &[&key])?
                    .iter()
                    .map(|row| Ok((version_of(row)?, row.try_get::<_, Vec<u8>>(6)?)))
                    .collect::<Result<Vec<_>>>()?;
            Ok(Some(RoomDump {
                room: room.to_owned(),
                live: meta.live,
                snapshot: loaded.snapshot,
                snapshot_seq: loaded.snapshot_seq,
                tail: loaded.tail,
                next_seq: meta.next_seq,
                audit,
                versions,
                next_version_id: meta.next_version_id,
                last_change_ms: meta.last_change_ms,
            }))
        })
    }

    fn import_room(&self, dump: &RoomDump) -> Result<()> {
        let meta = RoomMeta::of_dump(dump)?;
        self.write(|tx, q| {
            let mut r = RoomTx {
                tx,
                q,
                room: &dump.room,
            };
            r.lock_room()?;
            let existing = r.lock_meta()?;
            existing.check_import(&dump.room, &meta)?;
            // A tombstone holds no rows; removing is only a safeguard.
            r.delete_rows()?;
            if let Some(state) = &dump.snapshot {
                r.put_snapshot(dump.snapshot_seq, state)?;
            }
            let log: Vec<(Seq, &[u8])> = dump
                .tail
                .iter()
                .map(|(seq, u)| (*seq, u.as_slice()))
                .collect();
            r.insert_log(&log)?;
            r.insert_audit(&dump.audit)?;
            for (info, state) in &dump.versions {
                r.insert_version(info, state)?;
            }
            r.put_meta(&meta)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use yrelay_testkit::PrivatePostgres;

    use super::*;

    /// One server for the whole unit-test binary, a database per test. (A `static` is never
    /// dropped: the testkit's reaper stops the server and removes its directory once this
    /// process has exited.)
    static SERVER: OnceLock<Option<PrivatePostgres>> = OnceLock::new();
    static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

    /// A store on a fresh, empty database, or `None` after a SKIPPED line (PostgreSQL is
    /// not installed; under `YRELAY_REQUIRE_SERVICES=1` that panics instead).
    pub(crate) fn fresh_store(test: &str) -> Option<PgStore> {
        let server = SERVER.get_or_init(|| PrivatePostgres::start("yrelay-store unit tests"));
        let Some(server) = server else {
            yrelay_testkit::skip_or_fail(
                test,
                "PostgreSQL is not installed",
                "apt-get install postgresql",
            );
            return None;
        };
        let n = NEXT_DATABASE.fetch_add(1, Ordering::SeqCst);
        let url = server.create_database(&format!("unit_{n}"));
        Some(PgStore::open(&url).expect("opens"))
    }

    crate::conformance::all_cases!(skippable fresh_store);

    #[test]
    fn lock_keys_are_stable_fnv1a() {
        // FNV-1a 64 test vectors ("" and "a"), so every build and node agrees on keys.
        assert_eq!(fnv1a(b"", b"") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", b"") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"", b"a"), fnv1a(b"a", b""));
        assert_ne!(room_lock_key("a"), room_lock_key("b"));
        assert_ne!(room_lock_key(""), MIGRATION_LOCK);
    }

    #[test]
    fn numbers_round_trip_through_bigint() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(uint(int(v)), v);
        }
        assert_eq!(counter(7).ok(), Some(7));
        assert!(matches!(counter(u64::MAX), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn debug_output_hides_the_url() {
        let Some(store) = fresh_store("debug_output_hides_the_url") else {
            return;
        };
        let shown = format!("{store:?}");
        assert!(!shown.contains("127.0.0.1"), "{shown}");
        assert!(shown.contains("pool_size: 4"), "{shown}");
    }

    /// A write that fails mid-way leaves nothing in the database: the room appears whole
    /// or not at all (here: an import whose counters cannot be stored, found after its log
    /// and version rows were written).
    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let Some(store) = fresh_store("a_failed_write_leaves_nothing_behind") else {
            return;
        };
        let dump = RoomDump {
            room: "r".to_owned(),
            live: true,
            snapshot: None,
            snapshot_seq: 0,
            tail: vec![(1, b"x".to_vec())],
            next_seq: 2,
            audit: vec![],
            // Passes the dump checks, but bigint cannot hold it.
            versions: vec![(
                VersionInfo {
                    id: 1,
                    kind: VersionKind::Auto,
                    label: None,
                    created_ms: 0,
                    seq: 0,
                    bytes: 0,
                },
                vec![],
            )],
            next_version_id: u64::MAX,
            last_change_ms: 0,
        };
        assert!(matches!(
            store.import_room(&dump),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(store.room_names().expect("names"), Vec::<String>::new());
        assert_eq!(
            store.load("r").expect("loads"),
            LoadedRoom {
                next_seq: 1,
                ..LoadedRoom::default()
            }
        );
    }
}
