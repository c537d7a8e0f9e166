//! Server configuration: one struct with documented defaults.
//!
//! Precedence, lowest first: built-in defaults, the TOML file given with `--config`, `YRELAY_*`
//! environment variables, command-line flags. Every limit and timeout the server applies lives
//! here; handlers read them from [`Config`] rather than carrying numbers of their own.
//!
//! A complete file with every default is `deploy/yrelay.toml` (also shown in
//! `docs/configuration.md`; a test keeps the three in agreement).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the server needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:1234`, the port y-websocket users expect.
    pub listen: SocketAddr,
    /// Directory for the server's data. Created at start if missing. Default `./yrelay-data`.
    pub data_dir: PathBuf,
    /// A second, plain-HTTP address serving only `/metrics`, `/healthz` and `/readyz`, so
    /// metrics need not be public. When set, the main address no longer serves `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain; with `tls_key`, the server speaks `wss://` (rustls).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Size and queue limits.
    pub limits: Limits,
    /// Timers.
    pub timeouts: Timeouts,
    /// Durability, compaction and versions.
    pub persistence: Persistence,
    /// Tokens, roles and the admin key.
    pub auth: crate::auth::AuthSettings,
    /// Cluster mode: fan-out between nodes over Redis.
    pub cluster: Cluster,
    /// The web editor demo served at `/`.
    pub demo: Demo,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1234)),
            data_dir: PathBuf::from("yrelay-data"),
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            persistence: Persistence::default(),
            auth: crate::auth::AuthSettings::default(),
            cluster: Cluster::default(),
            demo: Demo::default(),
        }
    }
}

/// The collaborative code editor of `examples/web-editor`, built into the binary and served
/// at `/` (assets under `/_demo/`). Plain GETs only: WebSocket upgrades on any path, `/` and
/// `/_demo/...` included, still reach rooms, so the demo takes no room name away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Demo {
    /// Serve the demo. Default true (the zero-config development default); the production
    /// configs in `deploy/` set it to false.
    pub enabled: bool,
}

impl Default for Demo {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Cluster mode: several nodes serve the same rooms, fan updates out to each other over Redis
/// pub/sub and keep documents in a shared PostgreSQL store (`persistence.database_url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://host:port/` (or `rediss://` for TLS) of the Redis that carries updates between
    /// nodes; setting it turns cluster mode on (and requires `persistence.database_url`).
    /// Default: none (single node).
    pub redis_url: Option<String>,
    /// PEM file with the CA certificate(s) that signed Redis's certificate, trusted instead
    /// of the public (webpki) roots; only with a `rediss://` URL. Default: none.
    pub redis_ca_file: Option<PathBuf>,
    /// This node's name in the cluster (in every message it publishes, in logs and audit
    /// origins). Default: none, meaning the host name plus a random suffix, chosen at start.
    pub node_id: Option<String>,
    /// How often every active room compares state vectors with its peers, to repair anything
    /// Redis pub/sub lost (it delivers at most once); 0 turns the periodic check off (rooms
    /// still resync on activation and after every Redis reconnect). Default 30 000.
    pub resync_interval_ms: u64,
    /// Prefix of the per-room Redis channels (`<prefix><room>`), so several deployments can
    /// share one Redis. Default `yrelay:room:`.
    pub channel_prefix: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_ca_file: None,
            node_id: None,
            resync_interval_ms: 30_000,
            channel_prefix: "yrelay:room:".to_owned(),
        }
    }
}

impl Cluster {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }
}

