"""The end of a search: the Pareto frontier, its finalists re-measured, the sweet spot.

``search()`` runs (or resumes) the study (``fulcrum.study``), then builds the frontier over the
chosen objectives (``fulcrum.frontier``), re-measures its finalists interleaved with the baseline
with more repetitions, picks the sweet spot by policy, copies it to ``sweetspot/`` and writes
``results.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.errors import ConfigError, suggest
from fulcrum.study import OBJECTIVES, SearchSettings, Trialist, locked, run_study

if TYPE_CHECKING:
    from fulcrum.workloads import Workload


def check_policy(settings: SearchSettings) -> None:
    from fulcrum.frontier import POLICIES

    if settings.policy not in POLICIES:
        raise ConfigError(
            f"unknown policy {settings.policy!r}; choose from {', '.join(POLICIES)}."
            f"{suggest(settings.policy, POLICIES)}"
        )


def search(
    workload: Workload,
    settings: SearchSettings,
    run_dir: Path,
    *,
    spec: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    artifacts: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search in ``run_dir`` and pick the sweet spot.

    With ``artifacts`` (a folder or ``s3://bucket/prefix`` that every machine of the study
    reaches), each trial's files are uploaded there and the pick considers every trial of the
    study, fetching the files of those measured elsewhere. Returns the content of
    ``results.json``; ``result["pick"]["point"]`` is None when nothing met the budget.
    """
    check_policy(settings)
    study, trialist, seconds = run_study(
        workload,
        settings,
        run_dir,
        spec=spec,
        storage=storage,
        study_name=study_name,
        threads=threads,
        progress=progress,
        artifacts=artifacts,
    )
    (progress or (lambda _m: None))("re-measuring the finalists side by side with the baseline")
    with locked(run_dir / ".conclude.lock"):  # two searches ending in one folder write in turn
        return conclude(study, trialist, settings, run_dir, seconds, artifacts)


