"""The search's loop: trials in Optuna's own loop (``study.optimize``: heartbeats, the retry of
trials whose process died), the exact trial count across processes and machines, Ctrl-C, and
the worker processes that share a study.

The study lives in the run folder (SQLite): a search killed at any moment and started again with
the same command resumes — finished trials are kept, the interrupted one is retried; Ctrl-C
stops it and its workers within seconds. ``workers`` processes share the study, and ``storage``
takes an Optuna database URL so that many machines share one study through a PostgreSQL server;
``Quota`` keeps the number of finished trials exact across all of them.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import fail_stale_trials
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from fulcrum.artifacts import open_store
from fulcrum.errors import ConfigError, FulcrumError, disk_full, first_line
from fulcrum.runfolder import claim
from fulcrum.runtimes import default_threads, keeps_caller_state
from fulcrum.search.settings import SearchSettings
from fulcrum.search.setup import Job, set_up
from fulcrum.search.storage import (
    GRACE_S,
    check_intact,
    check_same_search,
    locked,
    open_study,
    quiet_optuna,
    saved_reference,
    storage_for,
)
from fulcrum.search.trial import Trialist, trialist
from fulcrum.workloads import Workload, load, source_of

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a process waiting on others looks at the study again
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class Surplus(FulcrumError):
    """A trial that began when the requested trials were all finished or under way."""


class Quota:
    """Exactly ``trials`` finished trials (complete or pruned) in the study, however many
    processes and machines share it.

    The storage numbers trials in the order it creates them (Optuna locks the study's row to do
    so), so a trial can decide alone, once, when it begins: trial n goes on only while

        finished trials + unfinished trials numbered below n  <  trials

    (unfinished: running or queued). Never more: had more finished, the highest-numbered of them
    would have counted every other one (each was created before it, and finished later or
    already) and stopped. Never fewer while some process works: the lowest-numbered unfinished
    trial always goes on, and a trial whose process dies is failed by its stale heartbeat (which
    frees its place) and queued again. A trial that finds no place ends at once as failed, with
    the user attribute ``surplus``: it measured nothing and counts for nothing. That happens only
    when processes begin trials at the same moment, because between trials a process starts no
    new one while running trials elsewhere fill the count: it waits, in case one of them fails.
    """

    def __init__(self, study: Any, storage: Any, trials: int) -> None:
        self.study, self.storage, self.trials = study, storage, trials
        self.unstarted: dict[int, float] = {}  # running trials seen not yet started: since when

    @functools.cached_property
    def study_id(self) -> int:
        return int(self.storage.get_study_id_from_name(self.study.study_name))

    def count(self, below: int | None = None) -> tuple[int, int, int]:
        """Finished, running and queued trials (running and queued: numbered below ``below``)."""

        self.tend()
        finished = running = queued = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                finished += 1
            elif below is None or t.number < below:
                running += t.state == TrialState.RUNNING
                queued += t.state == TrialState.WAITING
        return finished, running, queued

    def begin(self, trial: Any) -> None:
        """Start ``trial`` in this process, or end it as surplus when it finds no place.

        Its first heartbeat is written before anything else, so that Optuna fails (and queues
        again) a trial whose process dies from here on; ``worker`` says who runs it.
        """
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.storage.record_heartbeat(trial_id)
        trial.set_user_attr("worker", WORKER)
        finished, running, queued = self.count(below=trial.number)
        if finished + running + queued >= self.trials:
            reason = (
                f"{finished} trials finished and {running + queued} earlier ones under way when "
                f"it began, for {self.trials} requested"
            )
            trial.set_user_attr("surplus", reason)
            raise Surplus(f"trial {trial.number} not run: {reason}")

    def full(self, study: Any, _trial: Any = None) -> None:
        """Optuna callback: stop asking for trials while running ones fill the count."""
        finished, running, queued = self.count()
        if not queued and finished + running >= self.trials:
            study.stop()

    def tend(self) -> None:
        """Fail the trials of dead processes (Optuna: stale heartbeats, then a retry). A trial
        whose process died between its creation and its first heartbeat would never go stale:
        after GRACE_S seen so, it is given one heartbeat, which its process, if alive, keeps
        fresh, and which otherwise goes stale."""

        fail_stale_trials(self.study)
        now = time.monotonic()
        running = {
            t.number: t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "worker" not in t.user_attrs
        }
        self.unstarted = {n: s for n, s in self.unstarted.items() if n in running}
        for number in running:
            if now - self.unstarted.setdefault(number, now) > GRACE_S:
                self.storage.record_heartbeat(
                    self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
                )
                self.unstarted[number] = float("inf")  # once: then it is Optuna's to judge

    def wait(self) -> None:
        time.sleep(POLL_S)
        self.tend()


class Interrupt:
    """Ctrl-C (SIGINT) or SIGTERM during a search; a worker ignores SIGINT and is stopped by
    its parent's SIGTERM.

    Inside a trial, and outside Optuna's loop, it raises KeyboardInterrupt at once: Optuna marks
    the running trial failed, and the search queues it again for the resumed run. While Optuna
    creates or records a trial (``deferring``) it only asks the loop to stop after that step, so
    that no trial is left running without a heartbeat. Only the first signal counts.

    Python runs a signal handler between any two bytecodes, also inside a weakref callback or a
    ``__del__``, where an exception is not raised but printed ("Exception ignored in ...") and
    dropped. The interrupt is then sent again, so that it lands where it stops the search.
    """

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self.signum = int(signal.SIGINT)  # the signal that asked to stop
        self.dropped = False  # Python dropped the KeyboardInterrupt raised for it
        self.previous: dict[int, Any] = {}
        self.previous_hook: Any = None

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():  # (where signals arrive)
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # (a worker, a background job)
                    self.previous[sig] = signal.signal(sig, self._handle)
            self.previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.previous_hook is not None:
            sys.unraisablehook = self.previous_hook

    def _handle(self, signum: int, _frame: Any) -> None:
        first, self.requested = not self.requested, True
        again, self.dropped, self.signum = self.dropped, False, signum
        if (first or again) and not self.deferring:
            raise KeyboardInterrupt

    def _unraisable(self, info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) and self.requested:
            # sent again shortly, from another thread: sent from here, it would be handled,
            # and dropped, inside this hook
            self.dropped = True
            threading.Timer(0.05, _thread.interrupt_main, args=(self.signum,)).start()
            return
        self.previous_hook(info)

    def check(self, study: Any, _trial: Any) -> None:
        """Optuna callback: stop after this trial if Ctrl-C came while it was being recorded."""
        if self.requested:
            study.stop()


def work(study: Any, storage: Any, trialist: Trialist, trials: int, interrupt: Interrupt) -> None:
    """Run trials in this process until the study holds ``trials`` finished ones, counted across
    every process and machine sharing it (``Quota``). Trials run in Optuna's loop (heartbeats,
    stale-trial retries); a trial that fails with an error is recorded and the search goes on."""

    quota = Quota(study, storage, trials)
    errors = 0

    def objective(trial: Any) -> list[float]:
        nonlocal errors
        interrupt.deferring = False
        try:
            if interrupt.requested:
                raise KeyboardInterrupt
            quota.begin(trial)
            return trialist.objective(trial, quota.wait)
        except KeyboardInterrupt:  # queued again, so that the resumed search measures it
            if trial.params and "surplus" not in trial.user_attrs:
                trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except (optuna.TrialPruned, Surplus) as exc:
            if isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("pruned", str(exc))
            raise
        except Exception as exc:  # the trial fails; the search goes on, unless the disk is full
            if disk_full(exc) is not None:  # it stops, to resume with the trial queued again
                with contextlib.suppress(Exception):  # (the storage may be on the full disk)
                    trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                raise DiskFull(str(exc)) from exc
            errors += 1
            message = (
                str(exc)
                if isinstance(exc, FulcrumError)
                else f"internal error (a bug in Fulcrum): {type(exc).__name__}: {first_line(exc)}"
            )
            trial.set_user_attr("error", message)
            log.warning("trial %d failed: %s", trial.number, message)
            raise TrialFailed(message) from exc
        finally:
            interrupt.deferring = True

    def report(study: Any, trial: Any) -> None:
        if errors > 2 * trials + 10:
            study.stop()
        elif "surplus" not in trial.user_attrs:
            trialist.job.progress(best_so_far(study, trialist, trials))

    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    callbacks = [MaxTrialsCallback(trials, states=finished_states), quota.full, report]
    while True:
        finished, running, queued = quota.count()
        if finished >= trials:
            return
        if queued or finished + running < trials:
            interrupt.deferring = True
            try:
                study.optimize(
                    objective, callbacks=[*callbacks, interrupt.check], catch=(FulcrumError,)
                )
            finally:
                interrupt.deferring = False
            if interrupt.requested:
                raise KeyboardInterrupt
            if errors > 2 * trials + 10:
                raise ConfigError(
                    "too many trials failed; see the errors in results.json and fix the recipe space."
                )
        else:  # the last trials run elsewhere: wait, in case one of them fails
            quota.wait()


class DiskFull(OSError):
    """A trial could not write: the search stops (the CLI says so in one line, exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


class TrialFailed(FulcrumError):
    """A trial ended by an error (recorded on the trial); the search goes on."""


def best_so_far(study: Any, trialist: Trialist, trials: int) -> str:
    """One progress line: how far the study is, and its best trade-off within budget so far."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    cost = next(o for o in trialist.job.settings.objectives if o != "metric")
    feasible = [
        t
        for t in done
        if t.state == TrialState.COMPLETE and max(t.user_attrs.get("constraints", [0.0])) <= 0
    ]
    line = f"[{len(done)}/{trials}]"
    if not feasible:
        return f"{line} no trial within budget yet"
    best = min(feasible, key=lambda t: (t.user_attrs[cost], t.number))
    base = trialist.reference.baseline
    drop = (base.metric - best.user_attrs["metric"]) * 100
    return (
        f"{line} best within budget: trial {best.number}, {cost} {best.user_attrs[cost]:.4g} "
        f"({getattr(base, cost) / max(best.user_attrs[cost], 1e-12):.2f}x better), drop {drop:.2f} pt"
    )


def _worker(
    spec: str,
    settings: SearchSettings,
    run_dir: str,
    url: str,
    name: str,
    threads: int,
    sequence: tuple[Any, ...],
    artifacts: str | None,
) -> None:
    """A worker process: loads the workload by name and joins the study. It ignores Ctrl-C (its
    parent's doing, so that none prints a traceback); its parent's SIGTERM ends it quietly, and
    so does its parent's death (a killed search leaves no worker behind)."""
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        with Interrupt() as interrupt, quiet_optuna():
            threading.Thread(target=orphaned, daemon=True).start()
            torch.set_num_threads(threads)
            storage = storage_for(url)
            study, _ = open_study(settings, storage, name, sequence)
            store = open_store(artifacts) if artifacts else None
            job = Job(load(spec), settings, Path(run_dir), threads, store=store)
            reference = saved_reference(study)
            assert reference is not None  # (the parent set the study up before starting workers)
            work(study, storage, trialist(job, reference), settings.trials, interrupt)
    except KeyboardInterrupt:  # the parent says that the search was interrupted, and how to resume
        sys.stderr.flush()
        os._exit(0)  # at once: tearing down torch and friends takes seconds on a busy machine


@keeps_caller_state("workload.model")
def run_study(
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
) -> tuple[Any, Trialist, float]:
    """Run (or resume, or join) the study until it has ``settings.trials`` finished trials;
    with ``artifacts`` (a folder or ``s3://bucket/prefix``), each trial's files are uploaded there.

    Returns the Optuna study, this process's Trialist (its job, the study's reference and the
    baseline's session) and the seconds the trials took; ``fulcrum.sweetspot`` turns them into
    the frontier and the pick. Torch's thread count, its random generator, the warning filters,
    Optuna's verbosity and the workload model's mode are left as they were. Ctrl-C raises
    KeyboardInterrupt within seconds, after the workers ended.
    """
    if not isinstance(workload.model, torch.nn.Module) and settings.targets != ("onnxruntime",):
        raise ConfigError(
            "an ONNX workload is searched on ONNX Runtime only (its other targets need a PyTorch "
            "model); use --runtime onnxruntime."
        )
    if settings.workers > 1 and spec is None:
        raise ConfigError(
            "--workers > 1 needs the workload as a name or file, so that each worker can load it."
        )
    url = storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    name = study_name or "fulcrum"
    threads = threads or max(1, default_threads() // settings.workers)
    # the folder belongs to this workload's search (the study itself checks the settings); it
    # is made before the storage when the study's SQLite file lives in it, else after the
    # storage is reached, so that a refused server leaves no folder behind
    owner: tuple[str, dict[str, Any]] = (source_of(workload), {})
    with quiet_optuna():
        claim(run_dir, "search", *owner, create=storage is None)
        rdb = storage_for(url)
        claim(run_dir, "search", *owner)
        study, sequence = open_study(settings, rdb, name)
        check_intact(study, run_dir)
        check_same_search(saved_reference(study), source_of(workload), settings, name, artifacts)
        store = open_store(artifacts) if artifacts else None
        torch.set_num_threads(threads)
        job = Job(workload, settings, run_dir, threads, progress or (lambda _m: None), store)
        with locked(run_dir / ".setup.lock"):  # processes sharing this folder set up in turn
            reference = saved_reference(study) or set_up(job, study, artifacts)
        own = trialist(job, reference)
        start = time.perf_counter()
        with Interrupt() as interrupt:
            procs = _start_workers(spec, settings, run_dir, url, name, threads, sequence, artifacts)
            try:
                work(study, rdb, own, settings.trials, interrupt)
                for p in procs:
                    p.join()
            except BaseException:  # Ctrl-C, or an error here: the workers end too
                _stop_workers(procs)
                raise
    return study, own, time.perf_counter() - start


def _start_workers(
    spec: str | None,
    settings: SearchSettings,
    run_dir: Path,
    url: str,
    name: str,
    threads: int,
    sequence: tuple[Any, ...],
    artifacts: str | None,
) -> list[Any]:
    """``settings.workers - 1`` processes on the same study. They ignore Ctrl-C, which reaches
    a whole terminal's process group: the parent stops them instead (``_stop_workers``)."""
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=_worker,
            args=(
                spec,
                settings,
                str(run_dir),
                url,
                name,
                threads,
                (*sequence, i),
                artifacts,
            ),
        )
        for i in range(1, settings.workers)
    ]
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for p in procs:
            p.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return procs


def _stop_workers(procs: Sequence[Any], seconds: float = 4.0) -> None:
    """SIGTERM to each worker (its running trial is failed and queued again), then SIGKILL to
    any still alive after ``seconds``."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + seconds
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
