"""The float model as an ONNX graph: the exporter every ONNX-consuming runtime and technique uses.

``exported_bytes`` keeps the last few exports by model and weights, so that a model whose weights
did not change is exported once (a search exports the baseline for the probe, the sensitivity
analysis and each quantization of it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import torch
from torch import nn

from fulcrum.errors import TechniqueError
from fulcrum.runtimes.base import dynamic_axes, input_names, with_batch

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate

# the float graphs exported last, by model object and the state of its tensors: a search exports
# the baseline for the quantization probe, the sensitivity analysis and each quantization of it,
# and a trial's model for its timing and again for its files (1.3 s an export on `digits`, a
# fifth of a short trial)
EXPORTS_KEPT = 4
_exported: OrderedDict[tuple[Any, ...], tuple[weakref.ref[nn.Module], bytes]] = OrderedDict()


def exported_bytes(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> bytes:
    """``model`` exported by ``export_onnx`` (at batch 1), as bytes; the same model with the
    same weights is exported once (any in-place change of a parameter or buffer, as training
    makes, changes the key)."""
    inputs = with_batch(tuple(example_inputs), 1)
    tensors = [*model.parameters(), *model.buffers()]
    key = (
        id(model),
        tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in tensors),
        tuple((tuple(x.shape), x.dtype) for x in inputs),
    )
    kept = _exported.get(key)
    if kept is not None and kept[0]() is model:
        _exported.move_to_end(key)
        return kept[1]

    with tempfile.TemporaryDirectory(prefix="fulcrum-") as tmp:
        path = export_onnx(model, inputs, Path(tmp) / "model.onnx")
        data = onnx.load(str(path)).SerializeToString()  # external data (over 2 GB) inlined
    _exported[key] = (weakref.ref(model), data)
    while len(_exported) > EXPORTS_KEPT:
        _exported.popitem(last=False)
    return data


def _reuse_torchlib_registry() -> None:
    """Let torch's ONNX exporter build its table of ATen translations once per process: it
    builds it anew on every export, parsing the source of some 1,500 onnxscript functions
    (0.46 s of a 1.3 s export of the `digits` CNN). Each export gets its own copy of the
    table, since a custom translation registers into it. Left as it is where torch's
    internals differ from what this expects."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - another torch
        return
    registry = _registration.ONNXRegistry
    build = getattr(registry, "from_torchlib", None)
    if build is None or getattr(build, "fulcrum_reuses", False):
        return
    built: dict[Any, Any] = {}

    def from_torchlib(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(*args, **kwargs)
        table = cls()
        try:
            table._opset_version = built[key]._opset_version
            table.functions = {k: list(v) for k, v in built[key].functions.items()}
        except AttributeError:  # pragma: no cover - another torch
            return build(*args, **kwargs)
        return table

    from_torchlib.fulcrum_reuses = True  # type: ignore[attr-defined]
    registry.from_torchlib = classmethod(from_torchlib)  # type: ignore[method-assign,assignment]


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    names: Sequence[str] | None = None,
    exporter: str = "dynamo",
) -> Path:
    """Export ``model`` to ONNX at ``path``; inputs keep the forward's argument names.

    The batch axis is dynamic, and so is the sequence axis of token inputs (2-D integer tensors).
    Uses the dynamo exporter (with the batch axis alone dynamic when the sequence cannot be), and
    falls back to the TorchScript one for models it cannot trace; ``exporter="torchscript"``
    tries the TorchScript exporter first (its graphs match ONNX Runtime's fusion patterns), as
    does a model with recurrent layers (one ONNX LSTM, GRU or RNN node each).
    """
    _reuse_torchlib_registry()
    was_training = model.training
    model.eval()  # restored below: the caller's model keeps its mode
    # a batch of 2: with 1, torch.export specializes the batch axis to the constant 1
    inputs = with_batch(tuple(example_inputs), 2)
    names = list(names) if names is not None else input_names(model, len(inputs))
    axes = dynamic_axes(inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempts = _attempts(model, inputs, path, names, axes)
    # recurrent layers: the TorchScript exporter writes each as one ONNX LSTM / GRU / RNN node,
    # which ONNX Runtime runs whole (and quantizes: DynamicQuantizeLSTM); the dynamo exporter
    # unrolled nn.RNN into two MatMuls per time step, and took 40-65 s for a small LSTM here
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    if exporter == "torchscript" or recurrent:
        attempts.insert(0, attempts.pop())
    try:
        with _exporters_quiet():
            for i, attempt in enumerate(attempts):
                try:
                    attempt()
                    break
                except Exception:
                    if i == len(attempts) - 1:
                        raise
    finally:
        model.train(was_training)
    _tidy(path, axes)
    return path


def _attempts(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    axes: list[dict[int, str]],
) -> list[Callable[[], object]]:
    """The exports to try in turn: dynamo with named dynamic dims, with dims it finds itself,
    with the batch alone dynamic; then the TorchScript exporter."""

    def dynamo(varying: list[dict[int, str]], named: bool = True) -> None:
        # named dims tie every input's batch (and sequence) together; AUTO lets the exporter
        # find the ranges itself where a named dim's range is refused (max positions, say)
        dims = {
            "batch": torch.export.Dim("batch", min=1, max=65536),
            "sequence": torch.export.Dim("sequence", min=1, max=65536),
        }
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=True,
            input_names=names,
            dynamic_shapes=tuple(
                {a: dims[n] if named else torch.export.Dim.AUTO for a, n in ax.items()}
                for ax in varying
            ),
            verbose=False,
        )

    def torchscript() -> None:
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: ax for n, ax in zip(names, axes, strict=True)},
        )

    return [
        lambda: dynamo(axes),
        lambda: dynamo(axes, named=False),
        lambda: dynamo([{0: "batch"} for _ in inputs]),
        torchscript,
    ]


@contextlib.contextmanager
def _exporters_quiet() -> Iterator[None]:
    """The exporters' loggers, warnings and prints silenced, and restored after."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


KEPT_METADATA = (
    "pkg.torch.onnx.name_scopes",
)  # which PyTorch module made a node (quantize's skip)


def _tidy(path: Path, axes: Sequence[dict[int, str]]) -> None:
    """Name the inputs' symbolic dimensions (``s43``) ``batch`` and ``sequence``, and drop the
    exporter's per-node debugging metadata (stack traces, FX nodes): it would ship in the file
    (for a small model, more bytes than the weights) and count against its size."""

    proto = onnx.load(str(path))
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    rename: dict[str, str] = {}
    for value, ax in zip(inputs, axes, strict=False):
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and index in ax:
                rename.setdefault(dim.dim_param, ax[index])
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key in KEPT_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    external = {  # the exporter may have written the weights beside the graph
        e.value
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    onnx.save(proto, str(path))  # weights inline (under 2 GB): the side file is stale now
    for name in external:
        (path.parent / name).unlink(missing_ok=True)


def graph_of(candidate: Candidate, example_inputs: Sequence[torch.Tensor], runtime: str) -> bytes:
    """The ONNX graph an ONNX-reading ``runtime`` deploys: the candidate's own (quantized,
    fused, or an ONNX workload's) or its float model exported."""
    if candidate.onnx is not None:
        return candidate.onnx
    if candidate.program is not None:
        raise TechniqueError(
            f"this candidate is PyTorch's int8 program (quantize:int8-pt2e), which runs on the "
            f"torch-compile target, not {runtime}; use quantize:int8-static for {runtime}."
        )
    return exported_bytes(candidate.require_float(runtime), example_inputs)
