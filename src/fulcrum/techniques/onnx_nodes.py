"""Which ONNX nodes a PyTorch layer became, and which nodes hold weights: what ``quantize``'s
``skip`` and the sensitivity analysis name layers by."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Sequence
from typing import Any

from onnx import TensorProto

from fulcrum.errors import ConfigError


def module_scopes(node: Any) -> list[str]:
    """The qualified names of the PyTorch modules a node was exported from, outermost first."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":  # the dynamo exporter: [..., op name]
            with contextlib.suppress(ValueError, SyntaxError):
                return [str(s) for s in ast.literal_eval(prop.value)[:-1]]
    return node.name.split("/")[1:-1]  # the TorchScript exporter: "/features/features.0/Conv"


def skipped_nodes(graph: Any, names: Sequence[str]) -> list[str]:
    """ONNX node names that compute the PyTorch layers ``names``.

    A node belongs to a layer when the layer is in its module scopes, or when it reads one of the
    layer's parameters: a convolution fused with its batch norm carries the norm's scope but
    keeps the convolution's weight name.
    """
    initializers = {t.name for t in graph.graph.initializer}
    found: list[str] = []
    for name in names:
        prefix = name + "."
        nodes = [
            n.name
            for n in graph.graph.node
            if name in module_scopes(n)
            or n.name == name  # a node of an ONNX workload's own graph
            or any(i in initializers and i.startswith(prefix) for i in n.input)
        ]
        if not nodes:
            raise ConfigError(
                f"quantize: skip layer {name!r} has no operation of its own in the exported graph "
                "(it has no weights or was fused away); skip its Conv or Linear layer instead."
            )
        found.extend(n for n in nodes if n not in found)
    return found


def weight_nodes(graph: Any) -> dict[str, str]:
    """Nodes (name -> op type) that read a float32 weight (an initializer of 2 or more dims)."""

    weights = {
        t.name
        for t in graph.graph.initializer
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2
    }
    return {
        n.name: n.op_type
        for n in graph.graph.node
        # GatherBlockQuantized reads float scales, DynamicQuantizeLSTM a float bias (num_dir,
        # 8 x hidden), neither a float weight
        if n.op_type not in ("GatherBlockQuantized", "DynamicQuantizeLSTM")
        and any(i in weights for i in n.input)
    }