/// Size and queue limits. Every refusal they cause is reported to the client (close code or
/// HTTP status) and counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes. Larger ones close the connection with
    /// 1009. Default 32 MiB (a 5 MB paste is an ordinary update).
    pub max_message_bytes: usize,
    /// Longest room name, in bytes after percent-decoding. Default 256.
    pub max_room_name_bytes: usize,
    /// Frames that may wait in one connection's outbound queue. A connection whose queue is
    /// full is closed with 1013 and resyncs when it reconnects. Default 16384: in `fsync` mode
    /// everything that arrived during one flush is released at once, so bursts are normal;
    /// memory is bounded by `outbound_queue_bytes` (queue slots are allocated lazily).
    pub outbound_queue_frames: usize,
    /// Bytes that may wait in one connection's outbound queue (same consequence). Default 64 MiB.
    pub outbound_queue_bytes: usize,
    /// Messages that may wait for a room task; readers wait (TCP backpressure) when it is
    /// full. Default 256.
    pub room_inbox: usize,
    /// Bytes of messages that may wait for a room task (same backpressure). Default 64 MiB;
    /// at least `max_message_bytes`, at most 4 GiB.
    pub room_inbox_bytes: usize,
    /// Deepest nesting accepted inside an update's JSON-like content. Default 64.
    pub max_nesting_depth: usize,
    /// Awareness client IDs one connection may speak for (the official client uses one per
    /// document). Passing it closes the connection with 1008. Default 16.
    pub max_awareness_clients_per_conn: usize,
    /// Largest HTTP request body (REST `POST .../update` and JSON bodies); larger bodies get
    /// HTTP 413. Default 32 MiB.
    pub max_http_body_bytes: usize,
    /// Largest stored size of one document (snapshot plus log since), in bytes. An update
    /// that would pass it is not applied: the sender gets an auth `permission denied` message
    /// (WebSocket) or HTTP 413 (REST). Default 256 MiB.
    pub max_document_bytes: usize,
    /// Connections one room may have at once; more get HTTP 429 at the upgrade. Default 5000.
    pub max_connections_per_room: usize,
    /// Connections one client IP address may have open at once; more get HTTP 429. Behind a
    /// reverse proxy every client has the proxy's address: raise this or set 0 (no limit).
    /// Default 1000.
    pub max_connections_per_ip: usize,
    /// Messages per second one connection may send, on average (token bucket); past it the
    /// server stops reading from that connection until the bucket refills, so a flood slows
    /// only its sender. 0: no limit. Default 200.
    pub messages_per_second: u32,
    /// Messages a connection may send in a burst above `messages_per_second`. Default 2000.
    pub message_burst: u32,
    /// Messages of 64 KiB or more decoded at once, server-wide; a connection waits up to
    /// `timeouts.write_ms` for a turn, then is closed with 1013. Default 16.
    pub max_concurrent_decodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 << 20,
            max_room_name_bytes: 256,
            outbound_queue_frames: 16384,
            outbound_queue_bytes: 64 << 20,
            room_inbox: 256,
            room_inbox_bytes: 64 << 20,
            max_nesting_depth: 64,
            max_awareness_clients_per_conn: 16,
            max_http_body_bytes: 32 << 20,
            max_document_bytes: 256 << 20,
            max_connections_per_room: 5000,
            max_connections_per_ip: 1000,
            messages_per_second: 200,
            message_burst: 2000,
            max_concurrent_decodes: 16,
        }
    }
}

/// When an accepted update becomes durable relative to when others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Group commit: updates are written and flushed (fsync) **before** anyone is sent them;
    /// whatever arrives during one flush goes into the next. An update any client has seen
    /// survives a crash. The default.
    Fsync,
    /// Broadcast first, flush within `flush_interval_ms`: lower latency, and a crash loses at
    /// most that interval of edits (which the editing clients still hold and resend when they
    /// reconnect).
    Batched,
}

/// Durability, compaction and versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Persistence {
    /// `fsync` (default) or `batched`.
    pub durability: Durability,
    /// `batched` mode: longest time between an update and its flush. Default 100.
    pub flush_interval_ms: u64,
    /// Compact a room's log once it holds this many updates since the snapshot. Default 1000.
    pub compact_after_updates: u64,
    /// ... or this many bytes. Default 8 MiB.
    pub compact_after_bytes: u64,
    /// Take an automatic version of a changed room this often; 0 turns them off. Default
    /// 600 000 (10 minutes).
    pub version_interval_ms: u64,
    /// `postgres://user:password@host:port/database`: keep documents in this PostgreSQL
    /// database instead of sled in `data_dir` (the schema is created or migrated at start).
    /// Required by cluster mode. Default: none (sled). `?sslmode=require` connects over TLS
    /// and verifies the server's certificate and host name.
    pub database_url: Option<String>,
    /// PEM file with the CA certificate(s) that signed PostgreSQL's certificate, trusted
    /// instead of the public (webpki) roots; needs `sslmode=require` in `database_url`.
    /// Default: none.
    pub database_ca_file: Option<PathBuf>,
    /// Most bytes of accepted updates a room keeps in memory while the store cannot write
    /// them (they are retried every second). Once a room holds this much, its new edits are
    /// refused — WebSocket clients are closed with 1013 and keep their edits to resend, REST
    /// writes get 503 — until the store recovers. Default 16 MiB.
    pub max_pending_bytes: u64,
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            flush_interval_ms: 100,
            compact_after_updates: 1000,
            compact_after_bytes: 8 << 20,
            version_interval_ms: 600_000,
            database_url: None,
            database_ca_file: None,
            max_pending_bytes: 16 << 20,
        }
    }
}

