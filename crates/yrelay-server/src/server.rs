//! The server: accept loop (plain or TLS), hyper connections, and ordered shutdown.
//!
//! Shutdown order: stop accepting; cancel every connection (each sends close 1001); rooms end
//! once their connections are gone; wait for every tracked task, at most
//! `timeouts.shutdown_ms`.

use std::future::Future;
use std::path::Path;
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

use crate::auth::{AuthConfigError, Authenticator};
use crate::cluster::{Cluster, ClusterError, ClusterTasks};
use crate::config::{Config, ConfigError};
use crate::http::{routes, PeerAddr};
use crate::limits::ConnCounts;
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
    /// Verifies tokens and the admin key.
    pub auth: Arc<Authenticator>,
    /// Open connections per room (`limits.max_connections_per_room`).
    pub room_conns: Arc<ConnCounts<Arc<str>>>,
    /// Open connections per client address (`limits.max_connections_per_ip`).
    pub ip_conns: Arc<ConnCounts<std::net::IpAddr>>,
    /// Server-wide budget of large decodes (`limits.max_concurrent_decodes`).
    pub decodes: Arc<tokio::sync::Semaphore>,
    /// Cancelled when shutdown begins (before `shutdown`, by `timeouts.shutdown_drain_ms`):
    /// from then on `/readyz` answers 503 and upgrades are refused.
    pub draining: CancellationToken,
    /// The last store check, so probes cannot hammer the disk.
    pub store_check: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
}

/// How long a store check result is reused by `/readyz`.
const STORE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl AppState {
    /// Whether the server should receive new clients, and the reasons if not.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.draining.is_cancelled() {
            reasons.push("shutting down".to_owned());
        }
        let store = {
            let mut last = self.store_check.lock().await;
            match &*last {
                Some((at, result)) if at.elapsed() < STORE_CHECK_TTL => result.clone(),
                _ => {
                    let store = Arc::clone(self.registry.store());
                    let result = match tokio::task::spawn_blocking(move || store.check()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    *last = Some((tokio::time::Instant::now(), result.clone()));
                    result
                }
            }
        };
        if let Err(e) = store {
            reasons.push(format!("store not writable: {e}"));
        }
        metrics::gauge!("yrelay_ready").set(if reasons.is_empty() { 1.0 } else { 0.0 });
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// In cluster mode with Redis unreachable, why: the node still serves its own clients
    /// (and stays ready), but edits no longer cross to other nodes until Redis returns.
    pub fn degraded(&self) -> Option<String> {
        let problem = self.registry.cluster()?.problem()?;
        Some(format!(
            "redis unreachable ({problem}); serving local clients only, other nodes' edits arrive once it is back"
        ))
    }
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
    /// The auth settings are unusable (key file, secret).
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// The PostgreSQL store could not be opened.
    #[error("cannot open the PostgreSQL store (persistence.database_url): {0}")]
    Database(yrelay_store::StoreError),
    /// A CA file (for TLS to PostgreSQL or Redis) is unusable.
    #[error("{setting}: {source}")]
    CaFile {
        /// The setting that names it.
        setting: &'static str,
        /// Why.
        source: TlsError,
    },
    /// This build has no PostgreSQL store.
    #[error("persistence.database_url is set but this build of yrelay has no PostgreSQL support (feature `postgres`)")]
    NoPostgres,
    /// Cluster mode could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The store could not be opened.
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The store's directory.
        path: std::path::PathBuf,
        /// Why.
        source: yrelay_store::StoreError,
    },
    /// The metrics address could not be bound.
    #[error("cannot listen on {addr} (metrics_listen): {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
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
    auth: Arc<Authenticator>,
    metrics_listener: Option<TcpListener>,
    cluster: Option<(Arc<Cluster>, ClusterTasks)>,
}

/// The PEM text of the CA file named by `setting` (see [`crate::tls::read_ca_pem`]).
pub fn read_ca_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, ServerError> {
    crate::tls::read_ca_pem(path).map_err(|source| ServerError::CaFile { setting, source })
}

/// The PostgreSQL store's options: the defaults, with the CA of
/// `persistence.database_ca_file` when set.
#[cfg(feature = "postgres")]
pub fn pg_options(ca_file: Option<&Path>) -> Result<yrelay_store::PgOptions, ServerError> {
    let ca_pem = ca_file
        .map(|path| read_ca_file("persistence.database_ca_file", path))
        .transpose()?;
    Ok(yrelay_store::PgOptions {
        ca_pem,
        ..yrelay_store::PgOptions::default()
    })
}

