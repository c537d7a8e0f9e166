//! The server: accept loop (plain or TLS), hyper connections, and ordered shutdown.
//!
//! Shutdown order: stop accepting; cancel every connection (each sends close 1001); rooms end
//! once their connections are gone; wait for every tracked task, at most
//! `timeouts.shutdown_ms`.

use std::future::Future;
use std::sync::Arc;

use hyper::body::Incoming as HyperBody;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError};
use crate::http::{routes, PeerAddr};
use crate::room::Registry;
use crate::tls::{self, TlsError};
use yrelay_store::{SledStore, Store};

/// State shared by every request.
pub struct AppState {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Rooms in memory.
    pub registry: Arc<Registry>,
    /// Tracks every connection and room task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The store's directory.
        path: std::path::PathBuf,
        /// Why.
        source: yrelay_store::StoreError,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves on `listener` until `shutdown` completes, then shuts down in order.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::prepare(listener, config)?.serve(shutdown).await;
    Ok(())
}

/// A server whose configuration, data directory and TLS files have been checked, ready to
/// serve. [`run`] is `prepare` then `serve`; the binary calls them apart so that it announces
/// its address only once startup can no longer fail.
pub struct Server {
    listener: TcpListener,
    config: Arc<Config>,
    acceptor: Option<TlsAcceptor>,
    store: Arc<dyn Store>,
}

impl Server {
    /// Checks everything that can fail at startup.
    pub fn prepare(listener: TcpListener, config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let acceptor = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let path = config.data_dir.join("yrelay.sled");
        let store = SledStore::open(&path).map_err(|source| ServerError::Store { path, source })?;
        Ok(Self {
            listener,
            config: Arc::new(config),
            acceptor,
            store: Arc::new(store),
        })
    }

    /// The address being listened on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            config,
            acceptor,
            store,
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let registry = Arc::new(Registry::new(
            Arc::clone(&config),
            Arc::clone(&store),
            tracker.clone(),
            token.clone(),
        ));
        let state = Arc::new(AppState {
            config: Arc::clone(&config),
            registry,
            tracker: tracker.clone(),
            shutdown: token.clone(),
        });
        let service = warp::service(routes(Arc::clone(&state)));

        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(err) = tcp.set_nodelay(true) {
                debug!(error = %err, "set_nodelay failed");
            }
            let svc = service
                .clone()
                .map_request(move |mut req: http::Request<HyperBody>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                });
            let token = token.clone();
            let acceptor = acceptor.clone();
            let handshake = config.timeouts.tls_handshake();
            let header_timeout = config.timeouts.http_header();
            tracker.spawn(async move {
                match acceptor {
                    None => serve_http(tcp, svc, token, header_timeout).await,
                    Some(acceptor) => {
                        let tls = tokio::select! {
                            () = token.cancelled() => return,
                            tls = tokio::time::timeout(handshake, acceptor.accept(tcp)) => tls,
                        };
                        match tls {
                            Ok(Ok(tls)) => serve_http(tls, svc, token, header_timeout).await,
                            Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }

        info!("shutting down");
        drop(listener);
        token.cancel();
        tracker.close();
        if tokio::time::timeout(config.timeouts.shutdown(), tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = tracker.len(),
                "shutdown timeout passed with tasks still running"
            );
        }
        // Rooms flushed their logs as they ended; one last flush covers anything else.
        let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            warn!("final store flush failed");
        }
        info!("stopped");
    }
}

/// TLS acceptor type re-exported for tests that build their own.
pub type Acceptor = TlsAcceptor;

async fn serve_http<I, S>(
    io: I,
    svc: S,
    token: CancellationToken,
    header_timeout: std::time::Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<HyperBody>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // hyper only enforces a header read timeout when it has a timer.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(err) = res {
                debug!(error = %err, "http connection ended with error");
            }
        }
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