/// Timers, in milliseconds (TOML keys end in `_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// How often the server sends a WebSocket ping. Default 30 000.
    pub ping_interval_ms: u64,
    /// A connection from which nothing (not even a pong) arrived for `ping_interval_ms +
    /// pong_timeout_ms` is closed with 4000. Default 30 000.
    pub pong_timeout_ms: u64,
    /// A connection that was sent nothing for this long gets an empty awareness message, so
    /// the official client's 30-second "no message received" timer never fires while the
    /// server is alive. Must stay under 30 000. Default 15 000.
    pub keepalive_interval_ms: u64,
    /// A room with no connections is flushed and dropped from memory after this long; 0
    /// keeps rooms for as long as the process runs. Default 60 000.
    pub room_idle_ms: u64,
    /// Presence not renewed for this long is removed and the removal broadcast, as y-protocols
    /// does (official clients renew every 15 s). Default 30 000.
    pub awareness_timeout_ms: u64,
    /// Longest a single write to a connection may take; a peer that stops reading is closed
    /// after it. Also bounds the closing handshake. Default 10 000.
    pub write_ms: u64,
    /// Time allowed for a client to send its HTTP request headers. Default 10 000.
    pub http_header_ms: u64,
    /// How long shutdown waits for connections to close and rooms to finish. Default 10 000.
    pub shutdown_ms: u64,
    /// On shutdown, how long the server first keeps everything running while `/readyz`
    /// answers 503 and new WebSocket upgrades are refused, so a load balancer stops sending
    /// new clients before connections are closed. Default 0 (Kubernetes: a few seconds).
    pub shutdown_drain_ms: u64,
    /// Time allowed for a TLS handshake. Default 10 000.
    pub tls_handshake_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ping_interval_ms: 30_000,
            pong_timeout_ms: 30_000,
            keepalive_interval_ms: 15_000,
            room_idle_ms: 60_000,
            awareness_timeout_ms: 30_000,
            write_ms: 10_000,
            http_header_ms: 10_000,
            shutdown_ms: 10_000,
            shutdown_drain_ms: 0,
            tls_handshake_ms: 10_000,
        }
    }
}

impl Timeouts {
    /// [`Timeouts::ping_interval_ms`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    /// [`Timeouts::pong_timeout_ms`] as a duration.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(self.pong_timeout_ms)
    }
    /// [`Timeouts::keepalive_interval_ms`] as a duration.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }
    /// [`Timeouts::room_idle_ms`] as a duration.
    pub fn room_idle(&self) -> Duration {
        Duration::from_millis(self.room_idle_ms)
    }
    /// [`Timeouts::write_ms`] as a duration.
    pub fn write(&self) -> Duration {
        Duration::from_millis(self.write_ms)
    }
    /// [`Timeouts::http_header_ms`] as a duration.
    pub fn http_header(&self) -> Duration {
        Duration::from_millis(self.http_header_ms)
    }
    /// [`Timeouts::shutdown_ms`] as a duration.
    pub fn shutdown(&self) -> Duration {
        Duration::from_millis(self.shutdown_ms)
    }
    /// [`Timeouts::shutdown_drain_ms`] as a duration.
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_millis(self.shutdown_drain_ms)
    }
    /// [`Timeouts::tls_handshake_ms`] as a duration.
    pub fn tls_handshake(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_ms)
    }
}

