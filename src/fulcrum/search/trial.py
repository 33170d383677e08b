"""One trial: draw a recipe, apply it, measure it (``fulcrum.measuring``), record it.

A recipe drawn again is not measured again: the trial takes the figures of the earlier trial
that measured it. A recovery is screened after each epoch (multi-fidelity): a candidate that
cannot reach the budget's floor stops early, as a pruned trial.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fulcrum import sensitivity
from fulcrum.artifacts import upload
from fulcrum.compression import PrefixCache, compress, recipe_text, save_candidate
from fulcrum.frontier import Point
from fulcrum.measuring import measure
from fulcrum.runfolder import Reference, Trial
from fulcrum.runtimes import Session
from fulcrum.search.settings import OBJECTIVES
from fulcrum.search.setup import Job, collapse_margin
from fulcrum.search.space import suggest_recipe
from fulcrum.techniques import Candidate, Scope

# multi-fidelity recovery: a recovery is screened after each epoch from the second on, once
# this many earlier trials have recovered to the end
SCREEN_AFTER = 3
SCREEN_SLACK = 0.005  # the screen's allowance for noise (0.5 pt of the main metric)
# what a trial records besides its figures; a trial that reuses an earlier one's figures takes
# every attribute but these
OWN_ATTRS = ("recipe", "worker", "same_as", "retry_of")


class Trialist:
    """Runs trials of one study in this process, reusing recipe prefixes it has already trained.

    Built by ``trialist()``; the constructor only stores what it is given."""

    def __init__(
        self, job: Job, reference: Reference, baseline: Session, cache: PrefixCache
    ) -> None:
        self.job, self.reference, self.baseline, self.cache = job, reference, baseline, cache
        self.allocations: dict[tuple[float, float], tuple[str, ...]] = {}
        self.baselines: dict[str, Session] = {job.settings.primary: baseline}

    def scope(self, target: str | None = None) -> Scope:
        found = self.reference.sensitivity
        allocatable = found is not None and any(layer.prune for layer in found.layers)
        return self.job.scope(self.reference, self.allocate if allocatable else None, target)

    def target(self, trial: optuna.Trial) -> str:
        """The target the trial deploys on: drawn when the search has several."""
        targets = self.job.settings.targets
        return (
            str(trial.suggest_categorical("target", list(targets)))
            if len(targets) > 1
            else targets[0]
        )

    def baseline_on(self, target: str) -> Session:
        """The baseline deployed on ``target``, at the thread count the set-up chose there."""
        if target not in self.baselines:
            threads = self.reference.targets[target].threads
            self.baselines[target] = self.job.baseline(threads, target)
        return self.baselines[target]

    def allocate(self, ratio: float, strength: float) -> tuple[str, ...]:
        """Per-layer ratios removing the MACs ``prune:ratio`` removes, steered by sensitivity
        with ``strength`` (``sensitivity.matched``); computed once per (ratio, strength)."""
        key = (ratio, strength)
        if key not in self.allocations:
            assert self.reference.sensitivity is not None
            self.allocations[key] = sensitivity.matched(
                self.job.workload,
                self.reference.sensitivity,
                ratio,
                strength,
                threads=self.job.threads,
            )
        return self.allocations[key]

    def objective(
        self, trial: optuna.Trial, wait: Callable[[], None] = lambda: time.sleep(1.0)
    ) -> list[float]:
        """Draw a recipe, apply it, measure it; ``wait`` is called while an earlier trial that
        drew the same recipe is still measuring it."""
        start = time.perf_counter()
        target = self.target(trial)
        recipe = suggest_recipe(trial, self.scope(target))
        text = recipe_text(recipe)
        trial.set_user_attr("recipe", text)
        self.job.progress(f"trial {trial.number}: {text}")
        earlier = same_recipe(trial, text, wait)
        if earlier is not None:
            return self.reuse(trial, earlier)
        candidate = compress(
            self.job.workload.model,
            recipe,
            self.job.workload,
            seed=self.job.settings.seed,
            threads=self.job.threads,
            on_epoch=self.screen(trial),
            cache=self.cache,
        )
        values = self.measure(trial, candidate, target)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        return [values[o] for o in self.job.settings.objectives]

    def measure(self, trial: optuna.Trial, candidate: Candidate, target: str) -> dict[str, float]:
        """Measure the candidate beside the baseline on its target (its latency on the scale
        of every target's baseline, timed together in the set-up), save its files, record its
        figures."""
        job = self.job
        base = self.reference.targets.get(target, self.reference.baseline)
        m = measure(
            job.workload,
            {"candidate": candidate},
            runtime=target,
            threads=job.threads,
            batch_sizes=(job.settings.batch_size,),
            seconds=job.settings.trial_seconds,
            baseline=self.baseline_on(target),
            reference_ms=base.latency_ms,
        )["candidate"]
        assert m.metric is not None and m.macs is not None and m.params is not None
        values = {
            "metric": m.metric,
            "latency_ms": m.latency_ms,
            "latency_ratio": m.latency_ratio,
            "size_bytes": m.size_bytes,
            "macs": m.macs,
            "params": m.params,
        }
        folder = job.run_dir / "trials" / str(trial.number)
        save_candidate(candidate, folder, job.workload.example_inputs, self.reference.workload)
        save = getattr(m.session, "save", None)  # a target whose artifact is its own (IR, .pt2)
        if save is not None:
            save(folder)
        if job.store is not None:  # where every machine of the study finds them
            upload(job.store, trial, folder)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("threads", m.threads)
        if m.compile_seconds is not None:
            trial.set_user_attr("compile_seconds", m.compile_seconds)
        trial.set_user_attr("runtime", target)
        trial.set_user_attr("metrics", m.metrics)
        trial.set_user_attr("notes", [n for s in candidate.steps for n in s.notes])
        self.constrain(trial, values)
        return values

    def constrain(self, trial: optuna.Trial, values: dict[str, Any]) -> None:
        """Optuna's constraints (<= 0 is within the budget), from the study's one budget."""
        over = self.reference.budget.constraints(Point(str(trial.number), values))
        for key, value in over.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("constraints", list(over.values()) or [0.0])

    def reuse(self, trial: optuna.Trial, earlier: FrozenTrial) -> list[float]:
        """The figures of the earlier trial that measured the same recipe, and its files."""
        trial.set_user_attr("same_as", earlier.number)
        if earlier.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"same recipe as trial {earlier.number}, pruned there")
        for key, value in earlier.user_attrs.items():
            if key not in OWN_ATTRS:
                trial.set_user_attr(key, value)
        self.job.progress(f"trial {trial.number}: same recipe as trial {earlier.number}, reused")
        trials = self.job.run_dir / "trials"
        if (trials / str(earlier.number)).is_dir():  # so that this one, too, can be picked
            shutil.copytree(
                trials / str(earlier.number), trials / str(trial.number), dirs_exist_ok=True
            )
        recorded = {k: earlier.user_attrs[k] for k in OBJECTIVES if k in earlier.user_attrs}
        self.constrain(trial, recorded)
        return list(earlier.values)

    def screen(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        """The recovery's per-epoch check: a candidate still collapsed after two epochs, or one
        that cannot reach the budget's floor however it goes on, stops as a pruned trial."""
        collapsed = self.reference.baseline.metric - collapse_margin(self.job.settings)
        floor = self.reference.budget.floor
        curve: list[float] = []  # the recovery's holdout metric after each epoch
        seen = recovery_curves(trial.study)

        def cut_short(epoch: int, value: float) -> None:
            curve.append(round(value, 6))
            trial.set_user_attr("recovery_curve", curve)
            if epoch >= 1 and value < collapsed:
                raise optuna.TrialPruned(f"holdout {value:.3f} after {epoch + 1} epochs")
            reason = hopeless(curve, seen, floor)
            if reason:
                raise optuna.TrialPruned(reason)

        return cut_short


def trialist(job: Job, reference: Reference) -> Trialist:
    """A Trialist for ``job``: the baseline deployed at the thread count the study chose for it
    (its reference latency was measured there), and the run folder's cache of trained prefixes,
    which every worker and a resumed search share."""
    baseline = job.baseline(reference.baseline.threads)
    cache = PrefixCache(job.run_dir / "cache", job.workload.model)
    return Trialist(job, reference, baseline, cache)


def recovery_curves(study: optuna.Study) -> list[list[float]]:
    """The holdout curves of the study's trials whose recovery ran to its end."""
    return [
        t.user_attrs["recovery_curve"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(t.user_attrs.get("recovery_curve", [])) >= 2
    ]


def hopeless(curve: Sequence[float], seen: Sequence[Sequence[float]], floor: float | None) -> str:
    """Why a recovery should stop now, or "" to go on: a short recovery screens, and only
    candidates that can still reach the metric budget recover in full (multi-fidelity).

    After epoch e (from the second), the most any earlier trial's recovery gained from its own
    epoch e to its end, plus a slack, is added to this one's holdout metric; if even that stays
    under the budget's floor, further epochs cannot bring the candidate within budget. With
    fewer than ``SCREEN_AFTER`` finished recoveries to learn from, nothing is screened. The
    holdout is carved from the baseline's training data, so it reads higher than validation
    and the screen errs on the side of going on.
    """
    epoch = len(curve) - 1
    if floor is None or epoch < 1:
        return ""
    longer = [c for c in seen if len(c) > epoch + 1]
    if len(longer) < SCREEN_AFTER:
        return ""
    gain = max(0.0, max(max(c[epoch + 1 :]) - c[epoch] for c in longer))
    if curve[-1] + gain + SCREEN_SLACK >= floor:
        return ""
    return (
        f"holdout {curve[-1]:.4f} after {epoch + 1} epochs; the most an earlier recovery gained "
        f"from there was {gain:.4f}, short of the budget's {floor:.4f}"
    )


def same_recipe(trial: optuna.Trial, text: str, wait: Callable[[], None]) -> FrozenTrial | None:
    """The earlier trial of the study whose figures stand for this one's recipe ``text``, if any.

    Earlier means lower-numbered. One that has finished is returned; one that is still measuring
    the recipe (in any process) is waited for, and so is one still drawing its recipe: of two
    trials that draw one recipe at the same moment the later-numbered always waits, and the
    recipe is measured once. If the earlier trial fails, this one measures the recipe itself.
    """
    measured, running = (TrialState.COMPLETE, TrialState.PRUNED), TrialState.RUNNING
    while True:
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        same = [
            t
            for t in earlier
            if t.user_attrs.get("recipe") == text and (t.state in measured or t.state == running)
        ]
        done = [t for t in same if t.state in measured]
        if done:
            return done[0]
        drawing = [t for t in earlier if t.state == running and "recipe" not in t.user_attrs]
        if not same and not drawing:
            return None
        wait()


def record(t: FrozenTrial) -> Trial:
    """An Optuna trial as the run records it (its user attributes are the trial's figures)."""
    attrs = dict(t.user_attrs)  # (``artifacts``, ``fulcrum.artifacts.ATTR``, among them)
    return Trial(
        number=t.number,
        state=t.state.name,  # type: ignore[arg-type]
        values=list(t.values) if t.values else None,
        search_params=t.params,
        started=t.datetime_start.isoformat() if t.datetime_start else None,
        seconds_total=(t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None,
        **attrs,  # an attribute the record does not know is refused: the schema says all
    )
