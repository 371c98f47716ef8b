//! [`EmitOnnx`] for Burn's layers: each becomes the ONNX operators that compute what its
//! `forward` computes, its weights initializers in Burn's own layout where ONNX shares it.
//!
//! | Burn | ONNX |
//! |---|---|
//! | Conv2d, Conv3d (weight `[out, in/groups, k...]`) | Conv (same layout) |
//! | ConvTranspose2d, ConvTranspose3d (weight `[in, out/groups, k...]`) | ConvTranspose (same layout) |
//! | Linear (`y = x W + b`, `W [in, out]`) | MatMul + Add (any rank, like Burn's) |
//! | LeakyRelu | LeakyRelu |
//! | GroupNorm | Reshape `[N, G, -1]`, InstanceNormalization, affine per channel, Reshape back |
//! | InstanceNorm | InstanceNormalization |
//! | BatchNorm | BatchNormalization with the running statistics (inference) |
//!
//! GroupNorm is decomposed rather than written as GroupNormalization: that operator's scale
//! and bias are per group in opset 18 and per channel from opset 21, and runtimes disagree
//! on which they implement; InstanceNormalization means the same everywhere.

use burn::nn::conv::{Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d};
use burn::nn::{BatchNorm, GroupNorm, InstanceNorm, LeakyRelu, Linear, PaddingConfig2d, PaddingConfig3d};
use burn::prelude::*;

use super::{Attr, EmitOnnx, ExportError, OnnxGraph};

fn ints(values: &[usize]) -> Attr {
    Attr::Ints(values.iter().map(|&v| v as i64).collect())
}

/// ONNX's `pads` for the same padding at both ends of every axis: every axis's begin, then
/// every axis's end.
fn symmetric_pads(padding: &[usize]) -> Vec<usize> {
    [padding, padding].concat()
}

/// The weight and, when the layer has one, the bias, as initializers.
fn weight_and_bias<const D: usize>(
    graph: &mut OnnxGraph,
    scope: &str,
    weight: Tensor<D>,
    bias: Option<Tensor<1>>,
) -> Result<Vec<String>, ExportError> {
    let mut names = vec![graph.weight(&format!("{scope}.weight"), weight)?];
    if let Some(bias) = bias {
        names.push(graph.weight(&format!("{scope}.bias"), bias)?);
    }
    Ok(names)
}

impl EmitOnnx for Conv3d {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let padding = match self.padding {
            PaddingConfig3d::Valid => vec![0; 3],
            PaddingConfig3d::Explicit(d, h, w) => vec![d, h, w],
            PaddingConfig3d::Same => same_padding(scope, &self.kernel_size, &self.stride)?,
        };
        let weights = weight_and_bias(graph, scope, self.weight.val(), self.bias.as_ref().map(|b| b.val()))?;
        let attributes = conv_attributes(&self.kernel_size, &self.stride, &self.dilation, self.groups);
        Ok(conv_node(graph, "Conv", scope, input, &weights, attributes, &symmetric_pads(&padding)))
    }
}

impl EmitOnnx for Conv2d {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let weights = conv2d_weights(self, graph, scope)?;
        conv2d_node(self, graph, scope, input, &weights)
    }
}

/// A Conv2d's weight and bias as initializers named under `scope`, for [`conv2d_node`].
pub fn conv2d_weights(conv: &Conv2d, graph: &mut OnnxGraph, scope: &str) -> Result<Vec<String>, ExportError> {
    weight_and_bias(graph, scope, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()))
}

/// A Conv2d applied to `input` with `weights` already in the graph: a layer applied several
/// times (a recurrent cell unrolled over its steps) writes its weights once.
pub fn conv2d_node(
    conv: &Conv2d,
    graph: &mut OnnxGraph,
    name: &str,
    input: &str,
    weights: &[String],
) -> Result<String, ExportError> {
    let pads = match conv.padding {
        PaddingConfig2d::Valid => vec![0; 4],
        // Burn's order (top, left, bottom, right) is ONNX's (y begin, x begin, y end, x end).
        PaddingConfig2d::Explicit(top, left, bottom, right) => vec![top, left, bottom, right],
        PaddingConfig2d::Same => symmetric_pads(&same_padding(name, &conv.kernel_size, &conv.stride)?),
    };
    let attributes = conv_attributes(&conv.kernel_size, &conv.stride, &conv.dilation, conv.groups);
    Ok(conv_node(graph, "Conv", name, input, weights, attributes, &pads))
}

