//! The 2.5D generator (Attention U-Net + ConvLSTM) as an ONNX inference graph:
//!
//! ```text
//! slices [batch, context, H, W]    axial slices t-2 .. t+2 (context 5), CT windowed to [0, 1]
//!   Slice to the encoded slices (all when bidirectional, up to the centre otherwise)
//!   Reshape [-1, 1, H, W]: the slices folded into the batch
//!   encoder.i.convs (two Conv + norm + LeakyRelu) ... encoder.i.down (Conv k2 s2) ...
//!     skip i: Reshape [batch, steps * c, H, W], Slice the centre's c channels
//!   bottleneck (two conv stages), Reshape [batch, steps * C, h, w], Slice per step
//!   forward_lstm unrolled over steps 0 .. centre: Conv (shared weights) of Concat [x_t, h],
//!     Slice into i, f, g, o; Sigmoid, Tanh, Mul, Add
//!   backward_lstm unrolled over steps last .. centre, merge (Conv 1x1) of Concat [h_fwd, h_bwd]
//!   decoder.j.gate (Conv, Add, Relu, Conv, Sigmoid, Reshape + Expand + Reshape: nearest x2, Mul),
//!     decoder.j.up (ConvTranspose k2 s2), Concat [gated skip, up], decoder.j.convs ...
//!   head (Conv 1x1): logits, Sigmoid
//! probability [batch, 1, H, W]    the centre slice's mask
//! ```
//!
//! Only the batch axis is dynamic; `context` and `H, W` are the generator's (the reshapes
//! that fold the sequence into the batch and back fix them). The `batch` of an unfolding
//! reshape is read from the input's shape rather than written -1, so that ONNX's shape
//! inference carries the named axis through to the output. The graph computes what
//! [`Generator::probability`] computes, layer for layer, with the weights of the module it
//! is given; an LSTM's gate weights are written once and read by every step.

use fracmap_core::model_manifest::{Dim, ElementType, TensorSpec};
use onnx_protobuf::ModelProto;

use super::graph::model_bytes;
use super::layers::{conv2d_node, conv2d_weights};
use super::vae::BATCH_AXIS;
use super::{Attr, EmitOnnx, ExportError, OnnxGraph};
use crate::p2p::model::{AttentionGate, ConvLstmCell, ConvStage, DoubleConv, Generator};

/// The input: a sequence of axial slices, the target slice in the middle.
pub const INPUT: &str = "slices";
/// The mask probability of the centre slice per pixel.
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

/// The graph's input and output: `slices [batch, context, H, W]` and
/// `probability [batch, 1, H, W]`, with the generator's slice shape.
pub fn p2p_signature(generator: &Generator) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let [h, w] = generator.slice_shape.map(|n| n as u64);
    let spec = |name: &str, channels: usize, meaning: &str| TensorSpec {
        name: name.to_string(),
        dtype: ElementType::Float32,
        shape: vec![Dim::Dynamic(BATCH_AXIS.to_string()), Dim::Fixed(channels as u64), Dim::Fixed(h), Dim::Fixed(w)],
        meaning: meaning.to_string(),
    };
    (
        vec![spec(
            INPUT,
            generator.context,
            &format!(
                "sequences [batch, slice, y, x] of {} consecutive axial slices (z ascending) of CT in HU, windowed and \
                 scaled to [0, 1] (see preprocessing); the target is the centre slice, index {}",
                generator.context,
                generator.centre()
            ),
        )],
        vec![spec(
            PROBABILITY,
            1,
            "fracture probability per pixel of the centre slice, in [0, 1] (sigmoid of the logits)",
        )],
    )
}

