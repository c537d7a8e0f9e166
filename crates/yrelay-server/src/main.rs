//! The `yrelay` binary: parse configuration, install logging, handle signals, call
//! [`yrelay_server::run`].

mod client_cli;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use yrelay_server::auth::Secret;
use yrelay_server::config::Durability;
use yrelay_server::Config;

/// mimalloc returns memory freed by evicted rooms and closed connections to the OS; glibc's
/// malloc keeps most of it (measured in docs/benchmarks.md, `rooms_rss`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// yrelay: a Yjs sync relay compatible with the official y-websocket clients.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Copy every room (log, snapshot, versions, audit trail) of a sled data directory into
    /// PostgreSQL, to move a single node to cluster mode. Stop the node first.
    Migrate(MigrateArgs),
    /// Read and write documents: on a server, or in a local replica offline, and sync the two.
    #[command(subcommand)]
    Doc(client_cli::DocCommand),
    /// Mint tokens (admin key).
    #[command(subcommand)]
    Token(client_cli::TokenCommand),
    /// List rooms (admin key).
    #[command(subcommand)]
    Rooms(client_cli::RoomsCommand),
    /// List, save and restore a room's versions.
    #[command(subcommand)]
    Versions(client_cli::VersionsCommand),
}

/// `yrelay migrate`.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The single node's data directory (holding `yrelay.sled`).
    #[arg(long, env = "YRELAY_DATA_DIR")]
    data_dir: PathBuf,
    /// The PostgreSQL database to copy into (its schema is created if needed).
    #[arg(long, env = "YRELAY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// PEM CA certificate(s) for the database's TLS certificate (with `sslmode=require`).
    #[arg(long, env = "YRELAY_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// Flags override `YRELAY_*` environment variables, which override the config file, which
/// overrides the built-in defaults (see docs/configuration.md).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:1234].
    #[arg(long, env = "YRELAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./yrelay-data].
    #[arg(long, env = "YRELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "YRELAY_CONFIG")]
    config: Option<PathBuf>,
    /// PEM certificate chain (serve wss://; needs --tls-key).
    #[arg(long, env = "YRELAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "YRELAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest WebSocket message accepted, in bytes [default: 33554432].
    #[arg(long, env = "YRELAY_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Milliseconds a room without connections stays in memory; 0 = forever [default: 60000].
    #[arg(long, env = "YRELAY_ROOM_IDLE_MS")]
    room_idle_ms: Option<u64>,
    /// Durability: `fsync` (flushed before anyone sees an update) or `batched` [default: fsync].
    #[arg(long, env = "YRELAY_DURABILITY", value_parser = ["fsync", "batched"])]
    durability: Option<String>,
    /// HS256 secret for client tokens; setting it turns JWT auth on. Prefer the environment
    /// variable: command lines are visible to other local users.
    #[arg(long, env = "YRELAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM file with an RS256 (RSA) or EdDSA (Ed25519) public key for client tokens; setting
    /// it turns JWT auth on.
    #[arg(long, env = "YRELAY_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Key for the admin API (`Authorization: Bearer <key>`); without it the admin API is off.
    #[arg(long, env = "YRELAY_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Serve without authentication on a non-loopback address (development only: anyone who
    /// can reach the port can read and change every document).
    #[arg(long, env = "YRELAY_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Serve the web editor demo at `/` (`true`/`false`) [default: true, or the config file's
    /// `demo.enabled`].
    #[arg(long, env = "YRELAY_DEMO")]
    demo: Option<bool>,
    /// Log format.
    #[arg(long, env = "YRELAY_LOG_FORMAT", value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `yrelay_server=debug`; without it `RUST_LOG`, else `info`.
    #[arg(long, env = "YRELAY_LOG")]
    log: Option<String>,
    /// Address for `/metrics`, `/healthz` and `/readyz` only (plain HTTP), e.g.
    /// `0.0.0.0:9464`; then the main address no longer serves `/metrics`.
    #[arg(long, env = "YRELAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// `postgres://` URL: keep documents in PostgreSQL instead of sled (required by cluster
    /// mode). It holds a password: prefer the environment variable.
    #[arg(long, env = "YRELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM CA certificate(s) that signed PostgreSQL's certificate, trusted instead of the
    /// public roots (with `sslmode=require` in --database-url).
    #[arg(long, env = "YRELAY_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// `redis://` (or `rediss://`, TLS) URL: turns cluster mode on (updates fan out between
    /// nodes over Redis pub/sub); needs --database-url.
    #[arg(long, env = "YRELAY_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// PEM CA certificate(s) that signed Redis's certificate, trusted instead of the public
    /// roots (with a rediss:// URL).
    #[arg(long, env = "YRELAY_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// This node's name in the cluster [default: host name + random suffix].
    #[arg(long, env = "YRELAY_NODE_ID")]
    node_id: Option<String>,
}

