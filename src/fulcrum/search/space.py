"""The search space: recipes composed from the techniques' own dimensions, and warm starts.

Each registered technique that a search may draw declares how (``techniques.base.Search``): its
role, its dimensions (its Optuna parameters, named in its own file), when it applies, and its
warm-start points. This module only composes them, in the one order in which each step can use
what came before: structural changes, then a recovery, then graph steps, then quantization. A
technique registered with a ``search`` is drawn by registering it; nothing here names one.
"""

from __future__ import annotations

from typing import Any

from fulcrum.techniques import TECHNIQUES, Scope, Technique, TechniqueConfig, Trial, get


def by_role(role: str, scope: Scope) -> list[Technique]:
    """The registered techniques of ``role`` that apply in ``scope``, in their order."""
    get("quantize")  # (importing the package registers every technique)
    found = [
        t
        for t in TECHNIQUES.values()
        if t.search is not None and t.search.role == role and t.search.applies(scope)
    ]
    return sorted(found, key=lambda t: (t.search.order if t.search else 0, t.name))


def switch(technique: Technique) -> str:
    """The name of the choice whether to use ``technique``."""
    return f"use_{technique.name}"


def recovery_choice(scope: Scope) -> str:
    """The name of the choice among recovery techniques (a distribution's choices are fixed per
    name: without labels to fine-tune on, the choices differ, and so does the name)."""
    return "recovery" if scope.labelled else "recovery.unlabelled"


def suggest_recipe(trial: Trial, scope: Scope) -> tuple[TechniqueConfig, ...]:
    """A recipe drawn by ``trial``: each structural technique used or not, a recovery (or none)
    when anything lossy happened, graph steps, then quantization, which is not optional when no
    other step was drawn (an empty recipe is the baseline, measured already)."""
    steps: list[TechniqueConfig] = []
    for technique in by_role("structural", scope):
        if _used(trial, technique):
            steps.append(_draw(technique, trial, scope))
    if steps:
        recovery = by_role("recovery", scope)
        choice = trial.suggest_categorical(
            recovery_choice(scope), [t.name for t in recovery] + ["none"]
        )
        if choice != "none":
            steps.append(_draw(get(choice), trial, scope))
    for technique in by_role("graph", scope):
        if _used(trial, technique):
            steps.append(_draw(technique, trial, scope))
    for technique in by_role("quantization", scope):
        if not steps or _used(trial, technique):
            steps.append(_draw(technique, trial, scope))
    return tuple(steps)


def _used(trial: Trial, technique: Technique) -> bool:
    assert technique.search is not None
    use = technique.search.use
    return use is None or bool(trial.suggest_categorical(switch(technique), list(use)))


def _draw(technique: Technique, trial: Trial, scope: Scope) -> TechniqueConfig:
    assert technique.search is not None
    return technique.search.draw(trial, scope)


def warm_starts(scope: Scope) -> list[dict[str, Any]]:
    """Recipes known to be strong, as the parameters that draw them, tried first so that the
    sampler starts from good points: quantization alone, then each structural technique's warm
    starts (by rank) with the recovery each asks for and quantization after it. Parameters a
    warm start leaves out are drawn. Where the probe kept no quantization mode, the
    quantization-only start is dropped and the others go without quantization."""
    structural = by_role("structural", scope)
    starts: list[dict[str, Any]] = []
    alone = _last_steps(scope, "alone")
    if alone is not None:
        starts.append({**{switch(t): False for t in structural}, **alone})
    points = sorted(
        (p for t in structural if t.search for p in t.search.warm_starts(scope)),
        key=lambda p: p.rank,
    )
    for point in points:
        params: dict[str, Any] = {switch(t): t.name in point.params for t in structural}
        for own in point.params.values():
            params.update(own)
        params.update(_recovery(scope, point.recovery))
        student = "student" if point.recovery == "student" else "after"
        last = _last_steps(scope, student)
        quantizers = by_role("quantization", scope)
        params.update(last if last is not None else {switch(t): False for t in quantizers})
        starts.append(params)
    return starts


def _recovery(scope: Scope, kind: str) -> dict[str, Any]:
    """The first recovery technique that takes part in a warm start of ``kind``, chosen."""
    for technique in by_role("recovery", scope):
        assert technique.search is not None
        part = technique.search.warm(scope, kind)
        if part is not None:
            return {recovery_choice(scope): technique.name, **part}
    return {}


def _last_steps(scope: Scope, kind: str) -> dict[str, Any] | None:
    """The graph steps' and quantization's parts in a warm start; None without quantization."""
    params: dict[str, Any] = {}
    for technique in by_role("graph", scope):
        assert technique.search is not None
        part = technique.search.warm(scope, kind)
        if part is not None:
            params.update({switch(technique): True, **part})
    quantized = False
    for technique in by_role("quantization", scope):
        assert technique.search is not None
        part = technique.search.warm(scope, kind)
        if part is not None:
            params.update({switch(technique): True, **part})
            quantized = True
    return params if quantized else None