/// The generator's inference graph with the weights of `generator` (see the module doc).
pub fn p2p_model(generator: &Generator) -> Result<ModelProto, ExportError> {
    let (inputs, outputs) = p2p_signature(generator);
    let mut graph = OnnxGraph::new();
    let slices = graph.input(INPUT, &inputs[0].shape);
    let [h, w] = generator.slice_shape;
    let (steps, centre) = (generator.encoded_slices(), generator.centre());
    let input_shape = graph.node("Shape", "input_shape", &[&slices], &[]);
    let batch = slice_axis(&mut graph, "batch_size", &input_shape, 0, 0, 1);
    let encoded =
        if steps < generator.context { slice_axis(&mut graph, "encoded", &slices, 1, 0, steps) } else { slices };
    let fold_shape = graph.constant_i64("fold_shape", &[-1, 1, h as i64, w as i64]);
    let mut x = graph.node("Reshape", "fold", &[&encoded, &fold_shape], &[]);

    let mut skips = Vec::with_capacity(generator.encoder.len());
    let mut size = [h, w];
    for (i, level) in generator.encoder.iter().enumerate() {
        let scope = format!("encoder.{i}");
        let features = level.convs.emit_onnx(&mut graph, &format!("{scope}.convs"), &x)?;
        x = level.down.emit_onnx(&mut graph, &format!("{scope}.down"), &features)?;
        let channels = level.down.weight.val().dims()[1];
        let unfolded = unfold(&mut graph, &format!("{scope}.unfold"), &features, &batch, steps * channels, size);
        skips.push(slice_axis(&mut graph, &format!("{scope}.skip"), &unfolded, 1, centre * channels, channels));
        size = size.map(|n| n / 2);
    }
    let bottleneck = generator.bottleneck.emit_onnx(&mut graph, "bottleneck", &x)?;
    let channels = generator.forward_lstm.hidden_channels;
    let unfolded = unfold(&mut graph, "bottleneck.unfold", &bottleneck, &batch, steps * channels, size);
    let sequence: Vec<String> = (0..steps)
        .map(|t| slice_axis(&mut graph, &format!("bottleneck.step{t}"), &unfolded, 1, t * channels, channels))
        .collect();

    let h_fwd = emit_lstm(&mut graph, &generator.forward_lstm, "forward_lstm", &sequence[..=centre])?;
    x = match &generator.backward_lstm {
        Some(backward) => {
            let reversed: Vec<String> = sequence[centre..].iter().rev().cloned().collect();
            let h_bwd = emit_lstm(&mut graph, &backward.cell, "backward_lstm.cell", &reversed)?;
            let joined = graph.node("Concat", "backward_lstm.concat", &[&h_fwd, &h_bwd], &[("axis", Attr::Int(1))]);
            backward.merge.emit_onnx(&mut graph, "backward_lstm.merge", &joined)?
        }
        None => h_fwd,
    };

    for (j, (level, skip)) in generator.decoder.iter().zip(skips.iter().rev()).enumerate() {
        let scope = format!("decoder.{j}");
        size = size.map(|n| n * 2);
        let gated = emit_attention_gate(&mut graph, &level.gate, &format!("{scope}.gate"), skip, &x, size)?;
        let up = level.up.emit_onnx(&mut graph, &format!("{scope}.up"), &x)?;
        let joined = graph.node("Concat", &format!("{scope}.concat"), &[&gated, &up], &[("axis", Attr::Int(1))]);
        x = level.convs.emit_onnx(&mut graph, &format!("{scope}.convs"), &joined)?;
    }
    let logits = generator.head.emit_onnx(&mut graph, "head", &x)?;
    let probability = graph.node("Sigmoid", "sigmoid", &[&logits], &[]);
    graph.output(&probability, PROBABILITY, &outputs[0].shape);
    let doc = format!(
        "fracmap 2.5D generator (attention U-Net + ConvLSTM, {}), inference: slices [batch, {}, y, x] (CT windowed to \
         [0, 1]) to the fracture probability per pixel of the centre slice",
        if generator.backward_lstm.is_some() { "bidirectional" } else { "forward only" },
        generator.context
    );
    Ok(graph.into_model("fracmap_p2p", &doc, &[("fracmap.architecture", "p2p_lstm".to_string())]))
}

/// The bytes of the generator's `.onnx` file.
pub fn p2p_onnx(generator: &Generator) -> Result<Vec<u8>, ExportError> {
    model_bytes(&p2p_model(generator)?)
}

/// `input[.., start .. start + length, ..]` on `axis`.
fn slice_axis(graph: &mut OnnxGraph, name: &str, input: &str, axis: i64, start: usize, length: usize) -> String {
    let starts = graph.constant_i64(&format!("{name}.starts"), &[start as i64]);
    let ends = graph.constant_i64(&format!("{name}.ends"), &[(start + length) as i64]);
    let axes = graph.constant_i64(&format!("{name}.axes"), &[axis]);
    graph.node("Slice", name, &[input, &starts, &ends, &axes], &[])
}

/// A sequence folded into the batch, `[batch * steps, C, h, w]`, to `[batch, channels, h, w]`
/// with `channels = steps * C`: step `t` is channels `t * C .. (t + 1) * C`.
fn unfold(graph: &mut OnnxGraph, name: &str, folded: &str, batch: &str, channels: usize, size: [usize; 2]) -> String {
    let rest = graph.constant_i64(&format!("{name}.rest"), &[channels as i64, size[0] as i64, size[1] as i64]);
    let shape = graph.node("Concat", &format!("{name}.shape"), &[batch, &rest], &[("axis", Attr::Int(0))]);
    graph.node("Reshape", name, &[folded, &shape], &[])
}

