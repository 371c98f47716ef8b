//! fracmap: the PACS-side command-line client of `fracmap-server`.
//! (Segmentation requests and the load tester come with the server's segmentation API.)

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fracmap_proto::fracmap_client::FracmapClient;
use fracmap_proto::{ExecutionProvider, GetServerInfoRequest, ModelInfo, TensorInfo};
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
    /// Print what the server runs (version, ONNX Runtime, execution provider, models) and its health.
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
            if info.models.is_empty() {
                println!("models           none");
            }
            for model in &info.models {
                println!("model            {}", model_line(model));
            }
        }
    }
    Ok(())
}

/// One model on one line: name, version, SHA-256 prefix, tensors (`dyn` for a dynamic
/// axis) and the crop it takes.
fn model_line(model: &ModelInfo) -> String {
    let tensors = |tensors: &[TensorInfo]| {
        let tensor = |t: &TensorInfo| {
            let axes: Vec<String> =
                t.shape.iter().map(|&n| if n < 0 { "dyn".to_string() } else { n.to_string() }).collect();
            format!("{}[{}]", t.name, axes.join(","))
        };
        tensors.iter().map(tensor).collect::<Vec<_>>().join(" ")
    };
    let sha256 = model.sha256.get(..12).unwrap_or(&model.sha256);
    let mut line = format!(
        "{} v{} ({}) sha256 {sha256}  in {}  out {}",
        model.name,
        model.version,
        model.architecture,
        tensors(&model.inputs),
        tensors(&model.outputs)
    );
    if let Some(crop) = &model.preprocessing {
        let by = |values: Vec<String>| values.join("x");
        line.push_str(&format!(
            "  crop {} mm, margin {} mm, HU {}..{}, patch {}",
            by(crop.spacing_mm.iter().map(f64::to_string).collect()),
            crop.margin_mm,
            crop.hu_min,
            crop.hu_max,
            by(crop.patch.iter().map(u32::to_string).collect())
        ));
    }
    line
}

async fn connect(server: &str, timeout: Duration) -> Result<Channel> {
    let endpoint =
        Endpoint::from_shared(server.to_string()).with_context(|| format!("--server {server:?} is not a URL"))?;
    endpoint.connect_timeout(timeout).connect().await.with_context(|| format!("cannot connect to {server}"))
}

#[cfg(test)]
mod tests {
    use fracmap_proto::CropPreprocessing;

    use super::*;

    #[test]
    fn a_model_line_shows_identity_tensors_and_crop() {
        let volume = |name: &str| TensorInfo { name: name.to_string(), shape: vec![-1, 1, 32, 32, 32] };
        let model = ModelInfo {
            name: "vae".to_string(),
            version: 3,
            sha256: "0123456789abcdef".repeat(4),
            architecture: "vae".to_string(),
            inputs: vec![volume("ct")],
            outputs: vec![volume("reconstruction"), volume("error")],
            preprocessing: Some(CropPreprocessing {
                spacing_mm: vec![2.0, 2.0, 2.0],
                margin_mm: 6.0,
                hu_min: -250.0,
                hu_max: 1250.0,
                patch: vec![32, 32, 32],
            }),
        };
        assert_eq!(
            model_line(&model),
            "vae v3 (vae) sha256 0123456789ab  in ct[dyn,1,32,32,32]  \
             out reconstruction[dyn,1,32,32,32] error[dyn,1,32,32,32]  \
             crop 2x2x2 mm, margin 6 mm, HU -250..1250, patch 32x32x32"
        );
    }
}
