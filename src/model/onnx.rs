//! The few ONNX protobuf messages the exporter writes, declared by hand with `prost`.
//!
//! Why not `onnx-protobuf`: it pins `protobuf = "=3.4.0"` and drags a code generator's runtime
//! along, for the dozen messages below. Field numbers and enum values are those of `onnx.proto`
//! (ONNX IR version 10); only the fields we write are declared, which protobuf permits.
//!
//! On top of the messages sits a tiny [`GraphBuilder`] that names values, adds nodes and
//! initializers, and keeps the exporter readable.

use prost::Message;

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.UINT8`.
pub const UINT8: i32 = 2;
/// `TensorProto.DataType.INT8`.
pub const INT8: i32 = 3;
/// `TensorProto.DataType.UINT16`.
pub const UINT16: i32 = 4;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Producer name.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Producer version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets used.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain ("" is the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Opset version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator type.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto` (the scalar and int-list kinds only).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// FLOAT value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// INT value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// INTS value.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// `AttributeType`: FLOAT = 1, INT = 2, INTS = 7.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl AttributeProto {
    /// An INT attribute.
    pub fn int(name: &str, i: i64) -> Self {
        Self { name: name.into(), i, r#type: 2, ..Default::default() }
    }
    /// A FLOAT attribute.
    pub fn float(name: &str, f: f32) -> Self {
        Self { name: name.into(), f, r#type: 1, ..Default::default() }
    }
    /// An INTS attribute.
    pub fn ints(name: &str, ints: Vec<i64>) -> Self {
        Self { name: name.into(), ints, r#type: 7, ..Default::default() }
    }
}

/// `TensorProto` with raw little-endian data.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Raw little-endian bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (tensor types only).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// `tensor_type` of the `value` oneof.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// Element type.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a fixed size or a symbolic name.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// Fixed size (`dim_value`).
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// Symbolic size (`dim_param`).
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    /// Known size.
    Fixed(i64),
    /// Symbolic size.
    Named(&'static str),
}

/// Builds a [`GraphProto`] node by node.
#[derive(Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    /// Declare a graph input.
    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Declare a graph output.
    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Add an f32 initializer.
    pub fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer {name}: shape and data disagree");
        let raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto { dims: dims.to_vec(), data_type: FLOAT, name: name.into(), raw_data });
        name.to_string()
    }

    /// Add an initializer of element type `UINT8`, `INT8` or `UINT16` given as its raw
    /// little-endian bytes.
    pub fn init_bytes(&mut self, name: &str, data_type: i32, dims: &[i64], data: Vec<u8>) -> String {
        let width = if data_type == UINT16 { 2 } else { 1 };
        assert_eq!(
            dims.iter().product::<i64>() as usize * width,
            data.len(),
            "initializer {name}: shape and data disagree"
        );
        self.graph.initializer.push(TensorProto { dims: dims.to_vec(), data_type, name: name.into(), raw_data: data });
        name.to_string()
    }

    /// Add an i64 initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        let raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto { dims: dims.to_vec(), data_type: INT64, name: name.into(), raw_data });
        name.to_string()
    }

    /// Add a node with one output named `out`; returns `out`.
    pub fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) -> String {
        self.node_in("", op, inputs, &[out], attrs);
        out.to_string()
    }

    /// Add a node in `domain` with any number of outputs.
    pub fn node_in(&mut self, domain: &str, op: &str, inputs: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) {
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_{}", self.graph.node.len()),
            op_type: op.into(),
            attribute: attrs,
            domain: domain.into(),
        });
    }

    /// Finish into a model with the given operator sets, serialised.
    pub fn into_model_bytes(mut self, name: &str, opsets: &[(&str, i64)], metadata: &[(&str, String)]) -> Vec<u8> {
        self.graph.name = name.into();
        let model = ModelProto {
            ir_version: 10,
            producer_name: "kvbench".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            opset_import: opsets
                .iter()
                .map(|(domain, version)| OperatorSetIdProto { domain: domain.to_string(), version: *version })
                .collect(),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.clone() })
                .collect(),
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension { dim_value: Some(*v), dim_param: None },
            Dim::Named(p) => Dimension { dim_value: None, dim_param: Some(p.to_string()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}