/// `cell` unrolled over `sequence` from a zero state; returns the last hidden state. The
/// gate convolution's weights are written once under `{scope}.gates`.
fn emit_lstm(
    graph: &mut OnnxGraph,
    cell: &ConvLstmCell,
    scope: &str,
    sequence: &[String],
) -> Result<String, ExportError> {
    let weights = conv2d_weights(&cell.gates, graph, &format!("{scope}.gates"))?;
    let channels = cell.hidden_channels;
    let mut state: Option<(String, String)> = None;
    for (t, x) in sequence.iter().enumerate() {
        let step = format!("{scope}.step{t}");
        let h = match &state {
            Some((h, _)) => h.clone(),
            // The cells have as many hidden as input channels: zeros of the input's shape.
            None => {
                let shape = graph.node("Shape", &format!("{step}.zero_shape"), &[x], &[]);
                graph.node("ConstantOfShape", &format!("{step}.zero_h"), &[&shape], &[])
            }
        };
        let joined = graph.node("Concat", &format!("{step}.concat"), &[x, &h], &[("axis", Attr::Int(1))]);
        let gates = conv2d_node(&cell.gates, graph, &format!("{step}.gates"), &joined, &weights)?;
        let mut gate = |k: usize, op: &str, label: &str| {
            let raw = slice_axis(graph, &format!("{step}.{label}_raw"), &gates, 1, k * channels, channels);
            graph.node(op, &format!("{step}.{label}"), &[&raw], &[])
        };
        let (input_gate, cell_input, output_gate) =
            (gate(0, "Sigmoid", "i"), gate(2, "Tanh", "g"), gate(3, "Sigmoid", "o"));
        // With no history the forget term `f * 0` is skipped, as `ConvLstmCell::step` does.
        let forget = state.is_some().then(|| gate(1, "Sigmoid", "f"));
        let fresh = graph.node("Mul", &format!("{step}.fresh"), &[&input_gate, &cell_input], &[]);
        let c = match (&state, forget) {
            (Some((_, c_prev)), Some(forget)) => {
                let kept = graph.node("Mul", &format!("{step}.kept"), &[&forget, c_prev], &[]);
                graph.node("Add", &format!("{step}.c"), &[&kept, &fresh], &[])
            }
            _ => fresh,
        };
        let squashed = graph.node("Tanh", &format!("{step}.tanh_c"), &[&c], &[]);
        let h = graph.node("Mul", &format!("{step}.h"), &[&output_gate, &squashed], &[]);
        state = Some((h, c));
    }
    Ok(state.expect("a sequence of at least one step").0)
}

/// `x * alpha` (see `AttentionGate::forward`) for the skip `x` of `size` `[H, W]` and the
/// gating signal `g` at half that size.
fn emit_attention_gate(
    graph: &mut OnnxGraph,
    gate: &AttentionGate,
    scope: &str,
    x: &str,
    g: &str,
    size: [usize; 2],
) -> Result<String, ExportError> {
    let theta = gate.theta.emit_onnx(graph, &format!("{scope}.theta"), x)?;
    let phi = gate.phi.emit_onnx(graph, &format!("{scope}.phi"), g)?;
    let sum = graph.node("Add", &format!("{scope}.sum"), &[&theta, &phi], &[]);
    let joint = graph.node("Relu", &format!("{scope}.relu"), &[&sum], &[]);
    let psi = gate.psi.emit_onnx(graph, &format!("{scope}.psi"), &joint)?;
    let alpha = graph.node("Sigmoid", &format!("{scope}.alpha"), &[&psi], &[]);
    let alpha = upsample_nearest_x2(graph, &format!("{scope}.alpha_up"), &alpha, size);
    Ok(graph.node("Mul", &format!("{scope}.gated"), &[x, &alpha], &[]))
}