/// Burn's `Same` padding depends on the input's size unless the stride is 1; then it pads
/// (k - 1) / 2 per side (the dilation ignored) and odd kernels are symmetric.
fn same_padding(scope: &str, kernel: &[usize], stride: &[usize]) -> Result<Vec<usize>, ExportError> {
    if stride.iter().all(|&s| s == 1) && kernel.iter().all(|k| k % 2 == 1) {
        return Ok(kernel.iter().map(|k| (k - 1) / 2).collect());
    }
    Err(ExportError::Unsupported {
        layer: scope.to_string(),
        what: format!("'Same' padding with stride {stride:?} and kernel {kernel:?} (only stride 1, odd kernels)"),
    })
}

/// The attributes Conv and ConvTranspose share, but `pads`.
fn conv_attributes(kernel: &[usize], stride: &[usize], dilation: &[usize], groups: usize) -> Vec<(&'static str, Attr)> {
    vec![
        ("kernel_shape", ints(kernel)),
        ("strides", ints(stride)),
        ("dilations", ints(dilation)),
        ("group", Attr::Int(groups as i64)),
    ]
}

/// A Conv or ConvTranspose node reading `input` and `weights`, with `attributes` and ONNX's
/// `pads`.
fn conv_node(
    graph: &mut OnnxGraph,
    op: &str,
    name: &str,
    input: &str,
    weights: &[String],
    mut attributes: Vec<(&'static str, Attr)>,
    pads: &[usize],
) -> String {
    attributes.push(("pads", ints(pads)));
    let inputs: Vec<&str> = std::iter::once(input).chain(weights.iter().map(String::as_str)).collect();
    graph.node(op, name, &inputs, &attributes)
}

impl EmitOnnx for ConvTranspose3d {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let weights = weight_and_bias(graph, scope, self.weight.val(), self.bias.as_ref().map(|b| b.val()))?;
        let mut attributes = conv_attributes(&self.kernel_size, &self.stride, &self.dilation, self.groups);
        attributes.push(("output_padding", ints(&self.padding_out)));
        Ok(conv_node(graph, "ConvTranspose", scope, input, &weights, attributes, &symmetric_pads(&self.padding)))
    }
}

impl EmitOnnx for ConvTranspose2d {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        // As ConvTranspose3d: Burn and ONNX share the output size and the weight layout.
        let weights = weight_and_bias(graph, scope, self.weight.val(), self.bias.as_ref().map(|b| b.val()))?;
        let mut attributes = conv_attributes(&self.kernel_size, &self.stride, &self.dilation, self.groups);
        attributes.push(("output_padding", ints(&self.padding_out)));
        Ok(conv_node(graph, "ConvTranspose", scope, input, &weights, attributes, &symmetric_pads(&self.padding)))
    }
}

impl EmitOnnx for Linear {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let weight = graph.weight(&format!("{scope}.weight"), self.weight.val())?;
        let Some(bias) = &self.bias else {
            return Ok(graph.node("MatMul", scope, &[input, &weight], &[]));
        };
        let product = graph.node("MatMul", &format!("{scope}.matmul"), &[input, &weight], &[]);
        let bias = graph.weight(&format!("{scope}.bias"), bias.val())?;
        Ok(graph.node("Add", scope, &[&product, &bias], &[]))
    }
}

impl EmitOnnx for LeakyRelu {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        Ok(graph.node("LeakyRelu", scope, &[input], &[("alpha", Attr::Float(self.negative_slope as f32))]))
    }
}

