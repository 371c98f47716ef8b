//! `fracmap info` and `fracmap models`: what a server runs, one line a model.

use std::time::Duration;

use anyhow::Result;
use fracmap_proto::{ExecutionProvider, GetServerInfoRequest, ListModelsRequest, ModelInfo, TensorInfo};
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::connection::Connection;

/// Prints the server's version, ONNX Runtime, execution provider, models and health.
pub async fn info(connection: &Connection, server: &str, timeout: Duration) -> Result<()> {
    let info =
        connection.fracmap().get_server_info(with_deadline(GetServerInfoRequest {}, timeout)).await?.into_inner();
    let health_check = HealthCheckRequest { service: "fracmap.v1.Fracmap".into() };
    let health = connection.health().check(with_deadline(health_check, timeout)).await?.into_inner();
    println!("server           {server}");
    println!("version          {}", info.server_version);
    println!("health           {}", ServingStatus::try_from(health.status).unwrap_or_default().as_str_name());
    println!("onnx runtime     {} ({})", info.onnx_runtime_version, info.onnx_runtime_library);
    println!("provider         {}", provider_name(info.execution_provider()));
    println!("intra-op threads {}", info.intra_op_threads);
    if info.models.is_empty() {
        println!("models           none");
    }
    for model in &info.models {
        println!("model            {}", model_line(model));
    }
    Ok(())
}

/// Prints the models the server can segment with, one a line.
pub async fn models(connection: &Connection, timeout: Duration) -> Result<()> {
    let models = connection.fracmap().list_models(with_deadline(ListModelsRequest {}, timeout)).await?.into_inner();
    if models.models.is_empty() {
        println!("no models");
    }
    for model in &models.models {
        println!("{}", model_line(model));
    }
    Ok(())
}

/// A request the server abandons after `timeout` (a gRPC deadline).
pub fn with_deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

pub fn provider_name(provider: ExecutionProvider) -> &'static str {
    match provider {
        ExecutionProvider::Cpu => "cpu",
        ExecutionProvider::Cuda => "cuda",
        ExecutionProvider::Unspecified => "unspecified",
    }
}

/// One model on one line: name, version, SHA-256 prefix, tensors (`dyn` for a dynamic
/// axis), the crop it takes and, for a segmentation model, the VAE it reads.
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
    if !model.reads_errors_of.is_empty() {
        line.push_str(&format!("  reads {}, threshold {}", model.reads_errors_of, model.mask_threshold));
    }
    if model.is_default {
        line.push_str("  (default)");
    }
    line
}

#[cfg(test)]
mod tests {
    use fracmap_proto::CropPreprocessing;

    use super::*;

    fn volume(name: &str) -> TensorInfo {
        TensorInfo { name: name.to_string(), shape: vec![-1, 1, 32, 32, 32] }
    }

    #[test]
    fn a_model_line_shows_identity_tensors_and_crop() {
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
            ..ModelInfo::default()
        };
        assert_eq!(
            model_line(&model),
            "vae v3 (vae) sha256 0123456789ab  in ct[dyn,1,32,32,32]  \
             out reconstruction[dyn,1,32,32,32] error[dyn,1,32,32,32]  \
             crop 2x2x2 mm, margin 6 mm, HU -250..1250, patch 32x32x32"
        );
    }

    #[test]
    fn a_segmentation_model_line_names_its_vae_and_whether_it_is_the_default() {
        let model = ModelInfo {
            name: "unet".to_string(),
            version: 2,
            sha256: "ab".to_string(),
            architecture: "unet".to_string(),
            inputs: vec![volume("ct_error")],
            outputs: vec![volume("probability")],
            reads_errors_of: "vae".to_string(),
            mask_threshold: 0.5,
            is_default: true,
            ..ModelInfo::default()
        };
        assert_eq!(
            model_line(&model),
            "unet v2 (unet) sha256 ab  in ct_error[dyn,1,32,32,32]  out probability[dyn,1,32,32,32]  \
             reads vae, threshold 0.5  (default)"
        );
    }
}
