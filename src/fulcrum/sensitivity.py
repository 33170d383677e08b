"""Per-layer sensitivity: what pruning or quantizing each layer alone costs, and what it runs for.

Three cheap measurements, without any fine-tuning, on a subset of the validation split:

- **prune**: for each prunable layer (a Conv, Linear or recurrent layer other than the head), the
  main metric after removing ``ratio`` of that layer's output channels alone, at several ratios
  (Torch-Pruning slices the coupled layers with it, as ``prune`` does);
- **quantize**: the metric of the int8-static model with only that layer left in float, beside
  the metric with every layer in int8 — a large gain marks a layer int8 hurts;
- **latency**: each layer's share of ONNX Runtime's per-node time at batch 1 (its profiler), and
  its share of the model's MACs.

``allocate`` turns the pruning curves into per-layer ratios: spend the pruning where it removes
the most compute per point of metric lost; ``matched`` scales that to the compute a uniform
ratio removes.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fulcrum import measure
from fulcrum.compression import compress, context_of, onnx_bytes
from fulcrum.errors import ConfigError, FulcrumError, first_line
from fulcrum.evaluation import evaluate_workload
from fulcrum.measuring import deploy
from fulcrum.metrics import MAIN_METRIC
from fulcrum.progress import each
from fulcrum.runtimes import default_threads, torch_threads
from fulcrum.techniques import Candidate, get
from fulcrum.techniques.quantize import QuantizeConfig
from fulcrum.workloads.base import Workload

log = logging.getLogger(__name__)

RATIOS = (0.25, 0.5, 0.75)
MAX_LAYER_RATIO = 0.9


@dataclass
class LayerSensitivity:
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # (as a run record)

    name: str
    kind: str
    params: int
    macs: int
    mac_share: float
    channels: int = 0  # output channels (features) a pruning ratio applies to
    prune: dict[str, float] = field(default_factory=dict)  # ratio (as text) -> metric
    saved: dict[str, float] = field(default_factory=dict)  # ratio -> share of MACs removed
    prune_error: str | None = None
    float_metric: float | None = None  # int8 everywhere except this layer
    latency_share: float | None = None


@dataclass
class Sensitivity:
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # (as a run record)

    workload: str
    metric: str
    baseline: float
    samples: int
    ratios: list[float]
    int8_metric: float | None
    layers: list[LayerSensitivity]
    latency_other: float | None  # the share of time in nodes of no listed layer
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        layers = [LayerSensitivity(**layer) for layer in data["layers"]]
        return cls(**{**data, "layers": layers})


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv, Linear and recurrent (LSTM, GRU, RNN) layers, the classifier head (the last Conv
    or Linear) left out."""
    from fulcrum.techniques.base import head_name

    head = head_name(model)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear | nn.RNNBase) and name != head
    ]


def subset(workload: Workload, samples: int) -> Workload:
    """The workload judged on the first ``samples`` validation samples."""
    from torch.utils.data import DataLoader, Subset

    loader = workload.val
    if loader is None:
        raise ConfigError(
            f"workload {workload.name!r} has no validation data; sensitivity needs some."
        )
    try:
        size = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return workload
    if size <= samples:
        return workload
    part = DataLoader(
        Subset(loader.dataset, range(samples)),
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
    )
    return replace(workload, val=part)


