//! fracmap-server: fracmap's ONNX models served over gRPC (tonic) with ONNX Runtime (ort),
//! on CPU or, with the `cuda` feature, on an NVIDIA GPU.
//!
//! - [`runtime`]: loading ONNX Runtime, choosing the execution provider, creating sessions.
//! - [`repository`]: the model repository, `models/<name>/<version>/`, checked against its manifests.
//! - [`models`]: the repository's models loaded into sessions and checked against their manifests.
//! - [`pipeline`]: a CT and its vertebrae to a fracture probability map, draft mask and figures.
//! - [`service`]: the `fracmap.v1.Fracmap` gRPC service.
//! - [`server`]: configuration and [`server::serve`], which runs the service beside the
//!   standard health and reflection services until told to stop.
//! - [`proto`]: the code generated from `proto/fracmap/v1/fracmap.proto`.

pub mod admission;
pub mod config_file;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod repository;
pub mod runtime;
pub mod security;
pub mod segment_request;
pub mod server;
pub mod service;

/// Messages, client and server generated from package `fracmap.v1`.
pub use fracmap_proto as proto;

pub use runtime::{Device, ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};
pub use server::{ServerConfig, ServerError, serve, shutdown_signal};
