"""A study's set-up, done once by the process that creates it: the baseline measured, the
quantization probe, the sensitivity analysis, and the warm starts queued. What it finds is the
study's :class:`~fulcrum.runfolder.Reference`, kept in the study for every process to read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from fulcrum import runtimes, sensitivity
from fulcrum.artifacts import kind, upload
from fulcrum.compression import compress, save_candidate
from fulcrum.errors import FulcrumError, first_line
from fulcrum.measuring import Measurement, counts, deploy, measure
from fulcrum.runfolder import Fallback, Figures, Point, ProbeVerdict, Reference
from fulcrum.runtimes import Session
from fulcrum.search.settings import SearchSettings
from fulcrum.search.space import warm_starts
from fulcrum.techniques import Candidate, Scope
from fulcrum.techniques.fuse import has_attention
from fulcrum.techniques.quantize import MODES
from fulcrum.workloads import source_of

if TYPE_CHECKING:
    from fulcrum.workloads import Workload

log = logging.getLogger(__name__)

# searches of fewer trials skip the probe, the sensitivity analysis and the warm starts
WARM_START_MIN_TRIALS = 10
# a mode is kept when it times at most this fraction of the baseline: a few percent either way
# is this machine's noise (fp16 on a CPU timed 0.99x and 1.01x in two runs)
PROBE_KEEP = 0.95
# the probe times each mode this many times as long as a trial times its candidate: its verdict
# holds for the whole study (one short timing flipped int8-static from 0.68x to 1.08x under load)
PROBE_TIMING = 4
# the search's sensitivity analysis: validation samples, and the layers (most MACs first) whose
# pruning curves it measures (3 prunings and evaluations each)
SENSITIVITY_SAMPLES = 256
SENSITIVITY_PRUNE_LAYERS = 24
# a layer is a fallback candidate when leaving it alone in float wins back this much of the
# metric int8 loses (0.2 pt); at most this many layers
FALLBACK_GAIN = 0.002
FALLBACK_LAYERS = 2


@dataclass(frozen=True)
class Job:
    """What one process of a study works with: the workload, the settings, the run folder."""

    workload: Workload
    settings: SearchSettings
    run_dir: Path
    threads: int
    progress: Callable[[str], None] = lambda _message: None
    store: Any = None  # the study's artifact store (``fulcrum.artifacts``), if it has one

    @property
    def transformer(self) -> bool:
        return isinstance(self.workload.model, nn.Module) and has_attention(self.workload.model)

    @property
    def graph_only(self) -> bool:
        """An ONNX workload: no PyTorch model to change or train."""
        return not isinstance(self.workload.model, nn.Module)

    def scope(
        self, reference: Reference | None = None, allocate: Any = None, target: str | None = None
    ) -> Scope:
        """What the techniques' search dimensions depend on on ``target`` (default: the
        primary), from what the set-up found."""
        target = target or self.settings.primary
        probe = reference.probe if reference is not None else None
        if target != self.settings.primary:
            probe = None  # the probe times the modes on the primary target only
        kept = sorted((v.latency_ratio or 1.0, m) for m, v in (probe or {}).items() if v.kept)
        modes = tuple(m for _, m in kept) if probe is not None else None
        runs = runtimes.get(target).quantize_modes  # what the target runs of them
        if runs is not None:
            modes = tuple(m for m in (modes if modes is not None else runs) if m in runs)
        fallback = reference.fallback if reference is not None else None
        return Scope(
            task=self.workload.task,
            runtime=target,
            transformer=self.transformer,
            graph_only=self.graph_only,
            max_epochs=self.settings.max_epochs,
            allocate=allocate,
            fallback=tuple(f.layer for f in fallback or ()),
            modes=modes,
        )

    def baseline(self, threads: int | None = None, target: str | None = None) -> Session:
        """The baseline as deployed on ``target`` (default: the primary), to time every
        candidate for that target beside."""
        candidate = Candidate.of(self.workload.model)
        target = target or self.settings.primary
        return deploy(self.workload, candidate, target, threads or self.threads)


def set_up(job: Job, study: Any, artifacts: str | None = None) -> Reference:
    """Measure the study's reference once and queue its warm starts."""
    settings, say = job.settings, job.progress
    say("measuring the baseline" + (" on every target" if len(settings.targets) > 1 else ""))
    targets = measure_baselines(job)
    figures = targets[settings.primary]
    reference = Reference(
        baseline=figures,
        targets=targets,
        budget=settings.budget(figures.metric),
        workload=source_of(job.workload),
        settings=settings,
        artifacts=kind(artifacts),  # every machine joining must reach a store of this kind
    )
    longer = settings.trials >= WARM_START_MIN_TRIALS  # worth it for longer searches
    baseline = job.baseline(figures.threads)
    reference.defaults = [*runtime_defaults(job, baseline, figures), *as_is(job, targets)]
    if job.store is not None:  # machines that join the study fetch them from there
        for point in reference.defaults:
            folder = job.run_dir / DEFAULTS / point.trial
            point.artifacts = upload(job.store, study, folder, f"runtime default {point.trial}")
    if longer and settings.primary == "onnxruntime" and "latency_ms" in settings.objectives:
        say("probing which quantization modes make this model faster")
        reference.probe = probe_quantization(job, baseline)
        for mode, verdict in reference.probe.items():
            figure = verdict.latency_ratio
            found = f"{figure:.2f}x the baseline's latency" if figure else verdict.error
            say(f"  quantize:{mode}: {found}" + ("" if verdict.kept else ", left out"))
    if longer and not job.graph_only:
        analyse_layers(job, reference)
    study.set_user_attr("baseline", reference.model_dump(mode="json"))
    if longer and not job.graph_only:
        for params in warm_starts(job.scope(reference)):
            study.enqueue_trial(params, skip_if_exists=True)
    return reference