/// Per-channel scale and shift of InstanceNormalization: the layer's own when affine, else
/// ones and zeros (ONNX requires both inputs).
fn instance_affine(
    graph: &mut OnnxGraph,
    scope: &str,
    channels: usize,
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
) -> Result<[String; 2], ExportError> {
    Ok(match (gamma, beta) {
        (Some(gamma), Some(beta)) => {
            [graph.weight(&format!("{scope}.gamma"), gamma)?, graph.weight(&format!("{scope}.beta"), beta)?]
        }
        _ => [
            graph.constant_f32(&format!("{scope}.unit_scale"), &[channels], &vec![1.0; channels]),
            graph.constant_f32(&format!("{scope}.zero_shift"), &[channels], &vec![0.0; channels]),
        ],
    })
}

impl EmitOnnx for InstanceNorm {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let val = |p: &Option<burn::module::Param<Tensor<1>>>| p.as_ref().map(|p| p.val());
        let [scale, shift] = instance_affine(graph, scope, self.num_channels, val(&self.gamma), val(&self.beta))?;
        Ok(graph.node(
            "InstanceNormalization",
            scope,
            &[input, &scale, &shift],
            &[("epsilon", Attr::Float(self.epsilon as f32))],
        ))
    }
}

impl EmitOnnx for GroupNorm {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        // Burn: statistics over `[N, G, C / G * spatial]`, then the affine per channel. Only
        // the batch axis and the channel count are used, so any rank and any dynamic axis work.
        let (groups, channels) = (self.num_groups, self.num_channels);
        let input_shape = graph.node("Shape", &format!("{scope}.input_shape"), &[input], &[]);
        let grouped_shape = graph.constant_i64(&format!("{scope}.grouped_shape"), &[0, groups as i64, -1]);
        let grouped = graph.node("Reshape", &format!("{scope}.grouped"), &[input, &grouped_shape], &[]);
        let [unit, zero] = instance_affine(graph, &format!("{scope}.groups"), groups, None, None)?;
        let normalized = graph.node(
            "InstanceNormalization",
            &format!("{scope}.normalized"),
            &[&grouped, &unit, &zero],
            &[("epsilon", Attr::Float(self.epsilon as f32))],
        );
        let (Some(gamma), Some(beta)) = (&self.gamma, &self.beta) else {
            return Ok(graph.node("Reshape", scope, &[&normalized, &input_shape], &[]));
        };
        let channel_shape = graph.constant_i64(&format!("{scope}.channel_shape"), &[0, channels as i64, -1]);
        let by_channel = graph.node("Reshape", &format!("{scope}.by_channel"), &[&normalized, &channel_shape], &[]);
        // `[C, 1]` broadcasts over `[N, C, L]`.
        let gamma = graph.weight(&format!("{scope}.gamma"), gamma.val().reshape([channels, 1]))?;
        let beta = graph.weight(&format!("{scope}.beta"), beta.val().reshape([channels, 1]))?;
        let scaled = graph.node("Mul", &format!("{scope}.scaled"), &[&by_channel, &gamma], &[]);
        let shifted = graph.node("Add", &format!("{scope}.shifted"), &[&scaled, &beta], &[]);
        Ok(graph.node("Reshape", scope, &[&shifted, &input_shape], &[]))
    }
}

