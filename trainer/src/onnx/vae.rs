//! The phase-1 VAE as an ONNX inference graph:
//!
//! ```text
//! ct [batch, 1, D, H, W]    crops of HU windowed to [0, 1]
//!   encoder.i (Conv + norm + LeakyRelu) ... Flatten, to_mu (z = mu: no sampling, no logvar)
//!   from_latent + latent_activation, Reshape to the bottleneck, decoder.i ..., head
//! reconstruction [batch, 1, D, H, W]
//! error = |ct - reconstruction| [batch, 1, D, H, W]
//! ```
//!
//! Only the batch axis is dynamic: the Linear layers around the latent fix `D, H, W` to the
//! training crop shape. The graph computes what [`Vae::forward_inference`] and [`Vae::error`]
//! compute, layer for layer, with the weights of the module it is given.

use burn::nn::LeakyRelu;
use fracmap_core::model_manifest::{Dim, ElementType, TensorSpec};
use onnx_protobuf::ModelProto;

use super::graph::model_bytes;
use super::{Attr, EmitOnnx, ExportError, OnnxGraph};
use crate::vae::model::{DownStage, Norm, UpStage, Vae};

/// The input: crops of HU windowed to `[0, 1]`.
pub const INPUT: &str = "ct";
/// The reconstruction with `z = mu`.
pub const RECONSTRUCTION: &str = "reconstruction";
/// `|ct - reconstruction|`.
pub const ERROR: &str = "error";
/// The name of the dynamic batch axis.
pub const BATCH_AXIS: &str = "batch";

impl EmitOnnx for Norm {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        match self {
            Norm::Group(norm) => norm.emit_onnx(graph, scope, input),
            Norm::Instance(norm) => norm.emit_onnx(graph, scope, input),
            Norm::Batch(norm) => norm.emit_onnx(graph, scope, input),
        }
    }
}

impl EmitOnnx for DownStage {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        emit_stage(graph, scope, input, &self.conv, &self.norm, &self.activation)
    }
}

impl EmitOnnx for UpStage {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        emit_stage(graph, scope, input, &self.conv, &self.norm, &self.activation)
    }
}

/// An encoder or decoder stage: convolution, norm, activation, as its `forward` applies them.
fn emit_stage(
    graph: &mut OnnxGraph,
    scope: &str,
    input: &str,
    conv: &impl EmitOnnx,
    norm: &Norm,
    activation: &LeakyRelu,
) -> Result<String, ExportError> {
    let x = conv.emit_onnx(graph, &format!("{scope}.conv"), input)?;
    let x = norm.emit_onnx(graph, &format!("{scope}.norm"), &x)?;
    activation.emit_onnx(graph, &format!("{scope}.activation"), &x)
}

/// The graph's input and outputs: `ct`, then `reconstruction` and `error`, each
/// `[batch, 1, D, H, W]` with the model's crop shape.
pub fn vae_signature(vae: &Vae) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let [d, h, w] = vae.input_shape.map(|n| Dim::Fixed(n as u64));
    let shape = vec![Dim::Dynamic(BATCH_AXIS.to_string()), Dim::Fixed(1), d, h, w];
    let spec = |name: &str, meaning: &str| TensorSpec {
        name: name.to_string(),
        dtype: ElementType::Float32,
        shape: shape.clone(),
        meaning: meaning.to_string(),
    };
    (
        vec![spec(INPUT, "crops [batch, 1, z, y, x] of CT in HU, windowed and scaled to [0, 1] (see preprocessing)")],
        vec![
            spec(
                RECONSTRUCTION,
                "the VAE's reconstruction with z = mu, in the input's [0, 1] units (may leave [0, 1] slightly)",
            ),
            spec(
                ERROR,
                "|ct - reconstruction| per voxel, in the input's [0, 1] units: high where the crop is not normal",
            ),
        ],
    )
}

