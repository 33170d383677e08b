"""Latency: warm-up, then interleaved timed runs, summarised as percentiles.

Everything compared is timed in one process, interleaved in rounds, so that the drift of a
shared machine hits every candidate alike and ratios between them stay honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fulcrum import runtimes


@dataclass(frozen=True)
class Latency:
    runtime: str
    batch_size: int
    threads: int
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    spread_pct: float  # (p90 - p10) / median
    throughput_per_s: float


def time_interleaved(
    calls: dict[Any, Callable[[], object]],
    *,
    warmup: int = 5,
    seconds: float = 2.0,
    min_runs: int = 30,
    max_runs: int = 500,
    block: int = 5,
) -> dict[Any, list[float]]:
    """Time every callable in interleaved rounds; return each one's run times in seconds.

    Each round gives every callable one untimed run (other runtimes' worker threads may still
    be spinning from their turn) and then ``block`` timed runs. Interleaving means slow phases of
    a drifting machine hit every callable alike, so ratios between them stay honest.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    start = time.perf_counter()
    for fn in calls.values():
        fn()
    per_run = max(time.perf_counter() - start, 1e-6)
    runs = int(min(max(seconds / per_run, min_runs), max_runs))
    rounds = max(1, -(-runs // block))
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    return times


def summarize(runtime: str, batch_size: int, threads: int, seconds: list[float]) -> Latency:
    ms = np.asarray(seconds) * 1e3
    median = float(np.median(ms))
    p10, p90, p99 = (float(v) for v in np.percentile(ms, [10, 90, 99]))
    return Latency(
        runtime=runtime,
        batch_size=batch_size,
        threads=threads,
        runs=len(ms),
        median_ms=round(median, 4),
        p90_ms=round(p90, 4),
        p99_ms=round(p99, 4),
        min_ms=round(float(ms.min()), 4),
        spread_pct=round((p90 - p10) / median * 100, 2),
        throughput_per_s=round(batch_size / (median / 1e3), 2),
    )


def torch_call(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return model(*batch)

    return call


def bind(fn: Callable[..., object], batch: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    return lambda: fn(*batch)


def compare_latency(
    runners: dict[str, Callable[..., object]],
    example_inputs: Sequence[torch.Tensor],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int | None = None,
    seconds: float = 2.0,
) -> dict[tuple[str, int], Latency]:
    """Time several models side by side, interleaved in one process, at each batch size.

    ``runners`` maps a label (say "baseline/onnxruntime") to a callable taking the model inputs.
    """
    threads = threads or runtimes.default_threads()
    calls: dict[tuple[str, int], Callable[[], object]] = {}
    with runtimes.torch_threads(threads), torch.inference_mode():
        for b in batch_sizes:
            batch = runtimes.with_batch(runtimes.as_inputs(tuple(example_inputs)), b)
            for label, runner in runners.items():
                calls[(label, b)] = bind(runner, batch)
        times = time_interleaved(calls, seconds=seconds * len(batch_sizes))
    return {key: summarize(key[0], key[1], threads, values) for key, values in times.items()}


# another thread count than the one asked for is taken only when it is at least this much faster
# (a few percent either way is this machine's noise, and picking the fastest of noisy medians
# would flatter whatever is tuned)
THREADS_GAIN = 0.95


def compare_tuned(
    runners: dict[str, Callable[..., object]],
    example_inputs: Sequence[torch.Tensor],
    *,
    tune: Sequence[str],
    batch_sizes: Sequence[int],
    threads: int,
    seconds: float,
) -> dict[tuple[str, int], tuple[Latency, int]]:
    """Like ``compare_latency``, and each session named in ``tune`` whose runtime lets a
    session choose its threads (``Runtime.tunes_threads``) is also timed with each intra-op
    thread count of ``runtimes.thread_choices(threads)``; each runner's latency at each batch
    size is at its fastest count there, returned beside it.

    The session's thread count is a deployment setting like the graph itself: a small model can
    run faster on fewer threads than the machine has. ``seconds`` is per runner and batch size,
    as ``compare_latency`` gives it for two.
    """
    variants: dict[str, dict[int, Callable[..., object]]] = {}  # label -> thread count -> runner
    own: dict[str, int] = {}  # the count each runner came with
    for label, runner in runners.items():
        if not _tunable(runner):  # a PyTorch model: the process's threads
            own[label] = getattr(runner, "threads", threads)
            variants[label] = {own[label]: runner}
            continue
        assert isinstance(runner, runtimes.Session)
        own[label] = runner.threads
        counts = {*runtimes.thread_choices(threads), runner.threads} if label in tune else set()
        variants[label] = {c: runner.with_threads(c) for c in counts - {runner.threads}}
        variants[label][runner.threads] = runner
    times = compare_latency(
        {f"{label}@{c}": r for label, byc in variants.items() for c, r in byc.items()},
        example_inputs,
        batch_sizes=batch_sizes,
        threads=threads,
        seconds=seconds * sum(map(len, variants.values())) / 2,
    )
    out = {}
    for label, byc in variants.items():
        for b in batch_sizes:
            found = {c: times[(f"{label}@{c}", b)] for c in byc}
            count = min(found, key=lambda c: found[c].median_ms)
            if found[count].median_ms > THREADS_GAIN * found[own[label]].median_ms:
                count = own[label]
            out[(label, b)] = (found[count], count)
    return out


def _tunable(runner: object) -> bool:
    """Whether ``runner`` is a session whose runtime gives each session its own threads."""
    if not isinstance(runner, runtimes.Session):
        return False
    return runtimes.get(runner.runtime).tunes_threads