/// The longest timeout accepted (30 days), so no timer arithmetic can overflow.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys it omits keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be given together");
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return bad("limits.max_message_bytes must be at least 1024");
        }
        if l.max_room_name_bytes == 0 {
            return bad("limits.max_room_name_bytes must be at least 1");
        }
        if l.outbound_queue_frames < 2 || l.room_inbox == 0 {
            return bad("limits.outbound_queue_frames must be at least 2 (the greeting is two frames) and limits.room_inbox at least 1");
        }
        if l.room_inbox_bytes < l.max_message_bytes || u32::try_from(l.room_inbox_bytes).is_err() {
            return bad("limits.room_inbox_bytes must be at least limits.max_message_bytes and at most 4294967295");
        }
        if l.max_awareness_clients_per_conn == 0 {
            return bad("limits.max_awareness_clients_per_conn must be at least 1");
        }
        if l.outbound_queue_bytes < l.max_message_bytes {
            return bad("limits.outbound_queue_bytes must be at least limits.max_message_bytes");
        }
        if l.max_http_body_bytes < 1024 || l.max_document_bytes < 1024 {
            return bad(
                "limits.max_http_body_bytes and limits.max_document_bytes must be at least 1024",
            );
        }
        if l.max_connections_per_room == 0 || l.max_concurrent_decodes == 0 {
            return bad("limits.max_connections_per_room and limits.max_concurrent_decodes must be at least 1");
        }
        if l.messages_per_second > 0 && l.message_burst == 0 {
            return bad("limits.message_burst must be at least 1 when messages_per_second is set");
        }
        if l.max_nesting_depth == 0 {
            return bad("limits.max_nesting_depth must be at least 1");
        }
        if !self.auth.jwt_enabled()
            && !self.listen.ip().is_loopback()
            && !self.auth.allow_unauthenticated
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without authentication: set a JWT secret \
                 (YRELAY_JWT_SECRET) or public key (--jwt-public-key), or pass \
                 --allow-unauthenticated for development",
                self.listen
            )));
        }
        let p = &self.persistence;
        if p.flush_interval_ms == 0 || p.flush_interval_ms > 60_000 {
            return bad("persistence.flush_interval_ms must be between 1 and 60000");
        }
        if p.compact_after_updates == 0 || p.compact_after_bytes == 0 {
            return bad(
                "persistence.compact_after_updates and compact_after_bytes must be above 0",
            );
        }
        if p.version_interval_ms > MAX_TIMEOUT_MS {
            return bad("persistence.version_interval_ms must be at most 30 days");
        }
        // (A single update larger than this still goes in when nothing is pending.)
        if p.max_pending_bytes < 1024 {
            return bad("persistence.max_pending_bytes must be at least 1024");
        }
        if let Some(url) = &p.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return bad("persistence.database_url must be a postgres:// URL");
            }
        } else if p.database_ca_file.is_some() {
            return bad("persistence.database_ca_file is set but persistence.database_url is not");
        }
        let c = &self.cluster;
        if let Some(url) = &c.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad("cluster.redis_url must be a redis:// or rediss:// (TLS) URL");
            }
            if url.starts_with("rediss://") && url.contains('#') {
                return bad("cluster.redis_url: rediss:// always verifies Redis's certificate; give its CA with cluster.redis_ca_file (--redis-ca-file) instead of a #insecure fragment");
            }
            if c.redis_ca_file.is_some() && !url.starts_with("rediss://") {
                return bad("cluster.redis_ca_file is set but cluster.redis_url is not a rediss:// (TLS) URL");
            }
            if p.database_url.is_none() {
                return bad("cluster mode needs a shared store: cluster.redis_url (YRELAY_REDIS_URL) is set but persistence.database_url (YRELAY_DATABASE_URL) is not; nodes with their own sled stores would each keep a different copy of every document");
            }
        } else if c.redis_ca_file.is_some() {
            return bad("cluster.redis_ca_file is set but cluster.redis_url is not");
        }
        if c.node_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 128)
        {
            return bad("cluster.node_id must be 1 to 128 bytes");
        }
        if c.resync_interval_ms > MAX_TIMEOUT_MS {
            return bad("cluster.resync_interval_ms must be at most 30 days");
        }
        let t = &self.timeouts;
        for (name, value) in [
            ("ping_interval_ms", t.ping_interval_ms),
            ("pong_timeout_ms", t.pong_timeout_ms),
            ("keepalive_interval_ms", t.keepalive_interval_ms),
            ("room_idle_ms", t.room_idle_ms),
            ("awareness_timeout_ms", t.awareness_timeout_ms),
            ("write_ms", t.write_ms),
            ("http_header_ms", t.http_header_ms),
            ("shutdown_ms", t.shutdown_ms),
            ("shutdown_drain_ms", t.shutdown_drain_ms),
            ("tls_handshake_ms", t.tls_handshake_ms),
        ] {
            if value > MAX_TIMEOUT_MS {
                return Err(ConfigError::Invalid(format!(
                    "timeouts.{name} must be at most {MAX_TIMEOUT_MS} (30 days)"
                )));
            }
            if value == 0 && name != "room_idle_ms" && name != "shutdown_drain_ms" {
                return Err(ConfigError::Invalid(format!(
                    "timeouts.{name} must be above 0"
                )));
            }
        }
        if t.keepalive_interval_ms >= 30_000 {
            return bad("timeouts.keepalive_interval_ms must be below 30000 (the official client gives up after 30 s of silence)");
        }
        Ok(())
    }

    /// Whether TLS is configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1234");
        assert!(c.timeouts.keepalive_interval_ms < 30_000);
    }

    #[test]
    fn shipped_example_file_states_the_defaults() {
        let file = include_str!("../../../deploy/yrelay.toml");
        let parsed: Config = toml::from_str(file).unwrap();
        assert_eq!(parsed, Config::default());
        // docs/configuration.md embeds the same file.
        let doc = include_str!("../../../docs/configuration.md");
        for line in file.lines().filter(|l| l.contains(" = ")) {
            assert!(doc.contains(line), "docs/configuration.md lacks {line:?}");
        }
    }

    #[test]
    fn partial_toml_keeps_defaults() {
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:9000\"\n[limits]\nmax_message_bytes = 2048\n")
                .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_message_bytes, 2048);
        assert_eq!(c.limits.room_inbox, Limits::default().room_inbox);
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let mut c = Config::default();
        c.timeouts.keepalive_interval_ms = 30_000;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.timeouts.room_idle_ms = u64::MAX;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("room_idle_ms"));
        let mut c = Config::default();
        c.limits.outbound_queue_frames = 1;
        assert!(c.validate().is_err());
        let c = Config {
            tls_cert: Some("a.pem".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
