//! fracmap: the PACS-side command-line client of `fracmap-server`.
//! (Segmentation requests and the load tester come with the server's segmentation API.)

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fracmap_proto::fracmap_client::FracmapClient;
use fracmap_proto::{ExecutionProvider, GetServerInfoRequest};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
#[command(name = "fracmap", version, about = "Command-line client of fracmap-server (gRPC)")]
struct Cli {
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051", env = "FRACMAP_SERVER")]
    server: String,
    /// Seconds to wait for the connection.
    #[arg(long, global = true, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the server runs (version, ONNX Runtime, execution provider) and its health.
    Info,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        eprintln!("fracmap: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let channel = connect(&cli.server, Duration::from_secs(cli.connect_timeout)).await?;
    match cli.command {
        Command::Info => {
            let info = FracmapClient::new(channel.clone())
                .get_server_info(GetServerInfoRequest {})
                .await
                .context("GetServerInfo")?
                .into_inner();
            let health = HealthClient::new(channel)
                .check(HealthCheckRequest { service: "fracmap.v1.Fracmap".into() })
                .await
                .context("health check")?
                .into_inner();
            let provider = match info.execution_provider() {
                ExecutionProvider::Cpu => "cpu",
                ExecutionProvider::Cuda => "cuda",
                ExecutionProvider::Unspecified => "unspecified",
            };
            println!("server           {}", cli.server);
            println!("version          {}", info.server_version);
            println!("health           {}", ServingStatus::try_from(health.status).unwrap_or_default().as_str_name());
            println!("onnx runtime     {} ({})", info.onnx_runtime_version, info.onnx_runtime_library);
            println!("provider         {provider}");
            println!("intra-op threads {}", info.intra_op_threads);
        }
    }
    Ok(())
}

async fn connect(server: &str, timeout: Duration) -> Result<Channel> {
    let endpoint =
        Endpoint::from_shared(server.to_string()).with_context(|| format!("--server {server:?} is not a URL"))?;
    endpoint.connect_timeout(timeout).connect().await.with_context(|| format!("cannot connect to {server}"))
}