def measure_baselines(job: Job) -> dict[str, Figures]:
    """The baseline deployed on every target, evaluated there and timed in the same rounds
    (each at its fastest thread count): the latencies of different targets compare."""
    base = Candidate.of(job.workload.model)
    sessions = {t: deploy(job.workload, base, t, job.threads) for t in job.settings.targets}
    measured = measure(
        job.workload,
        sessions,
        runtime=job.settings.primary,
        threads=job.threads,
        batch_sizes=(job.settings.batch_size,),
        seconds=2 * job.settings.final_seconds,
        count=False,
    )
    params, _, macs = counts(base, job.workload.example_inputs)
    return {t: figures_of(m, params=params, macs=macs) for t, m in measured.items()}


# the runtime's own default quantizations: a search on ONNX Runtime measures them once and keeps
# them among its candidates, so that its pick is never slower than what the runtime gives free
RUNTIME_DEFAULTS = {
    "onnxruntime": {
        "ort-static-default": "quantize:preset=ort",
        "ort-static-per-channel": "quantize:preset=ort-per-channel",
        "ort-dynamic-default": "quantize:int8-dynamic,preset=ort",
        "ort-dynamic-per-channel": "quantize:int8-dynamic,preset=ort-per-channel",
    }
}
DEFAULTS = "defaults"  # their files, in the run folder


def runtime_defaults(job: Job, baseline: Session, base: Figures) -> list[Point]:
    """The runtime's default quantizations of the baseline, measured as a trial is (evaluated,
    timed beside the baseline, counted) and saved under ``defaults/``; a default the workload
    cannot take (no calibration data, a graph it refuses) is left out."""
    workload, settings = job.workload, job.settings
    candidates: dict[str, Candidate] = {}
    recipes = RUNTIME_DEFAULTS.get(settings.primary, {})
    for key, recipe in recipes.items():
        try:
            candidates[key] = compress(workload.model, recipe, workload, threads=job.threads)
        except FulcrumError as exc:
            job.progress(f"  runtime default {recipe} does not apply: {first_line(exc, 160)}")
    if not candidates:
        return []
    job.progress("measuring the runtime's default quantizations")
    measured = measure(
        workload,
        candidates,
        runtime=settings.primary,
        threads=job.threads,
        batch_sizes=(settings.batch_size,),
        seconds=2 * settings.trial_seconds,
        baseline=baseline,
        reference_ms=base.latency_ms,
    )
    points = []
    for key, m in measured.items():
        folder = job.run_dir / DEFAULTS / key
        save_candidate(candidates[key], folder, workload.example_inputs, source_of(workload))
        points.append(Point(trial=key, recipe=recipes[key], **figures_of(m).model_dump()))
    return points


def as_is(job: Job, targets: dict[str, Figures]) -> list[Point]:
    """The baseline itself on each target, a candidate like any other (saved under
    ``defaults/``): where nothing compressed is faster within the budget, the pick says so by
    being the model as it is, never a slower one."""
    points = []
    for target, figures in targets.items():
        key = f"{target}-baseline"
        folder = job.run_dir / DEFAULTS / key
        candidate = Candidate.of(job.workload.model)
        save_candidate(candidate, folder, job.workload.example_inputs, source_of(job.workload))
        points.append(Point(trial=key, recipe="", **figures.model_dump()))
    return points


def figures_of(m: Measurement, params: int | None = None, macs: int | None = None) -> Figures:
    """A measurement as the run records it (``params`` and ``macs`` where it counted none)."""
    params, macs = (
        m.params if m.params is not None else params,
        m.macs if m.macs is not None else macs,
    )
    assert m.metric is not None and macs is not None and params is not None
    return Figures(
        metric=m.metric,
        metrics=m.metrics,
        latency_ms=m.latency_ms,
        latency_ratio=m.latency_ratio,
        size_bytes=m.size_bytes,
        macs=macs,
        params=params,
        threads=m.threads,
        runtime=m.runtime,
        compile_seconds=m.compile_seconds,
    )


