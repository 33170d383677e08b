"""How big, how costly and how fast a model is: ``profile(model, example_inputs)``.

Conventions: MACs are multiply-accumulates; FLOPs = 2 x MACs. Compute is counted by
``torch.utils.flop_counter`` on a copy of the model on the meta device (no real arithmetic), or
in one real forward pass where the model's code needs real values (attention masks), or from the
ONNX graph for ONNX models; ``Profile.counted_on`` says which. This module counts size and
compute and puts a profile together; latency is timed by ``fulcrum.timing`` (interleaved rounds
in one process, so that machine drift affects every runtime alike), peak memory by
``fulcrum.memory``, and the CLI renders the result (``fulcrum.cli.profile``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fulcrum import runtimes
from fulcrum.errors import ConfigError, first_line
from fulcrum.memory import rss_peak_increase, torch_peak_activation_bytes
from fulcrum.runtimes import OnnxModel
from fulcrum.runtimes.torch_eager import safetensors_bytes
from fulcrum.timing import Latency, bind, summarize, time_interleaved, torch_call

log = logging.getLogger(__name__)

FLOP_CONVENTION = "FLOPs = 2 x MACs"
PROFILED = ("torch", "onnxruntime")  # the runtimes `profile` times a model on


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    output_shape: list[int] | None
    params: int
    macs: int
    share: float  # of total MACs


@dataclass(frozen=True)
class Profile:
    model: str
    input_shapes: list[list[int]]
    params_total: int
    params_trainable: int
    params_nonzero: int
    bytes_by_dtype: dict[str, int]
    artifact_bytes: dict[str, int]
    macs: int
    flops: int
    macs_by_op: dict[str, int]
    layers: list[Layer]
    latency: list[Latency] = field(default_factory=list)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    threads: int = 1
    flop_convention: str = FLOP_CONVENTION
    environment: dict[str, str] = field(default_factory=dict)
    # "meta": counted on a meta-device copy; "forward": one pass on the real example inputs;
    # "graph": from an ONNX graph's shapes
    counted_on: str = "meta"

    @property
    def model_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def latency_of(self, runtime: str, batch_size: int) -> Latency | None:
        return next(
            (
                lat
                for lat in self.latency
                if lat.runtime == runtime and lat.batch_size == batch_size
            ),
            None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment(threads: int) -> dict[str, str]:
    """What a reader needs to compare figures across machines."""
    import onnxruntime

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    from importlib import metadata

    versions = {}
    for package in ("onnx", "torch-pruning", "scikit-learn", "transformers", "torchao"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "threads": str(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        **versions,
    }


# -- size -------------------------------------------------------------------------------------


def parameter_counts(model: nn.Module) -> tuple[int, int, int]:
    """(total, trainable, non-zero) parameters, counting shared tensors once."""
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in params)
    return total, trainable, nonzero


def bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers, grouped by dtype (shared tensors once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    sizes: dict[str, int] = {}
    for t in tensors.values():
        key = str(t.dtype).removeprefix("torch.")
        sizes[key] = sizes.get(key, 0) + t.numel() * t.element_size()
    return sizes


# -- compute ----------------------------------------------------------------------------------


def _op_name(op: Any) -> str:
    return str(getattr(op, "__name__", op)).split(".")[0]


def torch_compute(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> tuple[int, dict[str, int], list[Layer]]:
    """MACs in total, by op type and by layer (see ``count_compute``, which also says how)."""
    macs, by_op, layers, _how = count_compute(model, example_inputs)
    return macs, by_op, layers


def count_compute(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> tuple[int, dict[str, int], list[Layer], str]:
    """MACs in total, by op type and by layer, and how they were counted.

    Counting runs on a meta-device copy of ``model`` (no arithmetic, no memory): ``"meta"``.
    Code that needs real values (``.item()``, data-dependent masks, as in ``transformers``)
    cannot run there; then one forward pass on the real example inputs is counted: ``"forward"``.
    """
    try:
        meta = copy.deepcopy(model).to("meta").eval()
        counted = _count(meta, tuple(x.to("meta") for x in example_inputs), model)
        return (*counted, "meta")
    except Exception:  # any failure on meta tensors: count on real ones instead
        pass
    was_training = model.training
    try:
        return (*_count(model.eval(), tuple(example_inputs), model), "forward")
    except (RuntimeError, ValueError, IndexError, NotImplementedError, TypeError) as exc:
        raise runtimes.input_shape_error(example_inputs, exc) from None
    finally:
        model.train(was_training)


def layer_rows(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """The per-layer table a report shows (layers with parameters or MACs), as plain values."""
    _, _, layers = torch_compute(model, example_inputs)
    return [
        {"name": la.name, "kind": la.kind, "params": la.params, "macs": la.macs, "share": la.share}
        for la in layers
        if la.params or la.macs
    ]


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas torch's counter lacks: the CPU kernel of scaled dot-product attention, which
    a real forward pass runs (on the meta device attention decomposes into counted matmuls)."""
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def attention(query: Any, key: Any, value: Any, *_args: Any, **_kwargs: Any) -> int:
        return int(sdpa_flop_count(query, key, value))

    return {op: attention}