/// Opens the store the configuration selects: PostgreSQL when `persistence.database_url` is
/// set, else sled in the data directory.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match &config.persistence.database_url {
        #[cfg(feature = "postgres")]
        Some(url) => {
            // The synchronous PostgreSQL client runs its own small runtime, which must not be
            // started on an async worker thread: open it on a plain thread.
            let url = url.clone();
            let options = pg_options(config.persistence.database_ca_file.as_deref())?;
            let opened =
                std::thread::spawn(move || yrelay_store::PgStore::open_with(&url, options))
                    .join()
                    .map_err(|_| {
                        ServerError::Database(yrelay_store::StoreError::Corrupt(
                            "opening the database panicked".to_owned(),
                        ))
                    })?;
            let store = opened.map_err(ServerError::Database)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => Err(ServerError::NoPostgres),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
            let path = config.data_dir.join("yrelay.sled");
            let store =
                SledStore::open(&path).map_err(|source| ServerError::Store { path, source })?;
            Ok(Arc::new(store))
        }
    }
}

impl Server {
    /// Checks everything that can fail at startup.
    pub fn prepare(listener: TcpListener, config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let acceptor = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let auth = Arc::new(Authenticator::new(&config.auth)?);
        let metrics_listener = match config.metrics_listen {
            None => None,
            Some(addr) => {
                let bound = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|source| ServerError::MetricsListen { addr, source })?;
                Some(bound)
            }
        };
        crate::metrics::install();
        let store = open_store(&config)?;
        let cluster = if config.cluster.enabled() {
            let ca_pem = config
                .cluster
                .redis_ca_file
                .as_deref()
                .map(|path| read_ca_file("cluster.redis_ca_file", path))
                .transpose()?;
            Some(Cluster::new(&config.cluster, ca_pem)?)
        } else {
            None
        };
        Ok(Self {
            listener,
            config: Arc::new(config),
            acceptor,
            store,
            auth,
            metrics_listener,
            cluster,
        })
    }

    /// The address being listened on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics address being listened on, if one is configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            config,
            acceptor,
            store,
            auth,
            metrics_listener,
            cluster,
        } = self;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let registry = Arc::new(Registry::new(
            Arc::clone(&config),
            Arc::clone(&store),
            tracker.clone(),
            token.clone(),
            cluster.as_ref().map(|(c, _)| Arc::clone(c)),
        ));
        if let Some((cluster, tasks)) = cluster {
            info!(node = cluster.node_id(), "cluster mode: fan-out over Redis");
            cluster.spawn(tasks, Arc::clone(&registry), &tracker, token.clone());
        }
        let state = Arc::new(AppState {
            config: Arc::clone(&config),
            registry,
            tracker: tracker.clone(),
            shutdown: token.clone(),
            auth,
            room_conns: Arc::default(),
            ip_conns: Arc::default(),
            decodes: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_concurrent_decodes,
            )),
            draining: CancellationToken::new(),
            store_check: tokio::sync::Mutex::new(None),
        });
        let service = warp::service(routes(Arc::clone(&state)));
        // The metrics address serves until the very end, so probes see the shutdown.
        let metrics_stop = CancellationToken::new();
        let metrics_task = metrics_listener.map(|listener| {
            let service = warp::service(crate::http::metrics_routes(Arc::clone(&state)));
            let stop = metrics_stop.clone();
            let header_timeout = config.timeouts.http_header();
            tokio::spawn(async move {
                let conns = TaskTracker::new();
                loop {
                    let tcp = tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(err) => {
                                warn!(error = %err, "metrics accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    conns.spawn(serve_http(
                        tcp,
                        service.clone(),
                        stop.clone(),
                        header_timeout,
                    ));
                }
                conns.close();
                conns.wait().await;
            })
        });

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

        state.draining.cancel();
        metrics::gauge!("yrelay_ready").set(0.0);
        let drain = config.timeouts.shutdown_drain();
        if !drain.is_zero() {
            info!(?drain, "draining: not ready, refusing new upgrades");
            let until = tokio::time::Instant::now() + drain;
            // Keep answering (probes, REST) while the load balancer catches up.
            loop {
                let (tcp, peer) = tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let svc = service
                    .clone()
                    .map_request(move |mut req: http::Request<HyperBody>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        req
                    });
                let token = token.clone();
                let header_timeout = config.timeouts.http_header();
                match acceptor.clone() {
                    None => {
                        tracker.spawn(serve_http(tcp, svc, token, header_timeout));
                    }
                    Some(acceptor) => {
                        let handshake = config.timeouts.tls_handshake();
                        tracker.spawn(async move {
                            if let Ok(Ok(tls)) =
                                tokio::time::timeout(handshake, acceptor.accept(tcp)).await
                            {
                                serve_http(tls, svc, token, header_timeout).await;
                            }
                        });
                    }
                }
            }
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
        metrics_stop.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
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
