//! The `fracmap.v1.Fracmap` gRPC service: request handling only; what it reports is
//! decided at start-up (see [`crate::server`]).

use std::num::NonZeroUsize;
use std::sync::Arc;

use fracmap_core::model_manifest::{Dim, ModelManifest, TensorSpec};
use tonic::{Request, Response, Status};

use crate::models::LoadedModel;
use crate::proto::{self, GetServerInfoRequest, GetServerInfoResponse};
use crate::runtime::{ExecutionProvider, OnnxRuntime};

/// Implements `fracmap.v1.Fracmap`.
#[derive(Debug, Clone)]
pub struct FracmapService {
    server_info: GetServerInfoResponse,
    models: Arc<[LoadedModel]>,
}

impl FracmapService {
    /// A service on `runtime`, whose models run on `provider` with `intra_threads` threads.
    pub fn new(
        runtime: &OnnxRuntime,
        provider: ExecutionProvider,
        intra_threads: NonZeroUsize,
        models: Vec<LoadedModel>,
    ) -> Self {
        let server_info = GetServerInfoResponse {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            onnx_runtime_version: runtime.version().to_string(),
            onnx_runtime_library: runtime.library().display().to_string(),
            execution_provider: proto::ExecutionProvider::from(provider).into(),
            intra_op_threads: u32::try_from(intra_threads.get()).unwrap_or(u32::MAX),
            models: models.iter().map(|model| model_info(&model.manifest)).collect(),
        };
        FracmapService { server_info, models: models.into() }
    }

    /// The loaded model called `name`.
    pub fn model(&self, name: &str) -> Option<&LoadedModel> {
        self.models.iter().find(|model| model.manifest.name == name)
    }
}

/// What GetServerInfo tells of a model: its manifest's identity, tensors and preprocessing.
fn model_info(manifest: &ModelManifest) -> proto::ModelInfo {
    let tensors = |specs: &[TensorSpec]| specs.iter().map(tensor_info).collect();
    let preprocessing = &manifest.preprocessing;
    proto::ModelInfo {
        name: manifest.name.clone(),
        version: manifest.version,
        sha256: manifest.onnx.sha256.clone(),
        architecture: manifest.architecture.clone(),
        inputs: tensors(&manifest.inputs),
        outputs: tensors(&manifest.outputs),
        preprocessing: Some(proto::CropPreprocessing {
            spacing_mm: preprocessing.spacing_mm.to_vec(),
            margin_mm: preprocessing.margin_mm,
            hu_min: f64::from(preprocessing.hu_window.min()),
            hu_max: f64::from(preprocessing.hu_window.max()),
            patch: preprocessing.patch.iter().map(|&n| u32::try_from(n).unwrap_or(u32::MAX)).collect(),
        }),
    }
}

/// A tensor's name and shape, -1 for a dynamic axis.
fn tensor_info(spec: &TensorSpec) -> proto::TensorInfo {
    let length = |dim: &Dim| match dim {
        Dim::Fixed(length) => i64::try_from(*length).unwrap_or(i64::MAX),
        Dim::Dynamic(_) => -1,
    };
    proto::TensorInfo { name: spec.name.clone(), shape: spec.shape.iter().map(length).collect() }
}

impl From<ExecutionProvider> for proto::ExecutionProvider {
    fn from(provider: ExecutionProvider) -> Self {
        match provider {
            ExecutionProvider::Cpu => proto::ExecutionProvider::Cpu,
            ExecutionProvider::Cuda => proto::ExecutionProvider::Cuda,
        }
    }
}

#[tonic::async_trait]
impl proto::fracmap_server::Fracmap for FracmapService {
    async fn get_server_info(
        &self,
        _request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        Ok(Response::new(self.server_info.clone()))
    }
}