def _count(
    runnable: nn.Module, inputs: tuple[torch.Tensor, ...], model: nn.Module
) -> tuple[int, dict[str, int], list[Layer]]:
    """Run ``runnable`` (``model`` or its meta copy) once under the FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, list[int]] = {}
    hooks = []
    for name, module in runnable.named_modules():

        def record(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            with contextlib.suppress(TypeError):
                shapes[name] = list(runtimes.output_tensor(out).shape)

        hooks.append(module.register_forward_hook(record))
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    try:
        with counter, torch.no_grad():
            runnable(*inputs)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    total_macs = counter.get_total_flops() // 2
    by_op: dict[str, int] = {}
    for op, flops in counts.get("Global", {}).items():
        by_op[_op_name(op)] = by_op.get(_op_name(op), 0) + flops // 2
    root = type(runnable).__name__

    modules = dict(model.named_modules())

    def key(name: str) -> str:
        return f"{root}.{name}" if name else root

    def macs_of(name: str) -> int:
        return sum(counts.get(key(name), {}).values()) // 2

    def covered(name: str) -> int:
        """MACs counted inside the children of ``name`` (looking through uncalled containers)."""
        total = 0
        for child, _ in modules[name].named_children():
            full = f"{name}.{child}" if name else child
            total += macs_of(full) if key(full) in counts else covered(full)
        return total

    layers: list[Layer] = []
    for name, module in modules.items():
        children = list(module.named_children())
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = macs_of(name) - covered(name)
        if children and macs <= 0 and not own_params:
            continue  # a container: its children carry its cost
        if not children and not own_params and macs <= 0 and name not in shapes:
            continue
        layers.append(
            Layer(
                name=name or root,
                kind=type(module).__name__,
                output_shape=shapes.get(name),
                params=own_params,
                macs=max(macs, 0),
                share=(macs / total_macs) if total_macs and macs > 0 else 0.0,
            )
        )
    return total_macs, by_op, layers


def _dims(tensor_type: Any) -> list[int] | None:
    """A tensor's static shape, or None where shape inference left it (or its rank) unknown."""
    if not tensor_type.HasField("shape"):
        return None
    if not all(d.HasField("dim_value") for d in tensor_type.shape.dim):
        return None
    return [int(d.dim_value) for d in tensor_type.shape.dim]


_COMPUTE_OPS = (
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "Gemm",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "FusedMatMul",
    "ConvTranspose",
)


def _shapes_by_running(
    proto: Any, names: Sequence[str], input_shapes: Sequence[Sequence[int]]
) -> dict[str, list[int] | None]:
    """Shapes of the tensors ``names``, read by running the graph once on zeros."""
    import onnx
    from onnx import helper

    from fulcrum.runtimes import ort_session

    probe = copy.deepcopy(proto)
    del probe.graph.value_info[:]
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    init_names = {i.name for i in probe.graph.initializer}
    feed = {
        value.name: np.zeros(
            shape, dtype=helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        )
        for value, shape in zip(
            [i for i in probe.graph.input if i.name not in init_names], input_shapes, strict=False
        )
    }
    try:
        session = ort_session(probe.SerializeToString(), 1)
        outputs = session.run(list(names), feed)
    except Exception as exc:  # the MACs of those nodes stay unknown (0), as before
        log.warning(
            "MACs of some nodes are unknown: the graph could not be run to read its shapes (%s)",
            first_line(exc),
        )
        return {}
    return {n: list(np.shape(v)) for n, v in zip(names, outputs, strict=True)}


