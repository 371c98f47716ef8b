//! [`OnnxGraph`]: an ONNX graph under construction. Layers append nodes and weights to it
//! (see [`super::EmitOnnx`]); the model declares inputs and outputs and turns it into the
//! bytes of a `.onnx` file.
//!
//! Names: a layer's weights are initializers named by the layer's path in the module
//! (`encoder.0.conv.weight`, as in the checkpoint), its output value by the path itself
//! (`encoder.0.conv`), helper values by the path and a suffix. Every name is used once.

use std::collections::HashSet;

use burn::prelude::*;
use fracmap_core::model_manifest::Dim;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{self, Tensor as TensorType};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::ExportError;

/// The default-domain opset the graphs import. 17 has every operator the layers need, with
/// their current semantics (GroupNormalization, whose scale changed meaning between 18 and
/// 21, is not used: see `layers.rs`), and is read by every ONNX Runtime since 1.13.
pub const OPSET: i64 = 17;
/// The IR version of opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;

/// A node attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// An ONNX graph being built: nodes in execution order, weights, inputs and outputs.
#[derive(Default)]
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
}

impl OnnxGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a float32 graph input of `shape` and returns its value.
    pub fn input(&mut self, name: &str, shape: &[Dim]) -> String {
        self.claim(name);
        self.inputs.push(value_info(name, shape));
        name.to_string()
    }

    /// Declares `value` as the float32 graph output `name` of `shape`.
    pub fn output(&mut self, value: &str, name: &str, shape: &[Dim]) {
        // Identity gives the output its public name whatever layer made it; ONNX Runtime
        // folds it away.
        let output = self.node("Identity", name, &[value], &[]);
        self.outputs.push(value_info(&output, shape));
    }

    /// A float32 initializer holding a Burn tensor's values, row-major like Burn's.
    pub fn weight<const D: usize>(&mut self, name: &str, tensor: Tensor<D>) -> Result<String, ExportError> {
        let dims = tensor.dims();
        let values = tensor
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|error| ExportError::TensorData { name: name.to_string(), message: format!("{error:?}") })?;
        Ok(self.constant_f32(name, &dims, &values))
    }

    /// A float32 initializer of `dims` holding `values` (row-major).
    pub fn constant_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}: {dims:?} does not hold {}", values.len());
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::FLOAT, raw_data)
    }

    /// A one-dimensional int64 initializer (shapes, axes).
    pub fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, &[values.len()], DataType::INT64, raw_data)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> String {
        self.claim(name);
        self.initializers.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..TensorProto::default()
        });
        name.to_string()
    }

    /// Appends an `op` node reading `inputs`, with one output value named `name` (also the
    /// node's name), and returns that value.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attributes: &[(&str, Attr)]) -> String {
        self.claim(name);
        self.nodes.push(NodeProto {
            op_type: op.to_string(),
            name: name.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            attribute: attributes.iter().map(|(name, value)| attribute(name, value)).collect(),
            ..NodeProto::default()
        });
        name.to_string()
    }

    /// The finished model: `name` and `doc` describe the graph, `metadata` goes into the
    /// model's metadata properties.
    pub fn into_model(self, name: &str, doc: &str, metadata: &[(&str, String)]) -> ModelProto {
        let graph = GraphProto {
            name: name.to_string(),
            doc_string: doc.to_string(),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..GraphProto::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET, ..Default::default() }],
            producer_name: "fracmap-train".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: doc.to_string(),
            graph: Some(graph).into(),
            metadata_props: metadata
                .iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.to_string(),
                    value: value.clone(),
                    ..Default::default()
                })
                .collect(),
            ..ModelProto::default()
        }
    }

    /// A value, node or initializer name is used once: a second use is a bug in an emitter.
    fn claim(&mut self, name: &str) {
        assert!(self.names.insert(name.to_string()), "ONNX name {name:?} used twice");
    }
}

/// The bytes of a `.onnx` file.
pub fn model_bytes(model: &ModelProto) -> Result<Vec<u8>, ExportError> {
    Ok(model.write_to_bytes()?)
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut proto = AttributeProto { name: name.to_string(), ..AttributeProto::default() };
    match value {
        Attr::Int(i) => {
            proto.type_ = AttributeType::INT.into();
            proto.i = *i;
        }
        Attr::Ints(ints) => {
            proto.type_ = AttributeType::INTS.into();
            proto.ints = ints.clone();
        }
        Attr::Float(f) => {
            proto.type_ = AttributeType::FLOAT.into();
            proto.f = *f;
        }
    }
    proto
}

fn value_info(name: &str, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Dynamic(name) => dimension::Value::DimParam(name.clone()),
            }),
            ..Dimension::default()
        })
        .collect();
    let tensor = TensorType {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto { dim, ..TensorShapeProto::default() }).into(),
        ..TensorType::default()
    };
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..TypeProto::default() }).into(),
        ..ValueInfoProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_little_endian_float32_in_burn_order() {
        let device = Device::flex();
        let mut graph = OnnxGraph::new();
        let tensor = Tensor::<1>::from_floats([1.0, -2.5, 0.25, 8.0, 0.0, 3.0], &device).reshape([2, 3]);
        graph.weight("w", tensor).unwrap();
        let model = graph.into_model("g", "", &[]);
        let w = &model.graph.initializer[0];
        assert_eq!(w.dims, vec![2, 3]);
        assert_eq!(w.data_type, DataType::FLOAT as i32);
        let values: Vec<f32> = w.raw_data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![1.0, -2.5, 0.25, 8.0, 0.0, 3.0]);
    }

    #[test]
    fn a_model_declares_opset_ir_version_and_named_dynamic_axes() {
        let mut graph = OnnxGraph::new();
        let x = graph.input("x", &[Dim::Dynamic("batch".into()), Dim::Fixed(3)]);
        let y = graph.node("Relu", "relu", &[&x], &[]);
        graph.output(&y, "y", &[Dim::Dynamic("batch".into()), Dim::Fixed(3)]);
        let model = graph.into_model("g", "doc", &[("k", "v".to_string())]);
        assert_eq!((model.ir_version, model.opset_import[0].version), (IR_VERSION, OPSET));
        let ops: Vec<&str> = model.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Relu", "Identity"]);
        let Some(type_proto::Value::TensorType(t)) = &model.graph.output[0].type_.value else { panic!("a tensor") };
        assert_eq!(t.shape.dim[0].value, Some(dimension::Value::DimParam("batch".into())));
        assert_eq!(model.metadata_props[0].value, "v");
        assert!(!model_bytes(&model).unwrap().is_empty());
    }

    #[test]
    #[should_panic(expected = "used twice")]
    fn a_name_used_twice_is_a_bug() {
        let mut graph = OnnxGraph::new();
        graph.constant_i64("shape", &[1]);
        graph.constant_i64("shape", &[2]);
    }
}