def _trial_record(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "values": list(t.values) if t.values else None,
        **t.user_attrs,  # "params" among them is the model's parameter count (an objective)
        "search_params": t.params,  # what the sampler drew
        "started": t.datetime_start.isoformat() if t.datetime_start else None,
        "seconds_total": (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None,
    }


def _layers(trialist: Trialist, chosen: Path | None) -> dict[str, list[dict[str, Any]]]:
    from fulcrum.compression import rebuild
    from fulcrum.measure import layer_rows

    workload = trialist.workload
    if trialist.graph_only:  # an ONNX workload: no PyTorch layers to list
        return {}
    model = workload.pytorch_model("search")
    models = {"baseline": model}
    if chosen is not None:
        models["sweet spot"] = rebuild(model, chosen)
    return {name: layer_rows(m, workload.example_inputs) for name, m in models.items()}


def conclude(
    study: Any,
    trialist: Trialist,
    settings: SearchSettings,
    run_dir: Path,
    search_seconds: float,
    artifacts: str | None = None,
) -> dict[str, Any]:
    """The frontier, its finalists re-measured, the pick, results.json and sweetspot/."""
    from optuna.trial import TrialState

    from fulcrum import frontier, timing
    from fulcrum.artifacts import ATTR, fetch, kind
    from fulcrum.compression import output_of
    from fulcrum.measure import environment
    from fulcrum.runtimes import OnnxModel

    reference = trialist.reference
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    # a study shared by machines: each holds the files of the trials it ran, and re-measures and
    # picks among those and those in the study's artifact store; the frontier covers them all
    stored = {str(t.number): t.user_attrs[ATTR] for t in complete if ATTR in t.user_attrs}
    here = {
        str(t.number)
        for t in complete
        if (run_dir / "trials" / str(t.number)).is_dir()
        or (trialist.store is not None and str(t.number) in stored)
    }

    def files_of(key: str) -> Path:
        """The trial's folder here, fetched from the artifact store if it was measured elsewhere."""
        folder = run_dir / "trials" / key
        return folder if folder.is_dir() else fetch(trialist.store, stored[key], folder)

    objectives = [frontier.Objective(o, OBJECTIVES[o]) for o in settings.objectives]
    keys = ("metric", "latency_ms", "latency_ratio", "size_bytes", "macs", "params")
    points = [
        frontier.Point(
            key=str(t.number),
            values={k: float(t.user_attrs[k]) for k in keys},
            # the intra-op thread count it ran fastest with (ONNX Runtime; absent in old studies)
            data={"recipe": t.user_attrs.get("recipe", ""), "threads": t.user_attrs.get("threads")},
        )
        for t in complete
    ]
    front = frontier.pareto_front(points, objectives) if points else []
    # finalists: re-measured with more repetitions, interleaved with the baseline
    finalists = [p for p in front if p.key in here][: settings.finalists]
    if finalists:
        runners: dict[str, Any] = {"baseline": trialist.runner}
        for p in finalists:
            folder = files_of(p.key)
            if settings.runtime == "onnxruntime":
                runners[p.key] = OnnxModel(
                    folder / "model.onnx", trialist.threads, output_of(trialist.workload)
                )
            else:
                from fulcrum.compression import rebuild

                runners[p.key] = rebuild(trialist.workload.pytorch_model("search"), folder)
        # each finalist at its fastest thread count; the baseline at the count the study chose
        # for it (its reference latency was measured there)
        times = timing.compare_tuned(
            runners,
            trialist.workload.example_inputs,
            tune=[p.key for p in finalists],
            batch_size=settings.batch_size,
            threads=trialist.threads,
            seconds=settings.final_seconds,
        )
        base_ms = times["baseline"][0].median_ms
        remeasured = {p.key: times[p.key][0].median_ms / base_ms for p in finalists}
        points = [
            replace(
                p,
                values={
                    **p.values,
                    "latency_ratio": round(remeasured[p.key], 4),
                    "latency_ms": round(remeasured[p.key] * reference["latency_ms"], 5),
                },
                data={**p.data, "threads": times[p.key][1]},
            )
            if p.key in remeasured
            else p
            for p in points
        ]
        front = frontier.pareto_front(points, objectives)
    budget = frontier.Budget(
        metric="metric",
        baseline=reference["metric"],
        max_drop=settings.max_drop,
        relative=settings.relative,
        limits=settings.limits(),
    )
    cost = next(o for o in settings.objectives if o != "metric")
    local = [p for p in points if p.key in here]
    chosen = frontier.pick(
        [p for p in local if p.key in {f.key for f in front}] or local,
        objectives,
        budget,
        settings.policy,
        cost=cost,
    )
    if chosen.point is not None:
        target = run_dir / "sweetspot"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(files_of(chosen.point.key), target)
    result = {
        "command": "search",
        "workload": reference["workload_source"],
        "task": trialist.workload.task,
        "settings": asdict(settings),
        "baseline": {
            k: reference[k]
            for k in ("metric", "latency_ms", "size_bytes", "macs", "params", "metrics", "threads")
            if k in reference
        },
        # which quantization modes made the baseline faster, measured before the trials
        "probe": reference.get("probe"),
        "fallback": reference.get("fallback"),
        # each layer pruned alone and left in float under int8 (``fulcrum.sensitivity``)
        "sensitivity": reference.get("sensitivity"),
        "trials": [_trial_record(t) for t in study.get_trials(deepcopy=False)],
        "frontier": [{"trial": p.key, **p.values, **p.data} for p in front],
        "pick": {
            "policy": chosen.policy,
            "reason": chosen.reason,
            "point": (
                {"trial": chosen.point.key, **chosen.point.values, **chosen.point.data}
                if chosen.point
                else None
            ),
            "closest": [{"trial": p.key, **p.values, **p.data} for p in chosen.closest],
        },
        "search_seconds": round(search_seconds, 1),
        # where `fulcrum export` fetches a trial measured on another machine (as reached here)
        "artifacts": str(Path(artifacts).resolve())
        if artifacts and kind(artifacts) == "folder"
        else artifacts,
        "environment": environment(trialist.threads),
        # the report's layer table, measured here so that the report only reads
        "layers": _layers(trialist, run_dir / "sweetspot" if chosen.point else None),
    }
    if len(local) < len(points):
        result["pick"]["reason"] += (
            f" (picked among the {len(local)} candidates whose files are in this run folder; "
            f"{len(points) - len(local)} more were measured on other machines)"
        )
    partial = run_dir / "results.json.partial"  # readers never see half a file
    partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
    partial.replace(run_dir / "results.json")
    return result
