//! fracmap-server: fracmap's ONNX models served over gRPC (tonic) with ONNX Runtime (ort),
//! on CPU or, with the `cuda` feature, on an NVIDIA GPU.
//!
//! - [`runtime`], [`repository`], [`models`], [`pipeline`]: `fracmap_inference`'s, re-exported
//!   (ONNX Runtime, the model repository, loaded models, a CT to a probability map and draft
//!   mask); the trainer's `pseudo-label` runs the same pipeline.
//! - [`service`]: the `fracmap.v1.Fracmap` gRPC service.
//! - [`server`]: configuration and [`server::serve`], which runs the service beside the
//!   standard health and reflection services until told to stop.
//! - [`proto`]: the code generated from `proto/fracmap/v1/fracmap.proto`.

pub mod admission;
pub mod config_file;
pub mod metrics;
pub mod security;
pub mod segment_request;
pub mod server;
pub mod service;

pub use fracmap_inference::{models, pipeline, repository, runtime};

/// Messages, client and server generated from package `fracmap.v1`.
pub use fracmap_proto as proto;

pub use runtime::{Device, ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};
pub use server::{ServerConfig, ServerError, serve, shutdown_signal};
