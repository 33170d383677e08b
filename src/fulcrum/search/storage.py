"""Where a study lives: Optuna's RDB storage (SQLite in the run folder, or a PostgreSQL server
that many machines share), creating or joining a study, and the checks a joining process passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.engine import make_url

from fulcrum.artifacts import kind
from fulcrum.errors import ConfigError, MissingDependencyError, first_line
from fulcrum.runfolder import Reference
from fulcrum.search.settings import OBJECTIVES, SHARED_SETTINGS, SearchSettings

HEARTBEAT_S, GRACE_S = 2, 8


def storage_for(url: str) -> Any:
    """An Optuna RDB storage with heartbeats: a trial whose process died is failed and retried."""
    try:
        with warnings.catch_warnings():  # heartbeats are an experimental feature of Optuna's
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_stale,
                engine_kwargs=_engine_kwargs(url),
            )
    except ImportError as exc:
        fix = (
            "the psycopg driver, which is not installed: pip install 'fulcrum[postgres]'"
            if url.startswith("postgres")
            else f"a database driver that is not installed ({first_line(exc, 120)})"
        )
        raise MissingDependencyError(f"--storage {_shown(url)!r} needs {fix}.") from None
    except Exception as exc:
        cause = first_line(getattr(exc, "orig", None) or exc, 200)  # the driver's own words
        raise ConfigError(
            f"--storage {_shown(url)!r} cannot be opened: {_where(url)} ({cause}); start the "
            "server or fix the URL (PostgreSQL needs the psycopg driver: "
            "pip install 'fulcrum[postgres]')."
        ) from None
    if url.startswith("sqlite"):
        _lock_on_begin(storage.engine)
    return storage


def _lock_on_begin(engine: Any) -> None:
    """Each SQLite transaction takes the file's write lock when it begins (BEGIN IMMEDIATE).

    Optuna takes a queued trial by reading its state, then writing RUNNING; PostgreSQL locks the
    row it reads (FOR UPDATE), but Python's sqlite3 only begins a transaction at the first write,
    so two processes could both read WAITING and both take the trial (one then failed with
    "Cannot tell a COMPLETE trial"). SQLAlchemy's recipe for pysqlite: the driver leaves
    transactions to SQLAlchemy, which begins each one holding the lock. Pooled connections made
    before the change are closed, so every connection from here on has it.
    """

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(connection: Any, _record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_locked(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite file {parsed.database!r} cannot be used"
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name())
    return f"no {parsed.get_backend_name()} server answers at {parsed.host}:{port}"


def check_storage_url(url: str) -> None:
    """Refuse a storage URL whose database kind or driver is unknown, before any work starts."""
    try:
        make_url(url).get_dialect()
    except Exception as exc:
        raise ConfigError(
            f"--storage {_shown(url)!r} is not a database URL this machine can open ({first_line(exc, 120)}); "
            "use sqlite:///path/study.db or postgresql://user:password@host:5432/db "
            "(PostgreSQL needs pip install 'fulcrum[postgres]')."
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgres"):  # an unreachable host fails in seconds, not minutes
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def retry_stale(study: Any, trial: Any) -> None:
    """Optuna's retry of a trial whose process died (its heartbeat went stale): its parameters
    are queued again, at most three times, without what the dead run had recorded."""
    trial.user_attrs = {"retry_of": trial.number}
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)


def sampler_seed(seed: int, sequence: tuple[Any, ...]) -> int:
    """``seed`` itself for the first process of a new study; for any other process a seed drawn
    from ``seed`` and ``sequence`` (what tells the process apart), so that a resumed or joining
    process draws new recipes instead of replaying the ones drawn already."""
    if not sequence:
        return seed
    digest = hashlib.sha256(repr((seed, *sequence)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def open_study(
    settings: SearchSettings,
    storage: Any,
    name: str,
    sequence: tuple[Any, ...] | None = None,
) -> tuple[Any, tuple[Any, ...]]:
    """Create the study ``name`` in ``storage`` or join it; return it and its sampler's sequence.

    Creating is atomic in the storage (study names are unique), so of the processes and machines
    started at once exactly one creates the study. Its sampler is seeded with ``settings.seed``
    (a new single-process search is reproducible); any other process (a resume, another
    machine) seeds it from the seed, the number of trials in the study, the host and the process,
    unless ``sequence`` is given (a worker: its parent's sequence and its own index).
    """
    directions: Any = [OBJECTIVES[o] for o in settings.objectives]
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    objectives = list(settings.objectives)
    saved = study.metric_names or study.user_attrs.get("objectives")  # (older run folders)
    if saved is None and len(study.directions) != len(objectives):
        saved = [d.name.lower() for d in study.directions]
    if saved is not None and list(saved) != objectives:
        raise ConfigError(
            f"study {name!r} exists with objectives {', '.join(saved)}, not {', '.join(objectives)}; "
            "use another --study name or the same objectives."
        )
    if study.metric_names is None:  # what optuna-dashboard shows as the objectives' names
        study.set_metric_names(objectives)
    if sequence is None:
        trials = len(study.get_trials(deepcopy=False))
        sequence = () if created else (trials, socket.gethostname(), os.getpid())
    seed = sampler_seed(settings.seed, sequence)
    study.sampler = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=10),
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=10
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[settings.sampler]()
    return study, sequence


def check_same_search(
    reference: Reference | None,
    workload: str,
    settings: SearchSettings,
    name: str,
    artifacts: str | None = None,
) -> None:
    """Refuse to join a study of another workload, with other budgets or another kind of
    artifact store (``artifacts``: this machine's --artifacts), before any work."""
    if reference is None:
        return
    if reference.workload != workload:
        raise ConfigError(
            f"study {name!r} searches workload {reference.workload!r}, not {workload!r}; use "
            "another --out (or --study name)."
        )
    saved, given = asdict(reference.settings), asdict(settings)
    for key in SHARED_SETTINGS:
        if saved[key] != given[key]:
            raise ConfigError(
                f"study {name!r} was started with {key}={saved[key]!r}, not {given[key]!r}; "
                "resume it with the same setting or use another --out."
            )
    saved_kind, given_kind = reference.artifacts, kind(artifacts)
    if saved_kind != given_kind:
        raise ConfigError(
            f"study {name!r} keeps its trials' files in an artifact store ({saved_kind}); pass "
            f"--artifacts with that store as this machine reaches it."
            if saved_kind
            else f"study {name!r} was started without --artifacts, so its trials' files stay on "
            "the machines that ran them; drop --artifacts, or start another --study with it."
        )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` among this machine's processes (released if one dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines off while a search runs (Fulcrum reports a failed trial in one
    line), and its experimental-feature warnings; both as they were after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def saved_reference(study: Any) -> Reference | None:
    """The reference the study's set-up measured, or None before it has been set up."""
    saved = study.user_attrs.get("baseline")
    if saved is None:
        return None
    try:
        return Reference.model_validate(saved)
    except ValidationError:
        raise ConfigError(
            f"study {study.study_name!r} was set up by another version of Fulcrum, whose record "
            "this one cannot read; resume it with that version, or start over with another --out."
        ) from None


def check_intact(study: Any, run_dir: Path) -> None:
    """Refuse a study that has not been set up while the run folder holds a search's trials or
    results: its database was emptied, replaced or damaged, and starting over would overwrite
    what the folder holds."""
    if study.user_attrs.get("baseline") is not None:
        return
    trials = run_dir / "trials"
    held = [p.name for p in (trials.iterdir() if trials.is_dir() else []) if p.name.isdigit()]
    if held or (run_dir / "results.json").is_file():
        raise ConfigError(
            f"the study database of {run_dir} holds no study {study.study_name!r}, but the folder "
            f"holds {len(held)} trial(s) and a search's results: the database was emptied or "
            "damaged. Restore study.db, or run the search again with another --out (this folder "
            "is left as it is)."
        )
