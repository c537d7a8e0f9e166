//! The `yrelay` binary: parse configuration, install logging, handle signals, call
//! [`yrelay_server::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
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
    Serve(ServeArgs),
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
    /// Log format.
    #[arg(long, env = "YRELAY_LOG_FORMAT", value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `yrelay_server=debug` [default: info].
    #[arg(long, env = "YRELAY_LOG", default_value = "info")]
    log: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    init_tracing(args.log_format, &args.log)?;
    let config = args.to_config()?;
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let scheme = if config.tls_enabled() { "wss" } else { "ws" };
    let data_dir = config.data_dir.clone();
    let server = yrelay_server::server::Server::prepare(listener, config)?;
    let addr = server.local_addr()?;
    // The one line on stdout: tests and scripts read the bound address from it (useful with
    // port 0). Everything else goes to the log on stderr.
    #[allow(clippy::print_stdout)]
    {
        println!("yrelay listening on {scheme}://{addr}");
    }
    tracing::info!(%addr, scheme, data_dir = %data_dir.display(), "listening");
    server.serve(shutdown).await;
    Ok(())
}
