//! fracmap-server: serves fracmap's ONNX models over gRPC. Parses arguments, sets up
//! logging, binds the socket and hands over to [`fracmap_server::serve`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fracmap_server::runtime::{Device, default_library_path};
use fracmap_server::server::{DEFAULT_SHUTDOWN_GRACE, default_intra_threads};
use fracmap_server::{ServerConfig, serve, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// Serves fracmap's vertebral fracture models over gRPC (package fracmap.v1), with ONNX
/// Runtime on CPU or CUDA. Also serves grpc.health.v1.Health and gRPC reflection, so
/// `grpcurl -plaintext ADDR list` shows the API. Stops cleanly on ctrl-c or SIGTERM.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more or less.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where the models run: auto = CUDA when this build has it and a GPU is usable, else CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// ONNX Runtime intra-op threads per model session [default: the number of cores].
    #[arg(long, value_name = "N", default_value_t = default_intra_threads(), hide_default_value = true)]
    threads: NonZeroUsize,
    /// The ONNX Runtime shared library [default: $ORT_DYLIB_PATH, else .deps/lib/libonnxruntime.so,
    /// which `bash scripts/setup.sh` creates].
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// The model repository: DIR/<name>/<version>/ with model.onnx and manifest.json, as
    /// `fracmap-train export` writes it. The highest valid version of each name is loaded at
    /// start-up; one that does not load or does not match its manifest stops the server
    /// [default: none, no models].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Seconds that requests in flight may run on after ctrl-c or SIGTERM before the server
    /// stops without them.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_SHUTDOWN_GRACE.as_secs())]
    shutdown_grace: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = ServerConfig {
        ort_library: args.ort_lib.unwrap_or_else(default_library_path),
        device: args.device,
        intra_threads: args.threads,
        models: args.models,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve(config, listener, shutdown_signal()).await?;
    Ok(())
}
