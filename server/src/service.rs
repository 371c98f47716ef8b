//! The `fracmap.v1.Fracmap` gRPC service: request handling only; what it reports is
//! decided at start-up (see [`crate::server`]).

use std::num::NonZeroUsize;

use tonic::{Request, Response, Status};

use crate::proto::{self, GetServerInfoRequest, GetServerInfoResponse};
use crate::runtime::{ExecutionProvider, OnnxRuntime};

/// Implements `fracmap.v1.Fracmap`.
#[derive(Debug, Clone)]
pub struct FracmapService {
    server_info: GetServerInfoResponse,
}

impl FracmapService {
    /// A service on `runtime`, whose models run on `provider` with `intra_threads` threads.
    pub fn new(runtime: &OnnxRuntime, provider: ExecutionProvider, intra_threads: NonZeroUsize) -> Self {
        let server_info = GetServerInfoResponse {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            onnx_runtime_version: runtime.version().to_string(),
            onnx_runtime_library: runtime.library().display().to_string(),
            execution_provider: proto::ExecutionProvider::from(provider).into(),
            intra_op_threads: u32::try_from(intra_threads.get()).unwrap_or(u32::MAX),
        };
        FracmapService { server_info }
    }
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
