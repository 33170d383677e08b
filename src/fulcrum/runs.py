"""A compress run: apply a recipe, measure before and after, write the run folder.

``fulcrum compress`` is this function and a table. Its ``results.json`` is the run record every
command writes (``fulcrum.runfolder.Run``): one trial, which is also the frontier and the pick,
and the before/after ``comparison`` on every runtime the candidate runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fulcrum import distributed
from fulcrum.compression import Recipe, compress, recipe_from, recipe_text, save_candidate
from fulcrum.frontier import Budget
from fulcrum.measure import environment, layer_rows
from fulcrum.measuring import Measurement, measure
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runfolder import (
    Comparison,
    CompressSettings,
    Figures,
    LatencyRow,
    LayerRow,
    Pick,
    Point,
    Run,
    Side,
    StepRecord,
    Trial,
    claim,
    staged,
    write,
    write_owner,
)
from fulcrum.runtimes import default_threads
from fulcrum.techniques import Candidate
from fulcrum.workloads import Workload, source_of


def compress_run(
    workload: Workload,
    recipe: str | Recipe,
    *,
    seed: int = 0,
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    seconds: float = 2.0,
    progress: Callable[[str], None] | None = None,
    out: Path | None = None,
) -> Run | None:
    """Compress, then measure the baseline and the candidate side by side on the candidate's
    runtime (evaluated there, counted, timed at each batch size) and timed on the other
    runtimes they both run on; write the run folder ``out``. Under torchrun, a process other
    than rank 0 trains its share and returns None."""
    threads = threads or default_threads()
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    steps = recipe_from(recipe) if isinstance(recipe, str) else tuple(recipe)
    owner = {"recipe": recipe_text(steps), "seed": seed}
    if out is not None and distributed.rank() == 0:  # another run's folder: refused before work
        claim(out, "compress", source_of(workload), owner, create=False)
    candidate = compress(workload.model, steps, workload, seed=seed, threads=threads, progress=say)
    compress_seconds = round(time.perf_counter() - start, 2)
    if distributed.rank() > 0:  # a torchrun peer has trained its share; rank 0 measures, writes
        return None
    runtime = candidate.runtime  # where its deployed form runs: torch for a float model
    say(f"measuring the baseline and the candidate side by side on {runtime}")
    measured = {runtime: _measure(workload, candidate, runtime, threads, batch_sizes, seconds)}
    if isinstance(workload.model, nn.Module):  # both also run on the other runtime: timed there
        other = "torch" if runtime == "onnxruntime" else "onnxruntime"
        both = {"baseline": Candidate.of(workload.model)}
        if not candidate.final:
            both["candidate"] = candidate
        measured[other] = measure(
            workload,
            both,
            runtime=other,
            threads=threads,
            seconds=seconds,
            batch_sizes=batch_sizes,
            tune=False,
            evaluate=False,
            count=False,
        )
    settings = CompressSettings(
        recipe=recipe_text(steps),
        seed=seed,
        runtime=runtime,
        batch_sizes=list(batch_sizes),
        threads=threads,
        seconds=seconds,
    )
    run = _record(workload, candidate, settings, measured, compress_seconds)
    if out is not None:  # written whole or not at all
        with staged(out) as staging:
            save_candidate(candidate, staging, workload.example_inputs, source_of(workload))
            write_owner(staging, "compress", source_of(workload), owner)
            write(staging, run)
    return run


def _measure(
    workload: Workload,
    candidate: Candidate,
    runtime: str,
    threads: int,
    batch_sizes: Sequence[int],
    seconds: float,
) -> dict[str, Measurement]:
    """Baseline and candidate on the candidate's runtime: evaluated, counted and timed."""
    return measure(
        workload,
        {"baseline": Candidate.of(workload.model), "candidate": candidate},
        runtime=runtime,
        threads=threads,
        seconds=seconds,
        batch_sizes=batch_sizes,
        tune=False,
    )


def _record(
    workload: Workload,
    candidate: Candidate,
    settings: CompressSettings,
    measured: dict[str, dict[str, Measurement]],
    compress_seconds: float,
) -> Run:
    """The run record of a compress run: one trial, the comparison."""
    runtime, text = settings.runtime, settings.recipe
    base, cand = measured[runtime]["baseline"], measured[runtime]["candidate"]
    ratio = cand.latencies[0].median_ms / base.latencies[0].median_ms
    point = Point(trial="0", recipe=text, **_figures(cand, ratio * base.latency_ms, ratio))
    notes = [n for s in candidate.steps for n in s.notes]
    trial = Trial(
        number=0,
        state="COMPLETE",
        recipe=text,
        constraints=[0.0],
        seconds=compress_seconds,
        notes=notes,
        **_figures(cand, point.latency_ms, ratio),
    )
    baseline = Figures(**_figures(base, base.latency_ms, 1.0))
    return Run(
        command="compress",
        workload=source_of(workload),
        task=workload.task,
        settings=settings,
        budget=Budget(metric="metric", baseline=baseline.metric),
        baseline=baseline,
        trials=[trial],
        frontier=[point],
        pick=Pick(policy="recipe", reason=f"the result of the recipe {text}", point=point),
        seconds=compress_seconds,
        environment=environment(base.threads),
        layers=_layers(workload, candidate),
        comparison=Comparison(
            recipe=text,
            steps=[
                StepRecord(config=s.config, seconds=s.seconds, notes=list(s.notes), facts=s.facts)
                for s in candidate.steps
            ],
            runtime=runtime,
            compress_seconds=compress_seconds,
            main_metric=MAIN_METRIC[workload.task],
            baseline=_side(base, measured, "baseline"),
            candidate=_side(cand, measured, "candidate"),
            latency=[
                LatencyRow(
                    model=label,
                    runtime=rt,
                    batch_size=lat.batch_size,
                    median_ms=lat.median_ms,
                    p90_ms=lat.p90_ms,
                    runs=lat.runs,
                    threads=lat.threads,
                )
                for rt, found in measured.items()
                for label, m in found.items()
                for lat in m.latencies
            ],
        ),
    )


def _figures(m: Measurement, latency_ms: float, ratio: float) -> dict[str, Any]:
    assert m.metric is not None and m.macs is not None and m.params is not None
    return {
        "metric": m.metric,
        "metrics": m.metrics,
        "latency_ms": round(latency_ms, 5),
        "latency_ratio": round(ratio, 4),
        "size_bytes": m.size_bytes,
        "macs": m.macs,
        "params": m.params,
        "threads": m.threads,
        "runtime": m.runtime,
        "compile_seconds": m.compile_seconds,
    }


def _side(m: Measurement, measured: dict[str, dict[str, Measurement]], label: str) -> Side:
    """One side of the comparison, with its bytes in every format any runtime measured."""
    sizes: dict[str, int] = {}
    for found in measured.values():
        if label in found:
            sizes.update(found[label].sizes)
    assert m.macs is not None and m.params is not None and m.params_nonzero is not None
    return Side(
        metrics=m.metrics,
        params=m.params,
        params_nonzero=m.params_nonzero,
        macs=m.macs,
        bytes=sizes,
    )


def _layers(workload: Workload, candidate: Candidate) -> dict[str, list[LayerRow]]:
    """The report's layer table: baseline and compressed model, where both are PyTorch."""
    if not isinstance(workload.model, nn.Module) or candidate.model is None:
        return {}
    models = {"baseline": workload.model, "sweet spot": candidate.model}
    return {
        name: [LayerRow(**row) for row in layer_rows(m, workload.example_inputs)]
        for name, m in models.items()
    }
