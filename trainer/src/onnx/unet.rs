//! The phase-2 U-Net as an ONNX inference graph:
//!
//! ```text
//! input [batch, C, D, H, W]    C = in_channels: the CT crop windowed to [0, 1], the normalised VAE error
//!   encoder.i.convs (two Conv + norm + LeakyRelu) = skip i, encoder.i.down (Conv k2 s2) ...
//!   bottleneck (two conv stages)
//!   decoder.j.up (ConvTranspose k2 s2), Concat [skip, up] on axis 1, decoder.j.convs ...
//!   head (Conv k1): logits, Sigmoid
//! probability [batch, 1, D, H, W]
//! ```
//!
//! Only the batch axis is dynamic: `D, H, W` are the training patch (`UNet::input_shape`),
//! the one patch size the pipeline feeds, so that ONNX's shape inference and the model's
//! manifest state exact shapes. (No layer needs it: the graph is fully convolutional.) The
//! graph computes what [`UNet::probability`] computes, layer for layer, with the weights of
//! the module it is given.

use fracmap_core::model_manifest::{Dim, ElementType, TensorSpec};
use onnx_protobuf::ModelProto;

use super::graph::model_bytes;
use super::vae::BATCH_AXIS;
use super::{Attr, EmitOnnx, ExportError, OnnxGraph};
use crate::weak::model::{ConvStage, DoubleConv, UNet};

/// The input: the CT crop and its normalised VAE error map, stacked on the channel axis.
pub const INPUT: &str = "input";
/// The fracture probability per voxel.
pub const PROBABILITY: &str = "probability";

impl EmitOnnx for ConvStage {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let x = self.conv.emit_onnx(graph, &format!("{scope}.conv"), input)?;
        let x = self.norm.emit_onnx(graph, &format!("{scope}.norm"), &x)?;
        self.activation.emit_onnx(graph, &format!("{scope}.activation"), &x)
    }
}

impl EmitOnnx for DoubleConv {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let x = self.first.emit_onnx(graph, &format!("{scope}.first"), input)?;
        self.second.emit_onnx(graph, &format!("{scope}.second"), &x)
    }
}

/// The graph's input and output: `input [batch, in_channels, D, H, W]` and
/// `probability [batch, 1, D, H, W]`, with the model's training patch.
pub fn unet_signature(unet: &UNet) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let [d, h, w] = unet.input_shape.map(|n| n as u64);
    let shape = |channels: usize| {
        vec![
            Dim::Dynamic(BATCH_AXIS.to_string()),
            Dim::Fixed(channels as u64),
            Dim::Fixed(d),
            Dim::Fixed(h),
            Dim::Fixed(w),
        ]
    };
    let spec = |name: &str, channels, meaning: &str| TensorSpec {
        name: name.to_string(),
        dtype: ElementType::Float32,
        shape: shape(channels),
        meaning: meaning.to_string(),
    };
    (
        vec![spec(
            INPUT,
            unet.in_channels,
            "patches [batch, channel, z, y, x]: channel 0 the CT in HU windowed and scaled to [0, 1] (see \
             preprocessing), channel 1 the VAE's error map of that crop, normalised",
        )],
        vec![spec(PROBABILITY, 1, "fracture probability per voxel, in [0, 1] (sigmoid of the U-Net's logits)")],
    )
}

/// The U-Net's inference graph with the weights of `unet` (see the module doc).
pub fn unet_model(unet: &UNet) -> Result<ModelProto, ExportError> {
    let (inputs, outputs) = unet_signature(unet);
    let mut graph = OnnxGraph::new();
    let mut x = graph.input(INPUT, &inputs[0].shape);
    let mut skips = Vec::with_capacity(unet.encoder.len());
    for (i, level) in unet.encoder.iter().enumerate() {
        let features = level.convs.emit_onnx(&mut graph, &format!("encoder.{i}.convs"), &x)?;
        x = level.down.emit_onnx(&mut graph, &format!("encoder.{i}.down"), &features)?;
        skips.push(features);
    }
    x = unet.bottleneck.emit_onnx(&mut graph, "bottleneck", &x)?;
    for (j, (level, skip)) in unet.decoder.iter().zip(skips.iter().rev()).enumerate() {
        let up = level.up.emit_onnx(&mut graph, &format!("decoder.{j}.up"), &x)?;
        let joined = graph.node("Concat", &format!("decoder.{j}.concat"), &[skip, &up], &[("axis", Attr::Int(1))]);
        x = level.convs.emit_onnx(&mut graph, &format!("decoder.{j}.convs"), &joined)?;
    }
    let logits = unet.head.emit_onnx(&mut graph, "head", &x)?;
    let probability = graph.node("Sigmoid", "sigmoid", &[&logits], &[]);
    graph.output(&probability, PROBABILITY, &outputs[0].shape);
    let doc = format!(
        "fracmap phase-2 U-Net, inference: input [batch, {}, z, y, x] (CT windowed to [0, 1], normalised VAE error) \
         to the fracture probability per voxel",
        unet.in_channels
    );
    Ok(graph.into_model("fracmap_unet", &doc, &[("fracmap.architecture", "unet".to_string())]))
}

/// The bytes of the U-Net's `.onnx` file.
pub fn unet_onnx(unet: &UNet) -> Result<Vec<u8>, ExportError> {
    model_bytes(&unet_model(unet)?)
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::vae::config::NormKind;
    use crate::weak::model::UNetConfig;

    fn tiny(norm: NormKind) -> UNet {
        let config =
            UNetConfig { input_shape: [16, 8, 12], base_channels: 4, norm, norm_groups: 2, ..Default::default() };
        config.init(&Device::flex(), 0)
    }

    #[test]
    fn weights_are_initializers_named_by_their_module_path() {
        let model = unet_model(&tiny(NormKind::Batch)).unwrap();
        let names: Vec<&str> = model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        for name in [
            "encoder.0.convs.first.conv.weight",
            "encoder.1.down.bias",
            "bottleneck.second.norm.running_var",
            "decoder.0.up.weight",
            "decoder.1.convs.first.conv.weight",
            "head.weight",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn decoder_levels_concatenate_the_skip_first_on_the_channel_axis() {
        let model = unet_model(&tiny(NormKind::Group)).unwrap();
        let concats: Vec<_> = model.graph.node.iter().filter(|n| n.op_type == "Concat").collect();
        assert_eq!(concats.len(), 2);
        assert_eq!(concats[0].input, ["encoder.1.convs.second.activation", "decoder.0.up"]);
        assert_eq!(concats[1].input, ["encoder.0.convs.second.activation", "decoder.1.up"]);
        assert!(concats.iter().all(|n| n.attribute[0].name == "axis" && n.attribute[0].i == 1));
        let ops: Vec<&str> = model.graph.node.iter().rev().take(2).map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Identity", "Sigmoid"]);
    }

    #[test]
    fn signature_has_a_dynamic_batch_and_the_patch_shape() {
        let (inputs, outputs) = unet_signature(&tiny(NormKind::Instance));
        let patch = [Dim::Fixed(16), Dim::Fixed(8), Dim::Fixed(12)];
        let batch = Dim::Dynamic("batch".into());
        assert_eq!((inputs[0].name.as_str(), outputs[0].name.as_str()), ("input", "probability"));
        assert_eq!(inputs[0].shape, [[batch.clone(), Dim::Fixed(2)].as_slice(), &patch].concat());
        assert_eq!(outputs[0].shape, [[batch, Dim::Fixed(1)].as_slice(), &patch].concat());
    }
}
