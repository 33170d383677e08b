"""The end of a search: the Pareto frontier, its finalists re-measured, the sweet spot.

``conclude`` is a pure pick over the study's typed trial records (``runfolder.Trial``): the
frontier over the chosen objectives (``fulcrum.frontier``), then its finalists timed again
beside the baseline with more repetitions (one call of ``remeasure``, which the search makes a
call of ``fulcrum.measuring``), then the frontier again and the pick by policy under the
study's budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from fulcrum import frontier
from fulcrum.measuring import Measurement
from fulcrum.runfolder import Pick, Point, Reference, Trial
from fulcrum.search.settings import OBJECTIVES, SearchSettings

FIGURES = ("metric", "latency_ms", "latency_ratio", "size_bytes", "macs", "params")

# the finalists (frontier points whose files are here), timed again: by trial key
Remeasure = Callable[[list[frontier.Point]], Mapping[str, Measurement]]


def conclude(
    trials: list[Trial],
    reference: Reference,
    settings: SearchSettings,
    *,
    here: Collection[str],
    remeasure: Remeasure,
) -> tuple[list[Point], Pick, list[Point], dict[str, Pick]]:
    """The frontier, the pick and the runtime defaults (as timed again), among ``trials`` and
    ``reference.defaults``; ``here`` are the candidates whose files this machine has (a study
    shared by machines: each picks among those it can export). The defaults are always timed
    again with the finalists: the pick is never slower than a default within the budget."""
    objectives = [frontier.Objective(o, OBJECTIVES[o]) for o in settings.objectives]
    points = [
        frontier.Point(
            key=str(t.number),
            values={k: float(getattr(t, k)) for k in FIGURES},
            data=_data(t, settings.primary),
        )
        for t in trials
        if t.state == "COMPLETE"
    ]
    defaults = [
        frontier.Point(d.trial, d.model_dump(include=set(FIGURES)), _data(d, settings.primary))
        for d in reference.defaults
    ]
    points += defaults
    front = frontier.pareto_front(points, objectives) if points else []
    finalists = _finalists(
        [p for p in front if p.key in here and p not in defaults], reference, settings
    )
    finalists += [d for d in defaults if d.key in here]
    if finalists:
        measured = remeasure(finalists)
        points = [_remeasured(p, measured.get(p.key), reference) for p in points]
        front = frontier.pareto_front(points, objectives)
    local = [p for p in points if p.key in here]
    chosen = frontier.pick(
        [p for p in local if p.key in {f.key for f in front}] or local,
        objectives,
        reference.budget,
        settings.policy,
        cost=next(o for o in settings.objectives if o != "metric"),
    )
    reason = chosen.reason
    if len(local) < len(points):
        reason += (
            f" (picked among the {len(local)} candidates whose files are in this run folder; "
            f"{len(points) - len(local)} more were measured on other machines)"
        )
    pick = Pick(
        policy=chosen.policy,
        reason=reason,
        point=record(chosen.point) if chosen.point is not None else None,
        closest=[record(p) for p in chosen.closest],
    )
    timed_again = [record(p) for p in points if p.key in {d.trial for d in reference.defaults}]
    per_target = {}
    if len(settings.targets) > 1:  # the sweet spot of each target, beside the overall one
        for target in settings.targets:
            mine = [p for p in local if p.data.get("runtime") == target]
            found = frontier.pick(
                frontier.pareto_front(mine, objectives) if mine else [],
                objectives,
                reference.budget,
                settings.policy,
                cost=next(o for o in settings.objectives if o != "metric"),
            )
            per_target[target] = Pick(
                policy=found.policy,
                reason=found.reason,
                point=record(found.point) if found.point is not None else None,
                closest=[record(p) for p in found.closest],
            )
    return [record(p) for p in front], pick, timed_again, per_target


def _finalists(
    front: list[frontier.Point], reference: Reference, settings: SearchSettings
) -> list[frontier.Point]:
    """The frontier points timed again: those within the budget first, cheapest first on the
    cost the policy minimises (the pick is among them, so it is never chosen on a single short
    trial timing), then the others by metric, ``settings.finalists`` in all."""
    cost = next(o for o in settings.objectives if o != "metric")
    within = [p for p in front if not any(reference.budget.violations(p).values())]
    within.sort(key=lambda p: p.values[cost] * (1 if OBJECTIVES[cost] == "minimize" else -1))
    rest = [p for p in front if p not in within]
    return (within + rest)[: settings.finalists]


def _data(p: Point | Trial, primary: str) -> dict[str, Any]:
    """What a frontier point carries besides its objectives (a trial's target: the primary's
    where it recorded none)."""
    return {
        "recipe": p.recipe or "",
        "threads": p.threads,
        "metrics": p.metrics,
        "runtime": p.runtime or primary,
        "compile_seconds": p.compile_seconds,
    }


def _remeasured(
    point: frontier.Point, m: Measurement | None, reference: Reference
) -> frontier.Point:
    """A finalist with the latency of its careful re-measure (the ratio to the baseline in the
    same rounds, scaled by the baseline's recorded latency) and the threads it ran fastest with."""
    if m is None:
        return point
    latency = {"latency_ratio": m.latency_ratio, "latency_ms": m.latency_ms}
    data = {**point.data, "threads": m.threads, "ratio_range": m.ratio_range}
    return replace(point, values={**point.values, **latency}, data=data)


def record(p: frontier.Point) -> Point:
    """A frontier point as the run records it."""
    return Point(
        trial=p.key,
        recipe=p.data.get("recipe", ""),
        threads=p.data.get("threads"),
        metrics=p.data.get("metrics", {}),
        runtime=p.data.get("runtime", "onnxruntime"),
        ratio_range=p.data.get("ratio_range"),
        compile_seconds=p.data.get("compile_seconds"),
        metric=p.values["metric"],
        latency_ms=p.values["latency_ms"],
        latency_ratio=p.values["latency_ratio"],
        size_bytes=int(p.values["size_bytes"]),
        macs=int(p.values["macs"]),
        params=int(p.values["params"]),
    )
