//! fracmap-inference: exported models run on CT volumes through ONNX Runtime (ort), on CPU
//! or, with the `cuda` feature, on an NVIDIA GPU. The server serves it over gRPC; the
//! trainer's `pseudo-label` runs it over a dataset. One pipeline, so both draft alike.
//!
//! - [`runtime`]: loading ONNX Runtime, choosing the execution provider, creating sessions.
//! - [`repository`]: the model repository, `models/<name>/<version>/`, checked against its manifests.
//! - [`models`]: the repository's models loaded into sessions and checked against their manifests.
//! - [`pipeline`]: a CT and its vertebrae to a fracture probability map, draft mask and figures.

pub mod models;
pub mod pipeline;
pub mod repository;
pub mod runtime;

pub use runtime::{Device, ExecutionProvider, OnnxRuntime, RuntimeError, SessionSettings};
