//! Running the server: configuration, start-up (ONNX Runtime, execution provider, the model
//! repository, health and reflection) and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::{Metrics, serve_metrics};
use crate::models::{ModelError, load_models};
use crate::proto::{self, fracmap_server::FracmapServer};
use crate::repository::{ModelRepository, RepositoryError};
use crate::runtime::{Device, ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};
use crate::security::{BearerAuth, SecurityError, TlsSettings, server_tls_config};
use crate::segment_request::MESSAGE_OVERHEAD;
use crate::service::{FracmapService, ServiceError, ServiceSettings};

/// What a server needs besides its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The ONNX Runtime shared library to load (see [`crate::runtime::default_library_path`]).
    pub ort_library: PathBuf,
    /// Where models run.
    pub device: Device,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: NonZeroUsize,
    /// The model repository, `<models>/<name>/<version>/` (see [`crate::repository`]);
    /// `None` serves no models.
    pub models: Option<PathBuf>,
    /// How long requests in flight may run on once shutdown begins. Bounded because a
    /// client's open stream (a health Watch, say) would otherwise hold the server forever.
    pub shutdown_grace: Duration,
    /// Segmentation: default model, limits, workers (sessions per model), queue, batch.
    pub service: ServiceSettings,
    /// Where Prometheus scrapes `/metrics` (plain HTTP); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// TLS for the gRPC port; `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// Bearer tokens that `fracmap.v1.Fracmap` accepts; empty: no check. Health and
    /// reflection stay open, as load balancers and grpcurl expect.
    pub bearer_tokens: Vec<String>,
}

impl ServerConfig {
    /// Defaults that work: the device chosen automatically, one thread per core.
    pub fn new(ort_library: PathBuf) -> Self {
        ServerConfig {
            ort_library,
            device: Device::Auto,
            intra_threads: default_intra_threads(),
            models: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            service: ServiceSettings::default(),
            metrics: None,
            tls: None,
            bearer_tokens: Vec::new(),
        }
    }
}

/// Default [`ServerConfig::shutdown_grace`]: room for a few segmentations on CPU, and less
/// than the 30 s a container orchestrator usually waits before it kills.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// One intra-op thread per core this process may use.
pub fn default_intra_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("cannot listen for metrics on {address}")]
    MetricsListen { address: SocketAddr, source: std::io::Error },
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the listening socket's address")]
    Listener(#[from] std::io::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// The gRPC service names the health service reports on: `fracmap.v1.Fracmap`, and "" for
/// the server as a whole (the health checking protocol's convention).
const HEALTH_SERVICES: [&str; 2] = [<FracmapServer<FracmapService> as tonic::server::NamedService>::NAME, ""];

/// Serves `fracmap.v1.Fracmap`, `grpc.health.v1.Health` and gRPC reflection (v1 and
/// v1alpha, which grpcurl 1.8 and grpcio speak) on `listener` until `shutdown` completes,
/// then stops accepting, lets requests in flight finish for up to
/// [`ServerConfig::shutdown_grace`] and returns.
///
/// Loads ONNX Runtime, resolves the execution provider and loads the models of
/// [`ServerConfig::models`] first: an error there (a model that does not load or does not
/// match its manifest) returns before anything is served. Health reports SERVING once
/// ready and NOT_SERVING from the moment `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let runtime = OnnxRuntime::init(&config.ort_library)?;
    let provider = runtime.resolve_provider(config.device)?;
    // CPU stays CPU (no second try at CUDA per model); on CUDA, `Auto` keeps its fallback
    // for a GPU that fails only when a model is placed on it.
    let device = match provider {
        ExecutionProvider::Cpu => Device::Cpu,
        ExecutionProvider::Cuda => config.device,
    };
    let settings = SessionSettings { device, intra_threads: config.intra_threads };
    let sessions = config.service.workers;
    let models = match &config.models {
        Some(root) => load_models(runtime, &ModelRepository::scan(root)?, &settings, sessions)?,
        None => Vec::new(),
    };
    let model_count = models.len();
    let metrics = Arc::new(Metrics::new());
    let service = FracmapService::new(
        runtime,
        provider,
        config.intra_threads,
        models,
        config.service.clone(),
        Arc::clone(&metrics),
    )?;
    // A chunk of the largest size the limits allow, with its framing, and no larger.
    let message_limit = config.service.limits.max_chunk_bytes + MESSAGE_OVERHEAD;
    let fracmap =
        FracmapServer::new(service).max_decoding_message_size(message_limit).max_encoding_message_size(message_limit);
    let auth = BearerAuth::new(config.bearer_tokens.clone())?;
    let tls = config.tls.as_ref().map(server_tls_config).transpose()?;

    // Each reflection version would describe only itself; both describe everything served.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;

    tracing::info!(
        address = %listener.local_addr()?,
        provider = %provider,
        intra_threads = %config.intra_threads,
        models = model_count,
        onnx_runtime = runtime.version(),
        "serving fracmap.v1.Fracmap"
    );
    let (metrics_stop, metrics_stopped) = oneshot::channel::<()>();
    if let Some(address) = config.metrics {
        let metrics_listener =
            TcpListener::bind(address).await.map_err(|source| ServerError::MetricsListen { address, source })?;
        tracing::info!(address = %metrics_listener.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(serve_metrics(Arc::clone(&metrics), metrics_listener, async {
            let _ = metrics_stopped.await;
        }));
    }
    let (draining, drain_started) = oneshot::channel::<()>();
    let mut builder = Server::builder()
        .initial_stream_window_size(proto::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(proto::HTTP2_CONNECTION_WINDOW);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(fracmap, auth))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            tracing::info!("shutting down: finishing the requests in flight");
            set_health(&health, ServingStatus::NotServing).await;
            let _ = draining.send(());
        });
    let grace_over = async {
        match drain_started.await {
            Ok(()) => tokio::time::sleep(config.shutdown_grace).await,
            // The server ended without a shutdown: the other branch has its result.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server => served?,
        () = grace_over => tracing::warn!(
            "requests still in flight {:?} after shutdown began; stopping without them",
            config.shutdown_grace
        ),
    }
    let _ = metrics_stop.send(());
    tracing::info!("stopped");
    Ok(())
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Completes on ctrl-c (SIGINT) or, on Unix, SIGTERM: the `shutdown` future for [`serve`]
/// in a process. A signal that cannot be listened for is logged and never fires.
pub async fn shutdown_signal() {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(error) => {
                tracing::warn!("cannot listen for ctrl-c: {error}");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
                "SIGTERM"
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&str>();
    let signal = tokio::select! {
        name = interrupt => name,
        name = terminate => name,
    };
    tracing::info!("received {signal}");
}