impl ServeArgs {
    fn to_config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.tls_cert {
            config.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            config.tls_key = Some(v.clone());
        }
        if let Some(v) = self.max_message_bytes {
            config.limits.max_message_bytes = v;
        }
        if let Some(v) = self.room_idle_ms {
            config.timeouts.room_idle_ms = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = &self.database_url {
            config.persistence.database_url = Some(v.clone());
        }
        if let Some(v) = &self.database_ca_file {
            config.persistence.database_ca_file = Some(v.clone());
        }
        if let Some(v) = &self.redis_url {
            config.cluster.redis_url = Some(v.clone());
        }
        if let Some(v) = &self.redis_ca_file {
            config.cluster.redis_ca_file = Some(v.clone());
        }
        if let Some(v) = &self.node_id {
            config.cluster.node_id = Some(v.clone());
        }
        if let Some(v) = &self.jwt_secret {
            config.auth.jwt_secret = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.jwt_public_key {
            config.auth.jwt_public_key = Some(v.clone());
        }
        if let Some(v) = &self.admin_key {
            config.auth.admin_key = Some(Secret::new(v.clone()));
        }
        if let Some(v) = self.demo {
            config.demo.enabled = v;
        }
        if self.allow_unauthenticated {
            config.auth.allow_unauthenticated = true;
        }
        match self.durability.as_deref() {
            Some("batched") => config.persistence.durability = Durability::Batched,
            Some(_) => config.persistence.durability = Durability::Fsync,
            None => {}
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now (so a signal that arrives during startup is
/// not fatal) and returns a future that completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        let term = async move {
            term.recv().await;
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            () = term => {}
        }
    })
}

/// Runs `yrelay migrate`: every room of the sled store into PostgreSQL; rooms the database
/// already has are skipped (never merged) and reported. Prints one line per room and a total.
#[cfg(feature = "postgres")]
fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("yrelay.sled");
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: --data-dir must be the directory a single node served from",
        path.display()
    );
    let from = yrelay_store::SledStore::open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let options = yrelay_server::server::pg_options(args.database_ca_file.as_deref())?;
    let to = yrelay_store::PgStore::open_with(&args.database_url, options)
        .context("cannot open the PostgreSQL store (--database-url)")?;
    let report = yrelay_store::migrate(&from, &to, |room, outcome| {
        #[allow(clippy::print_stdout)]
        {
            println!("{room:?}: {outcome}");
        }
    })
    .context("migration failed")?;
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    Ok(())
}

#[cfg(not(feature = "postgres"))]
fn migrate(_: MigrateArgs) -> anyhow::Result<()> {
    anyhow::bail!("this build of yrelay has no PostgreSQL support (cargo feature `postgres`)")
}

/// Runs the command; an error is printed as one line, `error: <reason: cause: ...>`, with
/// exit status 1.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Blocking throughout (sled and the synchronous PostgreSQL client): no async runtime.
        Command::Migrate(args) => migrate(args),
        Command::Serve(args) => serve(*args),
        Command::Doc(cmd) => client_cli::doc(cmd),
        Command::Token(cmd) => client_cli::token(cmd),
        Command::Rooms(cmd) => client_cli::rooms(cmd),
        Command::Versions(cmd) => client_cli::versions(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "info".to_owned());
    init_tracing(args.log_format, &filter)?;
    let config = args.to_config()?;
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let scheme = if config.tls_enabled() { "wss" } else { "ws" };
    let store = match &config.persistence.database_url {
        Some(_) => "postgres".to_owned(),
        None => config.data_dir.display().to_string(),
    };
    let jwt = config.auth.jwt_enabled();
    let demo = config.demo.enabled && yrelay_server::demo::built();
    let server = yrelay_server::server::Server::prepare(listener, config)?;
    let addr = server.local_addr()?;
    // The one line on stdout: tests and scripts read the bound address from it (useful with
    // port 0). Everything else goes to the log on stderr.
    #[allow(clippy::print_stdout)]
    {
        println!("yrelay listening on {scheme}://{addr}");
    }
    tracing::info!(%addr, scheme, %store, auth = if jwt { "jwt" } else { "none" }, "listening");
    if demo {
        let web = if scheme == "wss" { "https" } else { "http" };
        tracing::info!(
            "web editor demo: open {web}://{addr}/ in two tabs (?room=NAME picks the room)"
        );
    }
    if !jwt && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "AUTHENTICATION IS OFF on a non-loopback address: anyone who can reach this port can read, change and delete every document. Set YRELAY_JWT_SECRET or --jwt-public-key for anything but development."
        );
    }
    server.serve(shutdown).await;
    Ok(())
}