def analyse(
    workload: Workload,
    *,
    ratios: Sequence[float] = RATIOS,
    samples: int = 512,
    prune: bool = True,
    quantize: bool = True,
    latency: bool = True,
    prune_layers: int | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Sensitivity:
    """Measure every layer's sensitivity to pruning and to int8, and its share of the cost.

    ``prune_layers`` bounds the pruning part (a pruning and an evaluation per layer and ratio)
    to that many layers, those with the most MACs; the others get no curve, and an allocation
    leaves them unpruned."""
    say = progress or (lambda _m: None)
    threads = threads or default_threads()
    start = time.perf_counter()
    small = subset(workload, samples)
    main = MAIN_METRIC[workload.task]

    def metric(model: Any) -> float:
        return float(evaluate_workload(small, model, threads=threads).metrics[main] or 0.0)

    model = workload.model
    baseline = metric(model)
    layers, total_macs = _listed(workload)
    prune = prune and isinstance(model, nn.Module)  # an ONNX workload: quantization only
    if prune:
        costly = sorted(layers, key=lambda la: -la.macs)[: prune_layers or len(layers)]
        chosen = [la for la in layers if la in costly]
        say(f"pruning each of {len(chosen)} layers alone")
        for layer in each("sensitivity: each layer pruned alone (layers)", chosen):
            _prune_curve(workload, layer, ratios, total_macs, metric, threads)
    # the float graph, exported once (the export costs more than quantizing it): every int8
    # variant quantizes this graph, as quantize does after a graph step
    graph_bytes = (
        onnx_bytes(Candidate.of(model), workload.example_inputs) if quantize or latency else b""
    )
    int8_metric = None
    if quantize:
        say("quantizing every layer to int8")
        int8_metric = _int8_curve(small, graph_bytes, layers, metric, threads)
    other = None
    if latency:
        say("timing every node with ONNX Runtime's profiler")
        shares, other = latency_shares(
            graph_bytes, workload.example_inputs, [la.name for la in layers], threads
        )
        for layer in layers:
            layer.latency_share = shares.get(layer.name)
    return Sensitivity(
        workload=workload.name,
        metric=main,
        baseline=round(baseline, 6),
        samples=_count(small),
        ratios=[float(r) for r in ratios] if prune else [],
        int8_metric=int8_metric,
        layers=layers,
        latency_other=other,
        seconds=round(time.perf_counter() - start, 1),
    )


def _listed(workload: Workload) -> tuple[list[LayerSensitivity], int]:
    """The layers analysed, and the model's MACs: a PyTorch model's prunable layers, or an
    ONNX workload's Conv / MatMul / Gemm nodes."""
    model = workload.model
    if isinstance(model, nn.Module):
        total_macs, _, rows = measure.torch_compute(model, workload.example_inputs)
        macs_of = {row.name: row.macs for row in rows}
        return [
            LayerSensitivity(
                name=name,
                kind=type(module).__name__,
                params=sum(p.numel() for p in module.parameters()),
                macs=int(macs_of.get(name, 0)),
                mac_share=round(macs_of.get(name, 0) / total_macs, 6) if total_macs else 0.0,
                channels=int(
                    getattr(module, "out_channels", 0)
                    or getattr(module, "out_features", 0)
                    or getattr(module, "hidden_size", 0)
                ),
            )
            for name, module in prunable_layers(model)
        ], total_macs
    total_macs, _, found = measure.onnx_compute(
        model.proto(), [list(t.shape) for t in workload.example_inputs]
    )
    return [
        LayerSensitivity(
            name=row.name,
            kind=row.kind,
            params=row.params,
            macs=row.macs,
            mac_share=round(row.macs / total_macs, 6) if total_macs else 0.0,
        )
        for row in found
        if row.kind in ("Conv", "MatMul", "Gemm")
    ], total_macs


def _prune_curve(
    workload: Workload,
    layer: LayerSensitivity,
    ratios: Sequence[float],
    total_macs: int,
    metric: Callable[[Any], float],
    threads: int,
) -> None:
    """``layer`` pruned alone at each ratio: the metric after, and the share of MACs saved."""
    for ratio in ratios:
        recipe = f"prune:ratio=0.0,layer_ratios={layer.name}:{ratio}"
        try:
            candidate = compress(workload.model, recipe, workload, threads=threads)
        except FulcrumError as exc:
            layer.prune_error = first_line(exc, 200)
            return
        pruned = candidate.require_float("sensitivity")
        layer.prune[str(ratio)] = round(metric(pruned), 6)
        after = measure.torch_compute(pruned, workload.example_inputs)[0]
        layer.saved[str(ratio)] = round(1 - after / total_macs, 6) if total_macs else 0.0


def _int8_curve(
    workload: Workload,
    graph_bytes: bytes,
    layers: list[LayerSensitivity],
    metric: Callable[[Any], float],
    threads: int,
) -> float | None:
    """The metric of static int8 everywhere (returned), and with each layer alone left in
    float (``layer.float_metric``); None where int8-static does not apply."""
    exported = replace(Candidate.of(workload.model), onnx=graph_bytes, runtime="onnxruntime")
    ctx = context_of(workload, threads=threads)

    def int8(skip: tuple[str, ...]) -> Any:
        with torch_threads(threads):
            candidate = get("quantize").apply(QuantizeConfig(skip=skip), exported, ctx)
        return deploy(workload, candidate, "onnxruntime", threads)

    try:
        int8_metric = round(metric(int8(())), 6)
    except FulcrumError as exc:
        log.warning("sensitivity: int8-static does not apply (%s)", first_line(exc))
        return None
    for layer in each("sensitivity: int8 with each layer left in float (layers)", layers):
        try:
            layer.float_metric = round(metric(int8((layer.name,))), 6)
        except FulcrumError as exc:
            log.info("sensitivity: int8 without %s: %s", layer.name, first_line(exc))
    return int8_metric


def _count(workload: Workload) -> int:
    try:
        return len(workload.val.dataset)  # type: ignore[union-attr, arg-type]
    except TypeError:
        return 0


def latency_shares(
    graph: bytes,
    example_inputs: Sequence[torch.Tensor],
    layers: Sequence[str],
    threads: int,
    runs: int = 50,
) -> tuple[dict[str, float], float]:
    """Each layer's share of ONNX Runtime's node time at batch 1, and the share of no layer.

    The profiled session fuses nodes at ONNX Runtime's *extended* level: a fused node (a Conv
    with its ReLU) keeps the name of the node it grew from, which names its layer. (The full
    level's NCHWc layout pass renames the nodes it rewrites, so their layers could not be told.)
    """
    import onnx
    import onnxruntime as ort

    from fulcrum.runtimes import with_batch
    from fulcrum.techniques.onnx_nodes import skipped_nodes

    proto = onnx.load_from_string(graph)
    owner: dict[str, str] = {}
    for name in layers:
        try:
            for node in skipped_nodes(proto, [name]):
                owner.setdefault(node, name)
        except ConfigError:
            continue
    with tempfile.TemporaryDirectory(prefix="fulcrum-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {
            n: t.detach().cpu().numpy()
            for n, t in zip(names, with_batch(tuple(example_inputs), 1), strict=True)
        }
        for _ in range(5 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_node: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")].removeprefix("fused ")
            by_node[node] = by_node.get(node, 0.0) + float(event.get("dur", 0))
    total = sum(by_node.values())
    if not total:
        return {}, 1.0
    shares: dict[str, float] = {}
    for node, micros in by_node.items():
        layer = owner.get(node)
        if layer is not None:
            shares[layer] = shares.get(layer, 0.0) + micros / total
    other = 1.0 - sum(shares.values())
    return {k: round(v, 6) for k, v in shares.items()}, round(max(other, 0.0), 6)


def _curve(points: dict[str, float], ratio: float, zero: float) -> float:
    """A measured curve (ratio -> value) at ``ratio``: linear between the measured ratios (and
    ``zero`` at ratio 0), extended past the last one along its last slope."""
    known = [(0.0, zero), *sorted((float(r), v) for r, v in points.items())]
    for (r0, v0), (r1, v1) in itertools.pairwise(known):
        if ratio <= r1:
            return v0 + (v1 - v0) * (ratio - r0) / (r1 - r0)
    (r0, v0), (r1, v1) = known[-2], known[-1]
    return v1 + (v1 - v0) * (ratio - r1) / (r1 - r0)


def allocate(
    sensitivity: Sensitivity,
    saving: float,
    strength: float = 1.0,
    cap: float = MAX_LAYER_RATIO,
    round_to: int = 8,
    step: float = 0.05,
) -> dict[str, float]:
    """Per-layer pruning ratios that remove about ``saving`` of the model's MACs where it hurts
    least, from the measured curves of each layer pruned alone.

    Greedy, in steps of ``step``: the next step goes to the layer whose step removes the most
    MACs per point of metric it costs, (MACs removed) / (metric lost + 0.001) ** ``strength``,
    both read off that layer's curves (between the measured ratios, linearly). Savings of
    separate layers are added, which overstates what two adjacent layers save together;
    ``matched`` corrects for it. A layer stops at ``cap``, at the largest ratio measured on it
    (the curves are not extrapolated: a layer that loses little at 0.75 alone may still break
    at 0.9 beside its pruned neighbours), and before it would keep fewer than ``round_to``
    channels (which prune would refuse to cut).
    """
    layers = [la for la in sensitivity.layers if la.prune and la.saved]
    ratios = {la.name: 0.0 for la in layers}
    caps = {  # never past the largest ratio measured on the layer: no guessing beyond it
        la.name: min(
            cap,
            max(float(r) for r in la.prune),
            1 - round_to / la.channels if la.channels > round_to else cap,
        )
        for la in layers
    }
    total = 0.0
    while total < saving:
        best: tuple[float, str, float] | None = None
        for la in layers:
            now, nxt = ratios[la.name], ratios[la.name] + step
            if nxt > caps[la.name] + 1e-9:
                continue
            gain = _curve(la.saved, nxt, 0.0) - _curve(la.saved, now, 0.0)
            lost = _curve(la.prune, now, sensitivity.baseline) - _curve(
                la.prune, nxt, sensitivity.baseline
            )
            value = gain / (max(lost, 0.0) + 0.001) ** strength
            if gain > 0 and (best is None or value > best[0]):
                best = (value, la.name, gain)
        if best is None:
            break
        ratios[best[1]] += step
        total += best[2]
    return {n: round(r, 3) for n, r in ratios.items()}


def layer_ratios(sensitivity: Sensitivity, saving: float, strength: float = 1.0) -> tuple[str, ...]:
    """``allocate``'s ratios as prune's ``layer_ratios`` entries ("features.0:0.35")."""
    ratios = allocate(sensitivity, saving, strength)
    return tuple(f"{name}:{value:g}" for name, value in ratios.items())


def matched(
    workload: Workload,
    sensitivity: Sensitivity,
    ratio: float,
    strength: float,
    *,
    steps: int = 10,
    threads: int | None = None,
) -> tuple[str, ...]:
    """``layer_ratios`` entries that remove as many MACs as ``prune:ratio`` does, steered by
    sensitivity with ``strength``.

    ``allocate`` adds the savings of layers pruned alone, which overstates what adjacent layers
    save together; so its target is found by bisection, pruning without training and counting
    MACs, until the pruned model's MACs match those of ``prune:ratio``.
    """
    from fulcrum.compression import compress
    from fulcrum.measure import torch_compute

    def macs(recipe: str) -> int:
        model = compress(workload.model, recipe, workload, threads=threads).model
        assert model is not None
        return torch_compute(model, workload.example_inputs)[0]

    goal = macs(f"prune:ratio={ratio}")
    low, high = 0.0, 3.0  # savings of layers alone add up past 1 when they are pruned together
    best: tuple[float, tuple[str, ...]] = (float("inf"), ())
    for _ in range(steps):
        middle = (low + high) / 2
        entries = layer_ratios(sensitivity, middle, strength)
        found = macs(f"prune:ratio=0.0,layer_ratios={'+'.join(entries)}")
        if abs(found - goal) < best[0]:
            best = (abs(found - goal), entries)
        if found > goal:
            low = middle
        else:
            high = middle
    return best[1]


def cached(
    workload: Workload,
    folder: Path,
    *,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Sensitivity:
    """``analyse``'s result kept in ``folder/sensitivity.json`` and reused when it is there."""
    path = folder / "sensitivity.json"
    if path.is_file():
        with_data = json.loads(path.read_text())
        if with_data.get("workload") == workload.name:
            return Sensitivity.from_dict(with_data)
    result = analyse(workload, threads=threads, progress=progress, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
