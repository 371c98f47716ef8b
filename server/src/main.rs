//! fracmap-server: serves fracmap's ONNX models over gRPC. Parses arguments and the optional
//! TOML configuration (flags win), sets up logging, binds the socket and hands over to
//! [`fracmap_server::serve`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fracmap_server::config_file::{FileConfig, LogFormat};
use fracmap_server::runtime::{Device, default_library_path};
use fracmap_server::security::{TlsSettings, read_token_file};
use fracmap_server::segment_request::Limits;
use fracmap_server::server::{DEFAULT_SHUTDOWN_GRACE, default_intra_threads};
use fracmap_server::service::ServiceSettings;
use fracmap_server::{ServerConfig, serve, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// Serves fracmap's vertebral fracture models over gRPC (package fracmap.v1: Segment,
/// ListModels, GetServerInfo), with ONNX Runtime on CPU or CUDA. Also serves
/// grpc.health.v1.Health (SERVING once the models are loaded) and gRPC reflection, so
/// `grpcurl -plaintext ADDR list` shows the API. Stops cleanly on ctrl-c or SIGTERM, letting
/// requests in flight finish.
///
/// Every setting can come from a TOML file (--config; see configs/server.example.toml);
/// a flag given on the command line wins over the file. Logs go to stderr; set RUST_LOG
/// (e.g. RUST_LOG=debug) for more or less. Logs carry request ids, never patient data.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// A TOML configuration file (configs/server.example.toml lists every key).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Where the models run: auto = CUDA when this build has it and a GPU is usable, else
    /// CPU (with a log line) [default: auto].
    #[arg(long, value_enum)]
    device: Option<Device>,
    /// ONNX Runtime intra-op threads per session [default: the cores divided among the sessions].
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// The ONNX Runtime shared library [default: $ORT_DYLIB_PATH, else .deps/lib/libonnxruntime.so,
    /// which `bash scripts/setup.sh` creates].
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// The model repository: DIR/<name>/<version>/ with model.onnx and manifest.json, as
    /// `fracmap-train export` writes it; the repository's models/ ships defaults. The highest
    /// valid version of each name is loaded at start-up; one that does not load or does not
    /// match its manifest stops the server [default: none, no models].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// The segmentation model for requests that name none [default: the first U-Net by name,
    /// else the first p2p_lstm model].
    #[arg(long, value_name = "NAME")]
    default_model: Option<String>,
    /// Segmentations run at once; each model gets as many ONNX Runtime sessions [default: 1].
    #[arg(long, value_name = "N")]
    sessions: Option<NonZeroUsize>,
    /// Requests that may wait for a free session; more are refused at once with
    /// RESOURCE_EXHAUSTED [default: 8].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Vertebra crops per model run [default: 8].
    #[arg(long, value_name = "N")]
    max_batch: Option<NonZeroUsize>,
    /// Bytes of volumes (CT plus label map) one request may send [default: 1 GiB].
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<NonZeroU64>,
    /// Voxels of one CT [default: 268435456, 512 x 512 x 1024].
    #[arg(long, value_name = "N")]
    max_voxels: Option<NonZeroU64>,
    /// Bytes of one message (a chunk), 64 KiB..64 MiB [default: 4 MiB].
    #[arg(long, value_name = "BYTES")]
    max_chunk_bytes: Option<usize>,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// TLS: the server's certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// mTLS: clients must present a certificate issued by one of these CAs (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens that fracmap.v1.Fracmap accepts, one per line (# comments allowed)
    /// [default: no token check].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds that requests in flight may run on after ctrl-c or SIGTERM before the server
    /// stops without them [default: 20].
    #[arg(long, value_name = "SECONDS")]
    shutdown_grace: Option<u64>,
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format.or(file.log_format).unwrap_or(LogFormat::Text) {
        // Colours only for a person at a terminal, not in a log file.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => {
            tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
        }
    }
    let listen = args.listen.or(file.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
    let config = server_config(args, file)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Flags over the file over the defaults.
fn server_config(args: Args, file: FileConfig) -> anyhow::Result<ServerConfig> {
    let defaults = ServiceSettings::default();
    let limit_defaults = Limits::default();
    let workers = args.sessions.or(file.inference.sessions).unwrap_or(defaults.workers);
    let limits = Limits {
        max_request_bytes: args
            .max_request_bytes
            .or(file.limits.max_request_bytes)
            .map_or(limit_defaults.max_request_bytes, NonZeroU64::get),
        max_voxels: args.max_voxels.or(file.limits.max_voxels).map_or(limit_defaults.max_voxels, NonZeroU64::get),
        max_chunk_bytes: args.max_chunk_bytes.or(file.limits.max_chunk_bytes).unwrap_or(limit_defaults.max_chunk_bytes),
    };
    let chunk_range = fracmap_server::config_file::CHUNK_BYTES_RANGE;
    anyhow::ensure!(
        chunk_range.contains(&limits.max_chunk_bytes),
        "--max-chunk-bytes {} is outside {}..={}",
        limits.max_chunk_bytes,
        chunk_range.start(),
        chunk_range.end()
    );
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsSettings { cert, key, client_ca: args.tls_client_ca.or(file.tls.and_then(|t| t.client_ca)) })
        }
        _ => file.tls,
    };
    let bearer_tokens = match &args.token_file {
        Some(path) => read_token_file(path)?,
        None => file.auth.tokens()?,
    };
    // Sessions share the cores: each gets its part unless told otherwise.
    let threads = args.threads.or(file.threads).unwrap_or_else(|| {
        NonZeroUsize::new(default_intra_threads().get() / workers.get()).unwrap_or(NonZeroUsize::MIN)
    });
    Ok(ServerConfig {
        ort_library: args.ort_lib.unwrap_or_else(default_library_path),
        device: args.device.or(file.device).unwrap_or(Device::Auto),
        intra_threads: threads,
        models: args.models.or(file.models),
        shutdown_grace: args
            .shutdown_grace
            .or(file.shutdown_grace_seconds)
            .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
        service: ServiceSettings {
            default_model: args.default_model.or(file.default_model),
            limits,
            max_batch: args.max_batch.or(file.inference.max_batch).unwrap_or(defaults.max_batch),
            workers,
            queue: args.queue.or(file.inference.queue).unwrap_or(defaults.queue),
        },
        metrics: args.metrics_listen.or(file.metrics.listen),
        tls,
        bearer_tokens,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("fracmap-server").chain(flags.iter().copied())).unwrap()
    }

    fn file(text: &str) -> FileConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        FileConfig::load(&path).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let from_file =
            file("models = \"/srv/models\"\nshutdown_grace_seconds = 3\n[inference]\nsessions = 2\nqueue = 5\n");
        let config = server_config(args(&["--queue", "1", "--device", "cpu"]), from_file).unwrap();
        assert_eq!(config.service.queue, 1, "the flag");
        assert_eq!(config.service.workers.get(), 2, "the file");
        assert_eq!(config.models.as_deref(), Some(Path::new("/srv/models")));
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.device, Device::Cpu);
        assert_eq!(config.service.max_batch.get(), 8, "the default");
        assert_eq!(config.service.limits, Limits::default());
        assert!(config.tls.is_none() && config.bearer_tokens.is_empty() && config.metrics.is_none());
    }

    #[test]
    fn sessions_share_the_cores_unless_threads_are_given() {
        let cores = default_intra_threads().get();
        let config = server_config(args(&["--sessions", "2"]), FileConfig::default()).unwrap();
        assert_eq!(config.intra_threads.get(), (cores / 2).max(1));
        let config = server_config(args(&["--sessions", "2", "--threads", "3"]), FileConfig::default()).unwrap();
        assert_eq!(config.intra_threads.get(), 3);
    }

    #[test]
    fn a_chunk_limit_out_of_range_is_an_error_naming_the_flag() {
        let error = server_config(args(&["--max-chunk-bytes", "1000"]), FileConfig::default()).unwrap_err();
        assert!(error.to_string().contains("--max-chunk-bytes 1000 is outside 65536..=67108864"), "{error}");
    }

    #[test]
    fn tls_flags_need_each_other() {
        assert!(Args::try_parse_from(["fracmap-server", "--tls-cert", "a.pem"]).is_err());
        let config =
            server_config(args(&["--tls-cert", "a.pem", "--tls-key", "a.key"]), FileConfig::default()).unwrap();
        assert_eq!(config.tls.unwrap().key, PathBuf::from("a.key"));
    }
}
