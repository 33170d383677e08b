"""The one place a candidate is measured: ``measure()``.

A candidate is deployed on a runtime (``fulcrum.runtimes``), evaluated on the workload's
validation split, timed beside the baseline in the same interleaved rounds (each at its fastest
intra-op thread count where the runtime lets a session choose), and counted (parameters, MACs,
the bytes of its artifact in each format it ships in). Every caller measures through here: a
search's baseline, its quantization probe, each trial and the finalists, and a compress run.

Latency convention: ``latency_ratio`` is the candidate's median over the baseline's median in
the same rounds (machine drift cancels), and ``latency_ms`` is that ratio times the baseline's
recorded latency, so that figures measured minutes apart stay comparable. The baseline itself
(measured with no baseline beside it) has ratio 1 and its own median.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx
import torch
from onnx import numpy_helper

from fulcrum import runtimes, timing
from fulcrum.evaluation import evaluate_workload
from fulcrum.measure import parameter_counts, profile, torch_compute
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runtimes import OnnxModel, Session
from fulcrum.runtimes.torch_eager import safetensors_bytes
from fulcrum.techniques import Candidate

if TYPE_CHECKING:
    from fulcrum.workloads import Workload


@dataclass(frozen=True)
class Measurement:
    """What was measured of one candidate on one runtime (fields are None when not asked for).

    ``size_bytes`` is the deployed artifact's bytes in its runtime's format; ``sizes`` has the
    bytes of every format that holds the deployed model (a quantized graph has no safetensors
    form: its float weights are not what runs). ``latencies`` has one entry per batch size; the
    ratio and ``latency_ms`` are at the first.
    """

    runtime: str
    batch_size: int
    threads: int
    latency_ms: float
    latency_ratio: float
    latencies: tuple[timing.Latency, ...]
    size_bytes: int
    sizes: dict[str, int]
    metric: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    params: int | None = None
    params_nonzero: int | None = None
    macs: int | None = None
    ratio_range: tuple[float, float] | None = None  # over the rounds, when timed in several
    compile_seconds: float | None = None  # a compiling target's first calls, kept from latency
    session: Session | None = field(default=None, repr=False, compare=False)  # what was timed


def output_of(workload: Workload) -> str | None:
    """The output an ONNX workload is judged on (its graph's compressed forms keep the name)."""
    return workload.model.chosen_output if isinstance(workload.model, OnnxModel) else None


def deploy(
    workload: Workload, candidate: Candidate, runtime: str, threads: int | None = None
) -> Session:
    """``candidate`` as it runs on ``runtime`` with ``threads`` intra-op threads (default:
    every core this process may use)."""
    return runtimes.get(runtime).deploy(
        candidate,
        workload.example_inputs,
        threads=threads or runtimes.default_threads(),
        output=output_of(workload),
    )


def measure(
    workload: Workload,
    entries: Mapping[str, Candidate | Session],
    *,
    runtime: str,
    threads: int,
    seconds: float,
    batch_sizes: Sequence[int] = (1,),
    baseline: Session | None = None,
    reference_ms: float | None = None,
    tune: bool = True,
    evaluate: bool = True,
    count: bool = True,
    rounds: int = 1,
) -> dict[str, Measurement]:
    """Measure each entry (a candidate, deployed here on ``runtime``, or a session already
    deployed, such as a saved finalist) and return a Measurement per label.

    With ``baseline``, it is timed in the same rounds and ratios are against it (and
    ``latency_ms`` is the ratio times ``reference_ms``); without, each entry's ratio is 1 and its
    latency its own. ``tune`` lets each entry run at its fastest thread count
    (``timing.compare_tuned``); ``seconds`` is the timing budget per timed session. With
    ``rounds`` > 1, the whole comparison is timed that many times (the thread counts chosen in
    the first) and the ratio is the median of the rounds' ratios, their range kept: a ratio
    that one round puts either side of 1 shows as such. ``evaluate`` scores every
    entry on the validation split (a saved finalist's metric was measured when it was made);
    ``count`` adds parameters and MACs.
    """
    sessions = {
        label: deploy(workload, entry, runtime, threads) if isinstance(entry, Candidate) else entry
        for label, entry in entries.items()
    }
    scores = {label: _scores(workload, s, threads) for label, s in sessions.items() if evaluate}
    timed = _timed(workload, sessions, baseline, threads, seconds, batch_sizes, tune, rounds)
    out = {}
    for label, session in sessions.items():
        entry = entries[label]
        candidate = entry if isinstance(entry, Candidate) else None
        latencies, chosen, ratios = timed[label]
        ratio = statistics.median(ratios)
        found = scores.get(label, {})
        figures = _counts(candidate, workload.example_inputs) if count and candidate else {}
        out[label] = Measurement(
            runtime=session.runtime,
            batch_size=batch_sizes[0],
            threads=chosen,
            latency_ms=round(ratio * reference_ms, 5) if reference_ms else latencies[0].median_ms,
            latency_ratio=round(ratio, 4),
            latencies=latencies,
            size_bytes=session.artifact_bytes(),
            sizes=_sizes(candidate, session, session.runtime),
            metric=found.get("metric"),
            metrics=found.get("metrics", {}),
            ratio_range=(round(min(ratios), 4), round(max(ratios), 4)) if rounds > 1 else None,
            compile_seconds=_compile_seconds(session),
            session=session,
            **figures,
        )
    return out


def _timed(
    workload: Workload,
    sessions: dict[str, Session],
    baseline: Session | None,
    threads: int,
    seconds: float,
    batch_sizes: Sequence[int],
    tune: bool,
    rounds: int,
) -> dict[str, tuple[tuple[timing.Latency, ...], int, list[float]]]:
    """Each session's latencies (of the first round) and chosen thread count, and its ratio to
    the baseline in each round (1 without a baseline)."""
    runners: dict[str, Any] = {
        **({"baseline": baseline} if baseline is not None else {}),
        **sessions,
    }
    out: dict[str, tuple[tuple[timing.Latency, ...], int, list[float]]] = {}
    for round_ in range(rounds):
        times = timing.compare_tuned(
            runners,
            workload.example_inputs,
            tune=list(sessions) if tune and round_ == 0 else [],
            batch_sizes=batch_sizes,
            threads=threads,
            seconds=seconds,
        )
        first = batch_sizes[0]
        for label in sessions:
            ratio = 1.0
            if baseline is not None:
                ratio = times[(label, first)][0].median_ms / times[("baseline", first)][0].median_ms
            if round_ == 0:
                latencies = tuple(times[(label, b)][0] for b in batch_sizes)
                chosen = times[(label, first)][1]
                out[label] = (latencies, chosen, [])
                runner = runners[label]
                if chosen != getattr(runner, "threads", chosen):  # later rounds: at its count
                    runners[label] = runner.with_threads(chosen)
            out[label][2].append(ratio)
    return out


def _compile_seconds(session: Session) -> float | None:
    """Seconds a compiling session (torch-compile) spent compiling, over every input shape it
    ran (the first call of each); None for a session that does not compile."""
    compiled = getattr(session, "compile_seconds", None)
    return round(sum(compiled.values()), 3) if compiled else None


def _scores(workload: Workload, session: Session, threads: int) -> dict[str, Any]:
    evaluation = evaluate_workload(workload, session, threads=threads)
    main = evaluation.metrics[MAIN_METRIC[workload.task]]
    return {"metric": float(main or 0.0), "metrics": evaluation.metrics}


def _sizes(candidate: Candidate | None, session: Session, runtime: str) -> dict[str, int]:
    """Bytes of every format that holds the deployed model."""
    sizes = {runtimes.get(runtime).artifact: session.artifact_bytes()}
    if candidate is not None and candidate.model is not None and not candidate.final:
        sizes.setdefault("safetensors", safetensors_bytes(candidate.model))
    return sizes


def _counts(candidate: Candidate, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    params, nonzero, macs = counts(candidate, example_inputs)
    return {"params": params, "params_nonzero": nonzero, "macs": macs}


def counts(candidate: Candidate, example_inputs: Sequence[torch.Tensor]) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, MACs) of a candidate: of its PyTorch model (a quantized
    graph computes what its float model did), or counted on its graph when it never had one."""
    if candidate.model is not None:
        total, _, nonzero = parameter_counts(candidate.model)
        if candidate.onnx is not None:  # what the deployed graph stores as weights
            nonzero = _graph_nonzero(candidate.onnx)
        return total, nonzero, torch_compute(candidate.model, example_inputs)[0]
    assert candidate.onnx is not None  # (a candidate is a model, a graph, or both)
    graph = profile(OnnxModel(candidate.onnx), example_inputs, latency=False)
    return graph.params_total, graph.params_nonzero, graph.macs


def _graph_nonzero(data: bytes) -> int:
    """Non-zero weights of an ONNX graph (float, int8 and uint8 initializers)."""
    weights = (1, 2, 3, 10, 11, 16)
    return sum(
        int((numpy_helper.to_array(i) != 0).sum())
        for i in onnx.load_from_string(data).graph.initializer
        if i.data_type in weights
    )