def probe_quantization(job: Job, baseline: Session) -> dict[str, ProbeVerdict]:
    """Each quantization mode applied alone to the baseline and timed beside it, interleaved:
    a mode that does not make this model faster on this runtime is left out of a latency
    search (dynamic int8 of a conv net, fp16 on a CPU). What each mode measured is kept."""
    workload, settings = job.workload, job.settings
    found: dict[str, ProbeVerdict] = {}
    candidates: dict[str, Candidate] = {}
    modes = [m for m in MODES if m in (runtimes.get(settings.primary).quantize_modes or ())]
    for mode in modes:
        try:
            candidates[mode] = compress(
                workload.model, f"quantize:{mode}", workload, threads=job.threads
            )
        except FulcrumError as exc:  # calibration data missing, a graph it cannot take, ...
            found[mode] = ProbeVerdict(kept=False, error=first_line(exc, 200))
    measured = measure(
        workload,
        candidates,
        runtime=settings.primary,
        threads=job.threads,
        batch_sizes=(settings.batch_size,),
        seconds=2 * PROBE_TIMING * settings.trial_seconds,
        baseline=baseline,
        evaluate=False,
        count=False,
    )
    for mode, m in measured.items():
        found[mode] = ProbeVerdict(
            kept=m.latency_ratio < PROBE_KEEP, latency_ratio=m.latency_ratio, threads=m.threads
        )
    return {mode: found[mode] for mode in modes}


def analyse_layers(job: Job, reference: Reference) -> None:
    """The sensitivity analysis of the baseline (``fulcrum.sensitivity``), once per study: each
    layer pruned alone (for the allocation of pruning ratios; not for transformers, whose
    structure is searched by heads and layers) and int8 with each layer alone in float (for the
    fallback dimension, when int8-static is in the space). Kept in the reference, so that every
    machine sees it, and in the run folder's ``sensitivity.json``; the report plots it."""
    settings, probe = job.settings, reference.probe
    static = probe.get("int8-static") if probe is not None else None
    int8 = settings.primary == "onnxruntime" and (probe is None or bool(static and static.kept))
    prune = not job.transformer
    if not (int8 or prune):
        return
    job.progress(
        "measuring each layer's sensitivity"
        + (" to pruning" if prune else "")
        + (" and int8" if int8 else "")
    )
    found = sensitivity.cached(
        job.workload,
        job.run_dir,
        threads=job.threads,
        prune=prune,
        quantize=int8,
        latency=settings.primary == "onnxruntime",
        samples=SENSITIVITY_SAMPLES,
        prune_layers=SENSITIVITY_PRUNE_LAYERS,
        progress=lambda m: log.info("sensitivity: %s", m),
    )
    reference.sensitivity = found
    if found.int8_metric is None:
        return
    reference.fallback = int8_fallback(found, job.progress)
    collapsed = int8_collapses(found, reference.fallback, settings)
    if collapsed and probe is not None and static is not None:
        probe["int8-static"] = static.model_copy(update={"kept": False, "left_out": collapsed})
        job.progress(f"  quantize:int8-static left out: it {collapsed}")


def int8_fallback(found: sensitivity.Sensitivity, say: Callable[[str], None]) -> list[Fallback]:
    """The layers static int8 hurts most, from the sensitivity analysis of the baseline: int8
    everywhere, then int8 with each layer alone left in float."""
    if found.int8_metric is None:
        return []
    gains = sorted(
        (
            (layer.float_metric - found.int8_metric, layer.name)
            for layer in found.layers
            if layer.float_metric is not None
        ),
        reverse=True,
    )
    kept = [(gain, name) for gain, name in gains[:FALLBACK_LAYERS] if gain >= FALLBACK_GAIN]
    lost = (found.baseline - found.int8_metric) * 100
    say(
        f"  int8-static loses {lost:.2f} pt; "
        + (
            "left in float it wins back: "
            + ", ".join(f"{name} {gain * 100:+.2f} pt" for gain, name in kept)
            if kept
            else "no single layer in float wins back 0.2 pt"
        )
    )
    return [Fallback(layer=n, gain=round(g, 6)) for g, n in kept]


def collapse_margin(settings: SearchSettings) -> float:
    """How far below the baseline's metric a candidate has collapsed rather than lost a little:
    5 x the allowed drop, at least 20 pt."""
    return max(0.2, 5 * (settings.max_drop or 1.0) / 100)


def int8_collapses(
    found: sensitivity.Sensitivity, fallback: Sequence[Fallback], settings: SearchSettings
) -> str:
    """Why static int8 leaves the space though the probe found it faster: with the layers it
    hurts most left in float (their gains added) it still loses more than a collapsed trial
    does (``collapse_margin``). Empty when it does not (all-MiniLM-L6-v2: 61 pt lost, 0.4 won
    back; MobileNetV2: 14.4 lost, 11.4 won back by its stem)."""
    if found.int8_metric is None:
        return ""
    lost = found.baseline - found.int8_metric - sum(f.gain for f in fallback)
    if lost <= collapse_margin(settings):
        return ""
    kept = f" with {len(fallback)} layers in float" if fallback else ""
    return f"collapses: loses {lost * 100:.1f} pt{kept}"