/// The VAE's inference graph with the weights of `vae` (see the module doc).
pub fn vae_model(vae: &Vae) -> Result<ModelProto, ExportError> {
    let (inputs, outputs) = vae_signature(vae);
    let mut graph = OnnxGraph::new();
    let ct = graph.input(INPUT, &inputs[0].shape);
    let mut x = ct.clone();
    for (i, stage) in vae.encoder.iter().enumerate() {
        x = stage.emit_onnx(&mut graph, &format!("encoder.{i}"), &x)?;
    }
    let flat = graph.node("Flatten", "flatten", &[&x], &[("axis", Attr::Int(1))]);
    let mu = vae.to_mu.emit_onnx(&mut graph, "to_mu", &flat)?;
    let latent = vae.from_latent.emit_onnx(&mut graph, "from_latent", &mu)?;
    let latent = vae.latent_activation.emit_onnx(&mut graph, "latent_activation", &latent)?;
    // 0 keeps the batch axis (Reshape's `allowzero` is off by default).
    let bottleneck: Vec<i64> = std::iter::once(0).chain(vae.bottleneck.iter().map(|&n| n as i64)).collect();
    let bottleneck = graph.constant_i64("bottleneck_shape", &bottleneck);
    x = graph.node("Reshape", "bottleneck", &[&latent, &bottleneck], &[]);
    for (i, stage) in vae.decoder.iter().enumerate() {
        x = stage.emit_onnx(&mut graph, &format!("decoder.{i}"), &x)?;
    }
    let reconstruction = vae.head.emit_onnx(&mut graph, "head", &x)?;
    let difference = graph.node("Sub", "difference", &[&ct, &reconstruction], &[]);
    let error = graph.node("Abs", "abs_difference", &[&difference], &[]);
    graph.output(&reconstruction, RECONSTRUCTION, &outputs[0].shape);
    graph.output(&error, ERROR, &outputs[1].shape);
    let doc = "fracmap phase-1 VAE, inference: ct [batch, 1, z, y, x] (HU windowed to [0, 1]) to its reconstruction \
               (z = mu) and the error |ct - reconstruction|";
    Ok(graph.into_model("fracmap_vae", doc, &[("fracmap.architecture", "vae".to_string())]))
}

/// The bytes of the VAE's `.onnx` file.
pub fn vae_onnx(vae: &Vae) -> Result<Vec<u8>, ExportError> {
    model_bytes(&vae_model(vae)?)
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::vae::config::{ModelConfig, NormKind};

    fn tiny(norm: NormKind) -> Vae {
        let config = ModelConfig {
            input_shape: [16, 8, 12],
            base_channels: 2,
            levels: 2,
            latent_dim: 8,
            norm,
            ..Default::default()
        };
        config.init(&Device::flex(), 0)
    }

    fn op_counts(model: &ModelProto) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for node in &model.graph.node {
            *counts.entry(node.op_type.clone()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn inference_weights_are_initializers_named_by_their_module_path() {
        let vae = tiny(NormKind::Batch);
        let model = vae_model(&vae).unwrap();
        let names: Vec<&str> = model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        for name in ["encoder.0.conv.weight", "encoder.1.norm.running_var", "to_mu.bias", "head.weight"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        // logvar is not part of inference.
        assert!(!names.iter().any(|n| n.starts_with("to_logvar")));
    }

    #[test]
    fn group_norm_is_decomposed_into_instance_normalization() {
        let counts = op_counts(&vae_model(&tiny(NormKind::Group)).unwrap());
        // Two encoder stages, one decoder stage.
        assert_eq!(counts["InstanceNormalization"], 3);
        assert_eq!(counts["Conv"], 2);
        assert_eq!(counts["ConvTranspose"], 2);
        assert!(!counts.contains_key("GroupNormalization"));
    }

    #[test]
    fn signature_has_a_dynamic_batch_and_the_crop_shape() {
        let (inputs, outputs) = vae_signature(&tiny(NormKind::Instance));
        assert_eq!(inputs[0].name, "ct");
        let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["reconstruction", "error"]);
        let expected = [Dim::Dynamic("batch".into()), Dim::Fixed(1), Dim::Fixed(16), Dim::Fixed(8), Dim::Fixed(12)];
        assert_eq!(outputs[1].shape, expected);
    }
}
