//! ONNX export of our models, written by hand from the model structs: Burn 0.22 cannot write
//! ONNX for our layers (its exporter has no Conv3d, ConvTranspose3d, LeakyRelu, GroupNorm or
//! Lstm lowering), so each layer type says how it computes in ONNX operators.
//!
//! - [`graph`]: [`OnnxGraph`], the graph under construction (nodes, weights as initializers,
//!   inputs, outputs) and its encoding to `.onnx` bytes (opset [`graph::OPSET`]);
//! - [`layers`]: [`EmitOnnx`] for Burn's layers (Conv2d, Conv3d, ConvTranspose2d,
//!   ConvTranspose3d, Linear, LeakyRelu, GroupNorm, InstanceNorm, BatchNorm);
//! - [`vae`]: the phase-1 VAE's inference graph, `ct` to `reconstruction` and `error`;
//! - [`unet`]: the phase-2 U-Net's inference graph, `input` (CT and normalised error) to
//!   `probability`;
//! - [`p2p`]: the 2.5D generator's inference graph, `slices` (a sequence of axial slices) to the
//!   centre slice's `probability`.
//!
//! A model emits its layers in the order its `forward` calls them; a new layer type is one
//! `EmitOnnx` impl. Exported graphs are inference graphs: BatchNorm uses its running
//! statistics, the VAE decodes `mu`.

pub mod graph;
pub mod layers;
pub mod p2p;
pub mod unet;
pub mod vae;

pub use graph::{Attr, OnnxGraph};

/// A layer that can write itself into an ONNX graph.
pub trait EmitOnnx {
    /// Appends the nodes computing this layer on the value `input` to `graph`, naming its
    /// nodes and weights under `scope` (the layer's path in the model, e.g.
    /// `encoder.0.conv`), and returns the name of the output value.
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{layer}: cannot export {what}")]
    Unsupported { layer: String, what: String },
    #[error("{name}: cannot read the weights as float32: {message}")]
    TensorData { name: String, message: String },
    #[error("cannot encode the ONNX model")]
    Encode(#[from] protobuf::Error),
}
