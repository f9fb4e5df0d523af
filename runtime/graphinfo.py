"""What model.onnx itself says, read without the onnx package: the length of its rotary tables.

The manifest's max_length must not exceed the rows of the cos/sin tables GroupQueryAttention rotates with, or a
sequence runs until that position and then fails inside ONNX Runtime. ONNX Runtime's session shows inputs and
outputs but not initializers, so the few fields needed are read from the protobuf with a descriptor of just them
(protobuf is onnxruntime's own dependency; unknown fields, raw weights included, are skipped):

    ModelProto.graph(7) -> GraphProto.node(1), .initializer(5), .input(11), .output(12)
    NodeProto.input(1), .output(2), .op_type(4), .attribute(5) -> AttributeProto.name(1), .g(6)
    TensorProto.dims(1), .data_type(2), .int32_data(5), .int64_data(7), .name(8), .raw_data(9); AttributeProto.t(5)
    ValueInfoProto.name(1), .type(2) -> TypeProto.tensor_type(1) -> .elem_type(1)

The tables are found from the graph, not by name: each GroupQueryAttention's cos_cache input (index 7) is
followed through Identity nodes and the branches of an If (LongRoPE's short and long tables) to initializers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_COS_CACHE = 7  # GroupQueryAttention's inputs: query, key, value, past_key, past_value, seqlens_k,
# total_sequence_length, cos_cache, sin_cache


@lru_cache(maxsize=1)
def _model_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="phi_edge_onnx_subset.proto", package="phi_edge_onnx",
                                               syntax="proto2")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = proto.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            m.field.add(name=field, number=number, type=kind, label=label, **({"type_name": type_name} if type_name
                                                                              else {}))

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("Tensor", [("dims", 1, f.TYPE_INT64, many, ""), ("data_type", 2, f.TYPE_INT32, one, ""),
                       ("int32_data", 5, f.TYPE_INT32, many, ""), ("int64_data", 7, f.TYPE_INT64, many, ""),
                       ("name", 8, f.TYPE_STRING, one, ""), ("raw_data", 9, f.TYPE_BYTES, one, "")])
    message("TensorType", [("elem_type", 1, f.TYPE_INT32, one, "")])
    message("Type", [("tensor_type", 1, f.TYPE_MESSAGE, one, ".phi_edge_onnx.TensorType")])
    message("ValueInfo", [("name", 1, f.TYPE_STRING, one, ""), ("type", 2, f.TYPE_MESSAGE, one, ".phi_edge_onnx.Type")])
    message("Attribute", [("name", 1, f.TYPE_STRING, one, ""), ("t", 5, f.TYPE_MESSAGE, one, ".phi_edge_onnx.Tensor"),
                          ("g", 6, f.TYPE_MESSAGE, one, ".phi_edge_onnx.Graph")])
    message("Node", [("input", 1, f.TYPE_STRING, many, ""), ("output", 2, f.TYPE_STRING, many, ""),
                     ("op_type", 4, f.TYPE_STRING, one, ""),
                     ("attribute", 5, f.TYPE_MESSAGE, many, ".phi_edge_onnx.Attribute")])
    message("Graph", [("node", 1, f.TYPE_MESSAGE, many, ".phi_edge_onnx.Node"),
                      ("initializer", 5, f.TYPE_MESSAGE, many, ".phi_edge_onnx.Tensor"),
                      ("input", 11, f.TYPE_MESSAGE, many, ".phi_edge_onnx.ValueInfo"),
                      ("output", 12, f.TYPE_MESSAGE, many, ".phi_edge_onnx.ValueInfo")])
    message("Model", [("graph", 7, f.TYPE_MESSAGE, one, ".phi_edge_onnx.Graph")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("phi_edge_onnx.Model"))


def _tables(graph) -> dict[str, int]:
    return {t.name: int(t.dims[0]) for t in graph.initializer if len(t.dims) == 2}


def _rows(name: str, graph, tables: dict[str, int], depth: int = 0) -> int | None:
    """The rows of the table `name` stands for in `graph` (the smallest over If branches); None if unknown."""
    if name in tables:
        return tables[name]
    if depth > 8:
        return None
    for node in graph.node:
        if name not in node.output:
            continue
        if node.op_type == "Identity":
            return _rows(node.input[0], graph, tables, depth + 1)
        if node.op_type == "If":
            index = list(node.output).index(name)
            found = [_rows(a.g.output[index].name, a.g, {**tables, **_tables(a.g)}, depth + 1)
                     for a in node.attribute if a.name in ("then_branch", "else_branch") and index < len(a.g.output)]
            return min(found) if found and None not in found else None
        return None
    return None


def rotary_length(model: Path) -> int | None:
    """The positions model.onnx's rotary tables cover (the fewest over its attention nodes); None when the graph
    has no GroupQueryAttention with rotary tables this can follow."""
    parsed = _model_class()()
    parsed.ParseFromString(Path(model).read_bytes())
    return _rotary_rows(parsed.graph)


def _rotary_rows(graph) -> int | None:
    tables = _tables(graph)
    lengths = [_rows(node.input[_COS_CACHE], graph, tables) for node in graph.node
               if node.op_type == "GroupQueryAttention" and len(node.input) > _COS_CACHE and node.input[_COS_CACHE]]
    return None if not lengths or None in lengths else min(lengths)


# ONNX TensorProto element types -> numpy names, for the dtypes a package's inputs and outputs use
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 16: "bfloat16"}


@dataclass(frozen=True)
class GraphIO:
    inputs: dict[str, str]  # name -> dtype
    outputs: dict[str, str]
    op_types: frozenset[str]
    rope_switch: int | None = None  # LongRoPE: the length past which an If picks the long rotary tables
    rotary_rows: int | None = None  # rotary_length's answer, from the same parse


def _scalar(tensor) -> int | None:
    """An integer scalar TensorProto's value (int32 / int64, in its typed field or raw little-endian bytes)."""
    import struct

    if list(tensor.int64_data) or list(tensor.int32_data):
        return int((list(tensor.int64_data) or list(tensor.int32_data))[0])
    width = {6: "<i", 7: "<q"}.get(tensor.data_type)
    if width and len(tensor.raw_data) == struct.calcsize(width):
        return struct.unpack(width, tensor.raw_data)[0]
    return None


def _rope_switch(graph) -> int | None:
    """The constant c of the Greater(length, c) that an If over the rotary tables tests (onnxruntime-genai's and
    our own LongRoPE graphs), or None."""
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = a.t
    conditions = {n.input[0] for n in graph.node if n.op_type == "If"}
    for node in graph.node:
        if node.op_type == "Greater" and node.output[0] in conditions and node.input[1] in constants:
            return _scalar(constants[node.input[1]])
    return None


def graph_io(model: Path) -> GraphIO:
    """model.onnx's inputs and outputs with their dtypes, and the operators its top-level graph uses."""
    parsed = _model_class()()
    parsed.ParseFromString(Path(model).read_bytes())
    graph = parsed.graph
    dtype = lambda v: ELEM_TYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))  # noqa: E731
    return GraphIO({v.name: dtype(v) for v in graph.input}, {v.name: dtype(v) for v in graph.output},
                   frozenset(n.op_type for n in graph.node), _rope_switch(graph), _rotary_rows(graph))
