"""``search()``: run (or resume, or join) the study, then pick the sweet spot and write the run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState
from torch import nn

from fulcrum import frontier, runtimes
from fulcrum.artifacts import fetch, kind
from fulcrum.compression import rebuild
from fulcrum.measure import environment, layer_rows
from fulcrum.measuring import Measurement, measure, output_of
from fulcrum.runfolder import LayerRow, Run, Trial, write
from fulcrum.search.loop import run_study
from fulcrum.search.settings import SearchSettings
from fulcrum.search.setup import DEFAULTS
from fulcrum.search.storage import locked
from fulcrum.search.trial import Trialist, record
from fulcrum.sweetspot import conclude

if TYPE_CHECKING:
    from fulcrum.workloads import Workload


# the finalists and the runtime defaults are timed in this many separate rounds, each
# interleaved with the baseline; their ratio is the median round's, and its range is kept
FINAL_ROUNDS = 4


def search(
    workload: Workload,
    settings: SearchSettings,
    run_dir: Path,
    *,
    spec: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    threads: int | None = None,
    progress: Any = None,
    artifacts: str | None = None,
) -> Run:
    """Run (or resume) the search in ``run_dir``, pick the sweet spot, write ``results.json``.

    With ``artifacts`` (a folder or ``s3://bucket/prefix`` that every machine of the study
    reaches), each trial's files are uploaded there and the pick considers every trial of the
    study, fetching the files of those measured elsewhere. Returns the run as written;
    ``run.pick.point`` is None when nothing met the budget.

    >>> run = fulcrum.search(fulcrum.load_workload("digits"), SearchSettings(trials=20),
    ...                      Path("runs/digits"))  # doctest: +SKIP
    """
    study, own, seconds = run_study(
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
        return finish(study, own, seconds, artifacts)


def finish(study: Any, own: Trialist, seconds: float, artifacts: str | None) -> Run:
    """The frontier, its finalists re-measured, the pick, ``sweetspot/`` and ``results.json``."""
    job, reference, settings = own.job, own.reference, own.job.settings
    trials = [record(t) for t in study.get_trials(deepcopy=False)]
    files = Files(own, trials)
    front, pick, timed, picks = conclude(
        trials, reference, settings, here=files.here, remeasure=files.remeasure
    )
    if pick.point is not None:  # the pick's files, replacing an earlier pick's whole
        staging = job.run_dir / ".sweetspot.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(files.of(pick.point.trial), staging)
        shutil.rmtree(job.run_dir / "sweetspot", ignore_errors=True)
        staging.rename(job.run_dir / "sweetspot")
    run = Run(
        command="search",
        workload=reference.workload,
        task=job.workload.task,
        settings=settings,
        budget=reference.budget,
        baseline=reference.baseline,
        trials=trials,
        frontier=front,
        pick=pick,
        seconds=round(seconds, 1),
        probe=reference.probe,
        fallback=reference.fallback,
        sensitivity=reference.sensitivity,
        defaults=timed,
        targets=reference.targets if len(settings.targets) > 1 else {},
        target_picks=picks,
        # where `fulcrum export` fetches a trial measured on another machine (as reached here)
        artifacts=str(Path(artifacts).resolve())
        if artifacts and kind(artifacts) == "folder"
        else artifacts,
        environment=environment(job.threads),
        layers=_layers(job.workload, job.run_dir / "sweetspot" if pick.point else None),
    )
    write(job.run_dir, run)
    return run


class Files:
    """Where each candidate's files are for this machine, and the finalists' re-measure.

    A study shared by machines: each holds the files of the trials it ran, and re-measures and
    picks among those and those in the study's artifact store; the frontier covers them all.
    The runtime defaults' files are in the run folder (``defaults/``)."""

    def __init__(self, own: Trialist, trials: list[Trial]) -> None:
        self.own = own
        run_dir, store = own.job.run_dir, own.job.store
        complete = [t for t in trials if t.state == TrialState.COMPLETE.name]
        self.stored = {str(t.number): t.artifacts for t in complete if t.artifacts}
        self.defaults = {d.trial: run_dir / DEFAULTS / d.trial for d in own.reference.defaults}
        self.stored |= {d.trial: d.artifacts for d in own.reference.defaults if d.artifacts}
        self.here = {
            str(t.number)
            for t in complete
            if (run_dir / "trials" / str(t.number)).is_dir()
            or (store is not None and str(t.number) in self.stored)
        } | {
            key
            for key, folder in self.defaults.items()
            if folder.is_dir() or (store is not None and key in self.stored)
        }

    def of(self, key: str) -> Path:
        """The candidate's folder here (fetched from the artifact store if it was measured
        elsewhere)."""
        folder = self.defaults.get(key, self.own.job.run_dir / "trials" / key)
        return folder if folder.is_dir() else fetch(self.own.job.store, self.stored[key], folder)

    def remeasure(self, finalists: list[frontier.Point]) -> dict[str, Measurement]:
        """The finalists of each target timed again beside that target's baseline."""
        job, reference, settings = self.own.job, self.own.reference, self.own.job.settings
        found: dict[str, Measurement] = {}
        for target in dict.fromkeys(p.data.get("runtime", settings.primary) for p in finalists):
            runtime = runtimes.get(target)
            sessions = {
                p.key: runtime.load(
                    self.of(p.key), threads=job.threads, output=output_of(job.workload)
                )
                for p in finalists
                if p.data.get("runtime", settings.primary) == target
            }
            found |= measure(
                job.workload,
                sessions,
                runtime=target,
                threads=job.threads,
                batch_sizes=(settings.batch_size,),
                seconds=settings.final_seconds / 2,  # per round: twice a single timing's in all
                baseline=self.own.baseline_on(target),
                reference_ms=reference.targets.get(target, reference.baseline).latency_ms,
                evaluate=False,
                count=False,
                rounds=FINAL_ROUNDS,
            )
        return found


def _layers(workload: Workload, chosen: Path | None) -> dict[str, list[LayerRow]]:
    """The report's layer table, measured here so that the report only reads."""
    if not isinstance(workload.model, nn.Module):  # an ONNX workload
        return {}
    models = {"baseline": workload.model}
    if chosen is not None:
        models["sweet spot"] = rebuild(workload.model, chosen)
    return {
        name: [LayerRow(**row) for row in layer_rows(m, workload.example_inputs)]
        for name, m in models.items()
    }