/// Nearest x2 of a one-channel map `[batch, 1, H/2, W/2]` to `[batch, 1, H, W]`, by the
/// reshape, broadcast and reshape of the Burn model (Reshape's 0 keeps the batch axis).
fn upsample_nearest_x2(graph: &mut OnnxGraph, name: &str, input: &str, size: [usize; 2]) -> String {
    let [h, w] = size.map(|n| n as i64);
    let split = graph.constant_i64(&format!("{name}.split_shape"), &[0, 1, h / 2, 1, w / 2, 1]);
    let split = graph.node("Reshape", &format!("{name}.split"), &[input, &split], &[]);
    let repeat = graph.constant_i64(&format!("{name}.repeat_shape"), &[1, 1, h / 2, 2, w / 2, 2]);
    let repeated = graph.node("Expand", &format!("{name}.repeat"), &[&split, &repeat], &[]);
    let shape = graph.constant_i64(&format!("{name}.shape"), &[0, 1, h, w]);
    graph.node("Reshape", name, &[&repeated, &shape], &[])
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use onnx_protobuf::NodeProto;

    use super::*;
    use crate::p2p::model::GeneratorConfig;

    fn tiny(bidirectional: bool) -> Generator {
        let config = GeneratorConfig {
            slice_shape: [8, 12],
            context: 5,
            base_channels: 2,
            norm_groups: 2,
            bidirectional,
            ..Default::default()
        };
        config.init(&Device::flex(), 0)
    }

    fn nodes<'a>(model: &'a ModelProto, op: &str) -> Vec<&'a NodeProto> {
        model.graph.node.iter().filter(|n| n.op_type == op).collect()
    }

    #[test]
    fn weights_are_initializers_named_by_their_module_path() {
        let model = p2p_model(&tiny(true)).unwrap();
        let names: Vec<&str> = model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        for name in [
            "encoder.0.convs.first.conv.weight",
            "encoder.1.down.bias",
            "bottleneck.second.norm.gamma",
            "forward_lstm.gates.weight",
            "backward_lstm.cell.gates.bias",
            "backward_lstm.merge.weight",
            "decoder.0.gate.theta.weight",
            "decoder.1.gate.psi.bias",
            "decoder.1.up.weight",
            "head.weight",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(!names.contains(&"decoder.0.gate.theta.bias"), "theta has no bias");
    }

    #[test]
    fn every_lstm_step_reads_the_gate_weights_written_once() {
        let model = p2p_model(&tiny(true)).unwrap();
        let gate_weights = |cell: &str| {
            let weight = format!("{cell}.gates.weight");
            let initializers = model.graph.initializer.iter().filter(|t| t.name == weight).count();
            let readers = nodes(&model, "Conv").iter().filter(|n| n.input[1] == weight).count();
            (initializers, readers)
        };
        // Steps 0 ..= 2 forward, 4 ..= 2 backward.
        assert_eq!(gate_weights("forward_lstm"), (1, 3));
        assert_eq!(gate_weights("backward_lstm.cell"), (1, 3));
    }

    #[test]
    fn a_forward_only_graph_encodes_the_slices_up_to_the_centre() {
        let model = p2p_model(&tiny(false)).unwrap();
        let encoded = nodes(&model, "Slice").into_iter().find(|n| n.name == "encoded").expect("a Slice of the input");
        assert_eq!(encoded.input[0], INPUT);
        let ends = model.graph.initializer.iter().find(|t| t.name == "encoded.ends").unwrap();
        assert_eq!(ends.raw_data, 3i64.to_le_bytes());
        assert!(!model.graph.initializer.iter().any(|t| t.name.starts_with("backward_lstm")));
        // Bidirectional, the input is folded whole.
        let model = p2p_model(&tiny(true)).unwrap();
        assert!(nodes(&model, "Slice").iter().all(|n| n.name != "encoded"));
    }

    #[test]
    fn decoder_levels_concatenate_the_gated_skip_first() {
        let model = p2p_model(&tiny(true)).unwrap();
        let concats: Vec<_> = nodes(&model, "Concat").into_iter().filter(|n| n.name.starts_with("decoder")).collect();
        assert_eq!(concats.len(), 2);
        assert_eq!(concats[0].input, ["decoder.0.gate.gated", "decoder.0.up"]);
        assert_eq!(concats[1].input, ["decoder.1.gate.gated", "decoder.1.up"]);
        let gated = nodes(&model, "Mul").into_iter().find(|n| n.name == "decoder.1.gate.gated").unwrap();
        assert_eq!(gated.input, ["encoder.0.skip", "decoder.1.gate.alpha_up"]);
    }

    #[test]
    fn signature_has_a_dynamic_batch_the_context_and_the_slice_shape() {
        let (inputs, outputs) = p2p_signature(&tiny(true));
        let batch = Dim::Dynamic("batch".into());
        assert_eq!((inputs[0].name.as_str(), outputs[0].name.as_str()), ("slices", "probability"));
        assert_eq!(inputs[0].shape, [batch.clone(), Dim::Fixed(5), Dim::Fixed(8), Dim::Fixed(12)]);
        assert_eq!(outputs[0].shape, [batch, Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(12)]);
    }
}
