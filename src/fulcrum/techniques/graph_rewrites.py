"""ONNX graph rewrites quantization makes: a global average pool ONNX Runtime can run in int8,
embedding tables in 4-bit blocks, weights stored in fp16."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

# a 1-D float initializer this large is a weight (an embedding row, a norm scale), not a constant
FP16_MIN_ELEMENTS = 1024
# embeddings=int4 stores only tables of at least this many rows (a vocabulary) in 4-bit blocks:
# ONNX Runtime's GatherBlockQuantized costs as much per looked-up row for a 512-row position table
# as for the vocabulary (all-MiniLM-L6-v2, 128 tokens: 0.49 and 0.38 ms; int8 Gather +
# DequantizeLinear 0.08 ms for all three tables), and a small table's 4 bits save next to nothing
INT4_MIN_ROWS = 4096


def gather_int4(graph: Any, exclude: Sequence[str]) -> Any:
    """Embedding tables (Gather weights) in 4-bit blocks of 32 along the hidden axis."""

    copied = onnx.ModelProto()
    copied.CopyFrom(graph)  # the quantizer rewrites the model it is given
    graph = copied
    rows = {t.name: t.dims[0] for t in graph.graph.initializer if len(t.dims) == 2}
    tables = [
        n.name
        for n in graph.graph.node
        if n.op_type == "Gather"
        and rows.get(n.input[0], 0) >= INT4_MIN_ROWS
        and n.name not in exclude
    ]
    small = [n.name for n in graph.graph.node if n.op_type == "Gather" and n.name not in tables]
    if not tables:
        return graph
    quantizer = MatMulNBitsQuantizer(
        graph,
        bits=4,
        block_size=32,
        is_symmetric=False,
        accuracy_level=4,
        op_types_to_quantize=("Gather",),
        nodes_to_exclude=[*exclude, *small],
        quant_axes=(("Gather", 1),),
    )
    quantizer.process()
    return quantizer.model.model


def global_pools(graph: Any, exclude: Sequence[str]) -> tuple[Any, int]:
    """``ReduceMean`` over the two spatial axes of a 4-D tensor (the dynamo exporter's
    ``AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3))``) as ``GlobalAveragePool`` (then ``Flatten``
    where the mean dropped the axes), which ONNX Runtime quantizes; and how many were rewritten."""

    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    constants = {t.name: t for t in graph.graph.initializer}
    result = onnx.ModelProto()
    result.CopyFrom(graph)
    nodes, count = [], 0
    for node in result.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")  # before opset 18 an attribute, since then the second input
        if axes is None and len(node.input) > 1 and node.input[1] in constants:
            axes = numpy_helper.to_array(constants[node.input[1]]).tolist()
        if (
            node.op_type != "ReduceMean"
            or node.name in exclude
            or ranks.get(node.input[0]) != 4
            or axes is None
            or sorted(int(a) % 4 for a in axes) != [2, 3]
        ):
            nodes.append(node)
            continue
        keep = attrs.get("keepdims", 1)
        pooled = node.output[0] if keep else f"{node.output[0]}_pooled"
        nodes.append(
            helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name)
        )
        if not keep:
            nodes.append(
                helper.make_node(
                    "Flatten", [pooled], [node.output[0]], axis=1, name=f"{node.name}_flatten"
                )
            )
        count += 1
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result, count


def weights_to_fp16(graph: Any, exclude: Sequence[str], notes: list[str]) -> Any:
    """float32 weights stored as float16, each cast back to float32 in front of its users.

    The graph's inputs, outputs and every op stay float32. Shape constants, small vectors, the
    weights of skipped nodes and weights beyond float16's range are left as they are.
    """

    result = onnx.ModelProto()
    result.CopyFrom(graph)
    keep = {i for n in result.graph.node if n.name in exclude for i in n.input}
    keep |= {i.name for i in result.graph.input}
    limit = float(np.finfo(np.float16).max)
    casts, out_of_range = [], []
    for init in result.graph.initializer:
        elements = int(np.prod(init.dims))
        if (
            init.data_type != TensorProto.FLOAT
            or init.name in keep
            or (len(init.dims) < 2 and elements < FP16_MIN_ELEMENTS)
        ):
            continue
        array = numpy_helper.to_array(init)
        if array.size and float(np.abs(array).max()) > limit:
            out_of_range.append(init.name)
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float16), f"{name}__fp16"))
        casts.append(
            helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32"
            )
        )
    if out_of_range:
        notes.append(f"kept in fp32 (values beyond fp16's range): {', '.join(out_of_range)}")
    nodes = [*casts, *result.graph.node]
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result
