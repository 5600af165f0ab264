//! The pruning job service, grouped by role along the data flow (see `docs/architecture.md`):
//!
//! * [`api`]: the `pruning.v1` gRPC handlers, authentication and the proto mapping;
//! * [`jobs`]: admission (request -> typed spec -> queued job), the scheduler loop, attempts;
//! * [`launch`]: how a worker process is started ([`launch::Launcher`]; `prune-worker` is a
//!   binary of its own and the only one that links libtorch);
//! * [`storage`]: the database (jobs, attempts, checkpoints, metrics, artifacts);
//! * [`files`]: uploads into the file store (`prune-store`) where blobs, checkpoints and
//!   artifacts live by key.

pub mod api;
pub mod config;
pub mod files;
pub mod jobs;
pub mod launch;
pub mod shutdown;
pub mod storage;

use std::io::Write;
use std::sync::Arc;

use prune_proto::pruning_service_server::PruningServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use prune_store::{FileStore, LocalStore};

use crate::api::auth::{Authenticator, Tokens, TokensError};
use crate::api::message_limit;
use crate::api::service::{Service, Shared};
use crate::config::{DataDir, SecurityArgs, ServeArgs};
use crate::files::uploads::BlobStore;
use crate::jobs::admission::Defaults;
use crate::jobs::attempt::Deps;
use crate::jobs::live::Live;
use crate::jobs::scheduler::{self, SchedulerConfig};
use crate::launch::process::ProcessLauncher;
use crate::storage::{masked_url, Db, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database could not be opened at start-up; `url` has its password masked.
    #[error("database {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("locating the server binary (prune-worker is found next to it): {0}")]
    Exe(std::io::Error),
    #[error("worker binary {path} not found: build it (`cargo build -p prune-worker`) or pass --worker-bin")]
    WorkerBin { path: std::path::PathBuf },
    #[error("listening on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(
        "refusing to serve {addr} without --tokens: anyone who can reach it could read and run jobs \
         (give --tokens FILE, listen on a loopback address, or pass --insecure)"
    )]
    Insecure { addr: std::net::SocketAddr },
    #[error(
        "refusing to serve the dashboard on {addr}: it is plain HTTP (bearer tokens and job data would travel \
         in clear text); use a loopback address behind a TLS proxy, or pass --insecure"
    )]
    InsecureHttp { addr: std::net::SocketAddr },
    #[error("TLS {what} {path}: {source}")]
    TlsFile { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("TLS with --tls-cert {cert} and --tls-key {key}: {reason}")]
    Tls { cert: std::path::PathBuf, key: std::path::PathBuf, reason: String },
    #[error("{0}")]
    Store(prune_store::StoreError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until SIGTERM/SIGINT, then stops accepting, has running jobs checkpoint (they stay
/// RUNNING and resume at the next start) and returns.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    // Configuration mistakes stop the server before it touches the data directory.
    let tokens = args.security.tokens.as_deref().map(Tokens::load).transpose()?;
    if tokens.is_none() && !args.listen.ip().is_loopback() && !args.security.insecure {
        return Err(ServeError::Insecure { addr: args.listen });
    }
    if let Some(http) = args.http {
        if !http.ip().is_loopback() && !args.security.insecure {
            return Err(ServeError::InsecureHttp { addr: http });
        }
    }
    let tls = tls_config(&args.security)?;
    let mut builder = Server::builder()
        .initial_stream_window_size(Some(prune_proto::HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(prune_proto::HTTP2_CONNECTION_WINDOW))
        .max_frame_size(Some(prune_proto::HTTP2_MAX_FRAME));
    if let Some(tls) = tls {
        // rustls checks the certificate and key here, before anything is written.
        builder = builder.tls_config(tls).map_err(|e| ServeError::Tls {
            cert: args.security.tls_cert.clone().unwrap_or_default(),
            key: args.security.tls_key.clone().unwrap_or_default(),
            reason: innermost(&e),
        })?;
    }
    let data_dir = DataDir::create(&args.data_dir)
        .map_err(|source| ServeError::DataDir { path: args.data_dir.clone(), source })?;
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => ProcessLauncher::default_worker_bin().map_err(ServeError::Exe)?,
    };
    if !worker_bin.is_file() {
        return Err(ServeError::WorkerBin { path: worker_bin });
    }
    let db = match &args.database {
        Some(url) => Db::connect_with_lease(url, args.lease()).await,
        None => Db::open(&data_dir.database()).await,
    }
    .map_err(|e| ServeError::Database {
        url: args.database.as_deref().map_or_else(|| format!("sqlite://{}", data_dir.database().display()), masked_url),
        reason: prune_core::text::one_line(&e.to_string()),
    })?;
    // The data directory itself (keys are paths relative to it) unless --store names another.
    let store: Arc<dyn FileStore> = match &args.store {
        None => Arc::new(LocalStore::new(data_dir.root().to_path_buf())),
        Some(url) => Arc::from(prune_store::open(url).map_err(ServeError::Store)?),
    };
    let probe = store.clone();
    tokio::task::spawn_blocking(move || probe.probe())
        .await
        .map_err(|e| ServeError::Store(prune_store::StoreError::Url { url: store.url(), reason: e.to_string() }))?
        .map_err(ServeError::Store)?;
    let blobs =
        BlobStore::new(store.clone(), data_dir.blobs_tmp()).with_segment_bytes(args.limits.upload_segment_bytes);
    let live = Live::default();
    let devices = Arc::default();
    api::service::probe_devices(worker_bin.clone(), Arc::clone(&devices));
    let launcher = ProcessLauncher { worker_bin, store_url: store.url(), scratch: data_dir.scratch() };
    let deps = Deps { db: db.clone(), live: live.clone(), store: store.clone() };
    let shutdown = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown.clone()).map_err(ServeError::Signals)?;

    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| ServeError::Listen { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: args.listen, source })?;

    let node = args.node_id();
    let scheduler_config = SchedulerConfig {
        workers: args.workers as usize,
        shutdown_grace: args.shutdown_grace(),
        node: node.clone(),
        lease: args.lease(),
        // A SQLite database is this node's alone: whatever it left running is its own.
        release_all_at_start: db.is_sqlite(),
        max_running_per_tenant: args.max_running_per_tenant,
    };
    jobs::retention::start(db.clone(), store.clone(), args.retention(), args.blob_grace(), shutdown.clone());
    let tracked_timeout = std::time::Duration::from_secs(u64::from(args.limits.tracked_timeout_secs));
    jobs::tracked::start_expiry(db.clone(), live.clone(), tracked_timeout, shutdown.clone());
    let facts = api::service::Facts {
        node: node.clone(),
        database: if db.is_sqlite() { "sqlite" } else { "postgres" },
        store: store.url(),
        data_dir: data_dir.root().to_path_buf(),
        workers: args.workers,
        max_attempts: args.max_attempts,
        max_running_per_tenant: args.max_running_per_tenant,
        retention_days: args.retention_days,
        devices,
    };
    let (scheduler, scheduler_task) = scheduler::start(deps, Arc::new(launcher), scheduler_config);
    let service = Service::new(Shared {
        db: db.clone(),
        blobs,
        live,
        scheduler: scheduler.clone(),
        defaults: Defaults { threads: args.threads_per_job(), max_attempts: args.max_attempts },
        limits: args.limits,
        shutdown: shutdown.clone(),
        facts,
    });
    let tenants = tokens.as_ref().map_or(0, Tokens::len);
    let authenticator = Authenticator::new(tokens);
    // The dashboard calls the same service in-process, authenticated by the same tokens.
    let dashboard = match args.http {
        Some(http) => {
            let listener = TcpListener::bind(http).await.map_err(|source| ServeError::Listen { addr: http, source })?;
            let bound = listener.local_addr().map_err(|source| ServeError::Listen { addr: http, source })?;
            announce_line(&format!("dashboard on http://{bound}"));
            tracing::info!(addr = %bound, "dashboard");
            let (service, auth, shutdown) = (service.clone(), authenticator.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = api::dashboard::serve(listener, service, auth, shutdown).await {
                    tracing::error!("dashboard: {e}");
                }
            }))
        }
        None => None,
    };
    // Only the pruning service authenticates: health checks and reflection stay open.
    let pruning = PruningServiceServer::new(service)
        .max_decoding_message_size(args.limits.max_message_bytes as usize)
        .max_encoding_message_size(usize::MAX);
    let pruning = tonic::service::interceptor::InterceptedService::new(pruning, authenticator);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PruningServiceServer<Service>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(prune_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let server = builder
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(tower::util::MapResponseLayer::new(message_limit::resource_exhausted_for_oversized))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(pruning)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.clone().cancelled_owned());

    // The socket is bound: connections queue from now on, so the address can be announced.
    announce(addr);
    tracing::info!(
        %addr,
        data_dir = %data_dir.root().display(),
        node,
        workers = args.workers,
        lease_secs = args.lease_secs,
        tls = args.security.tls_cert.is_some(),
        tokens = tenants,
        "serving"
    );
    if tenants > 0 && args.security.tls_cert.is_none() && !addr.ip().is_loopback() {
        tracing::warn!("bearer tokens travel in clear text: give --tls-cert and --tls-key");
    }

    let served = async {
        let result = server.await;
        shutdown.cancel(); // a server error ends everything else too
        result
    };
    let drained = async {
        shutdown.cancelled().await;
        health.set_not_serving::<PruningServiceServer<Service>>().await;
        scheduler.shutdown().await;
    };
    let (served, ()) = tokio::join!(served, drained);
    let _ = scheduler_task.await;
    if let Some(dashboard) = dashboard {
        let _ = dashboard.await;
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(served?)
}

/// Accepted connections with Nagle's algorithm off: small replies (GetJob) would otherwise
/// wait for the peer's delayed ACK, ~40 ms each. (`Server::tcp_nodelay` covers only listeners
/// tonic binds itself.)
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("TCP_NODELAY on an accepted connection: {e}");
        }
        Ok(stream)
    })
}

/// The most specific message of an error chain (tonic wraps rustls' reason in "transport error").
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// The TLS identity from `--tls-cert` and `--tls-key`, when given.
fn tls_config(security: &SecurityArgs) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        return Ok(None);
    };
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile { what, path: path.to_path_buf(), source })
    };
    let identity = Identity::from_pem(read("certificate", cert)?, read("key", key)?);
    Ok(Some(ServerTlsConfig::new().identity(identity)))
}

/// `listening on ADDR` on stdout: how scripts and tests find a `--listen 127.0.0.1:0` port.
fn announce(addr: std::net::SocketAddr) {
    announce_line(&format!("listening on {addr}"));
}

/// One line on stdout, flushed (`dashboard on http://ADDR` is printed before `listening on`).
fn announce_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