def onnx_compute(
    proto: Any, input_shapes: Sequence[Sequence[int]]
) -> tuple[int, dict[str, int], list[Layer]]:
    """MACs of an ONNX graph's Conv / Gemm / MatMul nodes (and their int8 forms) at fixed input shapes."""
    import onnx

    proto = copy.deepcopy(proto)
    init_names = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in init_names]
    for value, shape in zip(graph_inputs, input_shapes, strict=False):
        dims = value.type.tensor_type.shape.dim
        for d, size in zip(dims, shape, strict=False):
            d.ClearField("dim_param")
            d.dim_value = int(size)
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shape_of: dict[str, list[int] | None] = {}
    for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        shape_of[v.name] = _dims(v.type.tensor_type)
    for init in proto.graph.initializer:
        shape_of[init.name] = list(init.dims)
    unknown = [
        name
        for node in proto.graph.node
        if node.op_type in _COMPUTE_OPS
        for name in (*node.input[:2], *node.output[:1])
        if name and shape_of.get(name) is None
    ]
    if unknown:  # ops ONNX cannot infer (say ai.onnx.ml's Scaler): run once and read the shapes
        shape_of |= _shapes_by_running(proto, sorted(set(unknown)), input_shapes)
    weight_types = {1, 2, 3, 10, 11, 16}  # float, uint8, int8, float16, double, bfloat16
    params_of = {
        i.name: int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type in weight_types
    }

    def prod(xs: Sequence[int]) -> int:
        return int(np.prod(xs)) if xs else 1

    layers: list[Layer] = []
    by_op: dict[str, int] = {}
    for index, node in enumerate(proto.graph.node):
        ins = [shape_of.get(n) for n in node.input]
        out = shape_of.get(node.output[0]) if node.output else None
        macs = 0
        op = node.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv") and out:
            w = ins[3] if op == "QLinearConv" else ins[1]
            if w:
                macs = prod(out) * prod(w[1:])
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul") and out:
            a = ins[0]
            if a:
                k = (
                    a[0]
                    if (op == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute))
                    else a[-1]
                )
                macs = prod(out) * k
        elif op == "ConvTranspose" and ins[0] and ins[1]:
            macs = prod(ins[0]) * prod(ins[1][1:])
        params = sum(params_of.get(n, 0) for n in node.input)
        if macs or params:
            by_op[op] = by_op.get(op, 0) + macs
            layers.append(Layer(node.name or f"{op}_{index}", op, out, params, macs, 0.0))
    total = sum(by_op.values())
    layers = [Layer(**{**asdict(la), "share": la.macs / total if total else 0.0}) for la in layers]
    return total, by_op, layers


# -- profile ----------------------------------------------------------------------------------


@runtimes.keeps_caller_state("model")
def profile(
    model: nn.Module | OnnxModel,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    runtimes_: Sequence[str] = PROFILED,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int | None = None,
    seconds: float = 2.0,
    latency: bool = True,
) -> Profile:
    """Measure size, compute, latency and peak memory of ``model`` on ``example_inputs``.

    With ``latency=False`` only size and compute are measured: nothing is exported, run on
    a runtime or timed, so even BERT-base takes seconds. The caller's model keeps its mode, and
    torch's thread count and random generator are left as they were.

    >>> p = profile(torch.nn.Linear(4, 2), torch.zeros(1, 4), latency=False)
    >>> p.params_total, p.macs
    (10, 8)
    """
    unknown = [r for r in runtimes_ if r not in PROFILED]
    if unknown:
        raise ConfigError(
            f"runtime {unknown[0]!r} is not known; choose from {', '.join(PROFILED)}."
        )
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers; got {list(batch_sizes)}.")
    if isinstance(model, OnnxModel):
        return profile_onnx(
            model,
            example_inputs,
            batch_sizes=batch_sizes,
            threads=threads,
            seconds=seconds,
            latency=latency,
        )
    inputs = runtimes.as_inputs(example_inputs)
    threads = threads or runtimes.default_threads()
    model = model.eval()
    total, trainable, nonzero = parameter_counts(model)
    macs, by_op, layers, counted_on = count_compute(model, inputs)
    artifact = {"safetensors": safetensors_bytes(model)}
    peak: dict[str, int] = {}
    lat: list[Latency] = []
    # without latency, nothing is run or serialized beyond the count: no export, no memory
    if latency:
        lat = _timed(model, inputs, runtimes_, batch_sizes, threads, seconds, artifact, peak)
    return Profile(
        model=type(model).__name__,
        input_shapes=[list(x.shape) for x in inputs],
        params_total=total,
        params_trainable=trainable,
        params_nonzero=nonzero,
        bytes_by_dtype=bytes_by_dtype(model),
        artifact_bytes=artifact,
        macs=macs,
        flops=2 * macs,
        macs_by_op=by_op,
        layers=layers,
        latency=lat,
        peak_memory_bytes=peak,
        threads=threads,
        environment=environment(threads),
        counted_on=counted_on,
    )