impl EmitOnnx for BatchNorm {
    fn emit_onnx(&self, graph: &mut OnnxGraph, scope: &str, input: &str) -> Result<String, ExportError> {
        let gamma = graph.weight(&format!("{scope}.gamma"), self.gamma.val())?;
        let beta = graph.weight(&format!("{scope}.beta"), self.beta.val())?;
        let mean = graph.weight(&format!("{scope}.running_mean"), self.running_mean.value())?;
        let var = graph.weight(&format!("{scope}.running_var"), self.running_var.value())?;
        Ok(graph.node(
            "BatchNormalization",
            scope,
            &[input, &gamma, &beta, &mean, &var],
            &[("epsilon", Attr::Float(self.epsilon as f32))],
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::{Conv2dConfig, Conv3dConfig, ConvTranspose2dConfig, ConvTranspose3dConfig};
    use onnx_protobuf::NodeProto;

    use super::*;

    fn emitted(layer: &impl EmitOnnx) -> Vec<NodeProto> {
        let mut graph = OnnxGraph::new();
        let x = graph.input("x", &[]);
        layer.emit_onnx(&mut graph, "layer", &x).unwrap();
        graph.into_model("g", "", &[]).graph.node.clone()
    }

    fn ints_of(node: &NodeProto, name: &str) -> Vec<i64> {
        node.attribute.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("no {name}")).ints.clone()
    }

    #[test]
    fn conv_transpose_writes_padding_and_output_padding() {
        let device = Device::flex();
        let layer = ConvTranspose3dConfig::new([2, 4], [3, 4, 5])
            .with_stride([2, 2, 1])
            .with_padding([1, 0, 2])
            .with_padding_out([1, 0, 0])
            .init(&device);
        let nodes = emitted(&layer);
        assert_eq!(nodes[0].op_type, "ConvTranspose");
        assert_eq!(nodes[0].input, ["x", "layer.weight", "layer.bias"]);
        assert_eq!(ints_of(&nodes[0], "pads"), [1, 0, 2, 1, 0, 2]);
        assert_eq!(ints_of(&nodes[0], "output_padding"), [1, 0, 0]);
        assert_eq!(ints_of(&nodes[0], "kernel_shape"), [3, 4, 5]);
    }

    #[test]
    fn same_padding_at_stride_one_is_half_the_kernel() {
        let layer = Conv3dConfig::new([1, 1], [3, 5, 1]).with_padding(PaddingConfig3d::Same).init(&Device::flex());
        assert_eq!(ints_of(&emitted(&layer)[0], "pads"), [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn same_padding_at_stride_two_is_refused_naming_the_layer() {
        let layer = Conv3dConfig::new([1, 1], [3; 3])
            .with_stride([2; 3])
            .with_padding(PaddingConfig3d::Same)
            .init(&Device::flex());
        let mut graph = OnnxGraph::new();
        let err = layer.emit_onnx(&mut graph, "encoder.0.conv", "x").unwrap_err();
        assert!(err.to_string().starts_with("encoder.0.conv: cannot export 'Same' padding"), "{err}");
    }

    #[test]
    fn conv2d_writes_burn_s_asymmetric_padding_in_onnx_order() {
        // Burn's (top, left, bottom, right) is ONNX's (y begin, x begin, y end, x end).
        let layer = Conv2dConfig::new([2, 3], [3, 5])
            .with_stride([2, 1])
            .with_padding(PaddingConfig2d::Explicit(1, 2, 0, 3))
            .with_bias(false)
            .init(&Device::flex());
        let nodes = emitted(&layer);
        assert_eq!(nodes[0].op_type, "Conv");
        assert_eq!(nodes[0].input, ["x", "layer.weight"]);
        assert_eq!(ints_of(&nodes[0], "pads"), [1, 2, 0, 3]);
        assert_eq!(ints_of(&nodes[0], "kernel_shape"), [3, 5]);
        assert_eq!(ints_of(&nodes[0], "strides"), [2, 1]);
    }

    #[test]
    fn conv_transpose2d_writes_padding_and_output_padding() {
        let layer = ConvTranspose2dConfig::new([4, 2], [2, 3])
            .with_stride([2, 2])
            .with_padding([0, 1])
            .with_padding_out([1, 0])
            .init(&Device::flex());
        let nodes = emitted(&layer);
        assert_eq!(nodes[0].op_type, "ConvTranspose");
        assert_eq!(nodes[0].input, ["x", "layer.weight", "layer.bias"]);
        assert_eq!(ints_of(&nodes[0], "pads"), [0, 1, 0, 1]);
        assert_eq!(ints_of(&nodes[0], "output_padding"), [1, 0]);
    }

    #[test]
    fn a_shared_conv2d_writes_its_weights_once() {
        let layer = Conv2dConfig::new([1, 1], [1, 1]).init(&Device::flex());
        let mut graph = OnnxGraph::new();
        let x = graph.input("x", &[]);
        let weights = conv2d_weights(&layer, &mut graph, "cell").unwrap();
        let first = conv2d_node(&layer, &mut graph, "step0", &x, &weights).unwrap();
        conv2d_node(&layer, &mut graph, "step1", &first, &weights).unwrap();
        let model = graph.into_model("g", "", &[]);
        assert_eq!(model.graph.initializer.len(), 2);
        assert!(model.graph.node.iter().all(|n| n.input[1..] == ["cell.weight", "cell.bias"]));
    }
}