def _timed(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    runtimes_: Sequence[str],
    batch_sizes: Sequence[int],
    threads: int,
    seconds: float,
    artifact: dict[str, int],
    peak: dict[str, int],
) -> list[Latency]:
    """``model`` timed on each runtime at each batch size, interleaved; its ONNX file's bytes
    go into ``artifact`` and each runtime's peak memory into ``peak``."""
    largest = runtimes.with_batch(inputs, max(batch_sizes))
    with tempfile.TemporaryDirectory(prefix="fulcrum-profile-") as tmp:
        onnx_model: OnnxModel | None = None
        if "onnxruntime" in runtimes_:
            path = runtimes.export_onnx(
                model, runtimes.with_batch(inputs, 1), Path(tmp) / "model.onnx"
            )
            artifact["onnx"] = sum(p.stat().st_size for p in Path(tmp).iterdir())
            ort_peak = rss_peak_increase(lambda: OnnxModel(path, threads)(*largest))
            if ort_peak is not None:
                peak["onnxruntime"] = ort_peak
            onnx_model = OnnxModel(path, threads)
        with runtimes.torch_threads(threads):
            if "torch" in runtimes_:
                activations = torch_peak_activation_bytes(model, largest)
                peak["torch"] = sum(bytes_by_dtype(model).values()) + activations
            calls: dict[tuple[str, int], Callable[[], object]] = {}
            for b in batch_sizes:
                batch = runtimes.with_batch(inputs, b)
                if "torch" in runtimes_:
                    calls[("torch", b)] = torch_call(model, batch)
                if onnx_model is not None:
                    calls[("onnxruntime", b)] = bind(onnx_model, batch)
            times = time_interleaved(calls, seconds=seconds)
    return [summarize(rt, b, threads, times[(rt, b)]) for rt, b in calls]


def profile_onnx(
    model: OnnxModel,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int | None = None,
    seconds: float = 2.0,
    latency: bool = True,
) -> Profile:
    """The same figures for an ONNX file: counts from the graph, timings from ONNX Runtime."""
    from onnx import numpy_helper

    threads = threads or model.threads
    inputs = runtimes.as_inputs(example_inputs)
    proto = model.proto()
    # integer initializers of 64/32 bits are shapes and axes, not weights
    tensors = [
        t
        for t in (numpy_helper.to_array(i) for i in proto.graph.initializer)
        if t.dtype.kind == "f" or t.dtype.itemsize == 1
    ]
    sizes: dict[str, int] = {}
    for t in tensors:
        sizes[str(t.dtype)] = sizes.get(str(t.dtype), 0) + t.nbytes
    total = sum(t.size for t in tensors)
    nonzero = sum(int(np.count_nonzero(t)) for t in tensors)
    macs, by_op, layers = onnx_compute(proto, [list(x.shape) for x in inputs])
    artifact = {"onnx": model.artifact_bytes()}
    largest = runtimes.with_batch(inputs, max(batch_sizes))
    peak = rss_peak_increase(lambda: model.reload()(*largest))
    lat: list[Latency] = []
    if latency:
        calls = {b: bind(model, runtimes.with_batch(inputs, b)) for b in batch_sizes}
        times = time_interleaved(calls, seconds=seconds)
        lat = [summarize("onnxruntime", b, threads, times[b]) for b in batch_sizes]
    return Profile(
        model=model.name,
        input_shapes=[list(x.shape) for x in inputs],
        params_total=total,
        params_trainable=0,
        params_nonzero=nonzero,
        bytes_by_dtype=sizes,
        artifact_bytes=artifact,
        macs=macs,
        flops=2 * macs,
        macs_by_op=by_op,
        layers=layers,
        latency=lat,
        peak_memory_bytes={"onnxruntime": peak} if peak is not None else {},
        threads=threads,
        environment=environment(threads),
        counted_on="graph",
    )
