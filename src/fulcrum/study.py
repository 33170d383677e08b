"""The sweet-spot search: an Optuna study over recipes, durable and parallel.

The only module that imports optuna, with ``fulcrum.artifacts`` (trial files in an artifact store
that every machine of a study reaches). Each trial builds a recipe from the technique registry's
search spaces (structural steps, then recovery, then quantization: the one order in which each
step can use what came before), applies it, evaluates the result on its deployment runtime and
times it side by side with the baseline. Latency is stored as ``ratio x baseline latency``, the
ratio measured interleaved in one process, so that machine drift between trials cancels.

Trials run in Optuna's own loop (``study.optimize``: heartbeats, the retry of trials whose
process died). The study lives in the run folder (SQLite): a search killed at any moment and
started again with the same command resumes — finished trials are kept, the interrupted one is
retried; Ctrl-C stops it and its workers within seconds. ``workers`` processes share the study,
and ``storage`` takes an Optuna database URL so that many machines share one study through a
PostgreSQL server; ``Quota`` keeps the number of finished trials exact across all of them.
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.errors import ConfigError, FulcrumError, MissingDependencyError, first_line, suggest
from fulcrum.runtimes import keeps_caller_state

if TYPE_CHECKING:
    from fulcrum.sensitivity import Sensitivity
    from fulcrum.workloads import Workload

log = logging.getLogger(__name__)

OBJECTIVES = {
    "metric": "maximize",
    "latency_ms": "minimize",
    "size_bytes": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
BUDGET_KEYS = ("latency_ms", "size_mb", "size_bytes", "macs", "params")
SAMPLERS = ("tpe", "nsga2", "random")
HEARTBEAT_S, GRACE_S = 2, 8
POLL_S = 0.5  # how often a process waiting on others looks at the study again
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search; saved in the study so that a resume can be checked."""

    trials: int = 40
    objectives: tuple[str, ...] = ("metric", "latency_ms", "size_bytes")
    runtime: str = "onnxruntime"
    batch_size: int = 1
    max_drop: float | None = 1.0
    relative: bool = False
    budgets: dict[str, float] = field(default_factory=dict)
    policy: str = "tolerance"
    sampler: str = "tpe"
    seed: int = 0
    workers: int = 1
    trial_seconds: float = 0.5
    final_seconds: float = 2.0
    finalists: int = 8
    max_epochs: int = 10

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1; got {self.trials}.")
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise ConfigError(
                    f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}.{suggest(name, OBJECTIVES)}"
                )
        if "metric" not in self.objectives or len(self.objectives) < 2:
            raise ConfigError(
                "objectives must include 'metric' and at least one cost (latency_ms, size_bytes, ...)."
            )
        for key, value in self.budgets.items():
            if key not in BUDGET_KEYS:
                raise ConfigError(
                    f"unknown budget {key!r}; choose from {', '.join(BUDGET_KEYS)}.{suggest(key, BUDGET_KEYS)}"
                )
            if not value > 0:
                raise ConfigError(f"budget {key}={value} must be a positive number.")
        if self.runtime not in ("onnxruntime", "torch"):
            raise ConfigError(f"--runtime must be 'onnxruntime' or 'torch'; got {self.runtime!r}.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(
                f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}.{suggest(self.sampler, SAMPLERS)}"
            )
        if self.workers < 1 or self.batch_size < 1:
            raise ConfigError("--workers and --batch-size must be at least 1.")
        if self.max_drop is not None and not 0 <= self.max_drop < float("inf"):
            raise ConfigError(
                f"--max-drop must be a finite number of points >= 0; got {self.max_drop}."
            )

    def limits(self) -> dict[str, float]:
        """Budgets in the units trials record (size in bytes)."""
        out = dict(self.budgets)
        if "size_mb" in out:
            out["size_bytes"] = out.pop("size_mb") * 1e6
        return out


# -- the search space ---------------------------------------------------------------------------


def suggest_recipe(
    trial: Any,
    settings: SearchSettings,
    task: str = "multiclass",
    transformer: bool = False,
    *,
    graph_only: bool = False,
    modes: Sequence[str] | None = None,
    fallback: Sequence[str] = (),
    allocate: Callable[[float, float], tuple[str, ...]] | None = None,
) -> tuple[Any, ...]:
    """A recipe drawn from the technique registry's spaces, in the one order that works.

    Recovery by fine-tuning needs labels, so an embedding task recovers by distillation only;
    layer dropping, head and feed-forward pruning, hidden-state distillation and graph fusion are
    drawn for transformers (what they act on). An ONNX workload (``graph_only``) has no PyTorch
    model to train: only quantization is drawn. ``modes`` narrows the quantization modes drawn
    (the probe's verdict: the modes that made this model faster); empty, no quantization.
    ``allocate(ratio, strength)`` (from the sensitivity analysis) turns a drawn pruning ratio
    into per-layer ratios that remove as many MACs, steered by the drawn ``prune.allocation``
    strength (0: the same ratio everywhere).
    """
    from fulcrum.techniques import get

    quantize = modes is None or bool(modes)
    if modes is not None:
        trial = Narrowed(trial, {"quantize.mode": list(modes)})
    if graph_only:
        return (get("quantize").space(trial),) if quantize else ()
    steps: list[Any] = []
    if transformer and trial.suggest_categorical("use_layers", [False, True]):
        steps.append(get("layers").space(trial))  # a shallower student of the same encoder
    if transformer and trial.suggest_categorical("use_heads", [False, True]):
        steps.append(get("heads").space(trial))  # fewer heads and feed-forward channels
    if trial.suggest_categorical("use_prune", [True, False]):
        prune: Any = get("prune").space(trial)
        if allocate is not None:
            strength = trial.suggest_categorical("prune.allocation", list(ALLOCATION_STRENGTHS))
            if strength:
                ratios = allocate(prune.ratio, strength)
                prune = replace(prune, ratio=0.0, global_pruning=False, layer_ratios=ratios)
        steps.append(prune)
    if trial.suggest_categorical("use_lowrank", [False, True]):
        steps.append(get("lowrank").space(trial))
    if steps:  # something lossy happened: recover, or not
        if task == "embedding":  # a distribution's choices are fixed per name, hence two names
            recovery = trial.suggest_categorical("recovery.unlabelled", ["distill", "none"])
        else:
            recovery = trial.suggest_categorical("recovery", ["distill", "finetune", "none"])
        if recovery != "none":
            config: Any = get(recovery).space(trial)
            config = replace(config, epochs=min(config.epochs, settings.max_epochs))
            # screened (early stopping and cut short when hopeless, on a holdout carved from
            # the training split) or run to the end of its schedule on all of that split
            if not trial.suggest_categorical("recovery.holdout", [True, False]):
                config = replace(config, patience=0)
            if transformer and recovery == "distill":  # TinyBERT's intermediate-layer loss
                config = replace(
                    config, hidden=trial.suggest_categorical("distill.hidden", [0.0, 1.0])
                )
            steps.append(config)
    if settings.runtime == "onnxruntime":
        if transformer and trial.suggest_categorical("use_fuse", [True, False]):
            steps.append(get("fuse").space(trial))
        # with no other step drawn, quantization is not optional: an empty recipe is the
        # baseline, measured already (1 of 40 trials of a digits search went to it)
        if quantize and (not steps or trial.suggest_categorical("use_quantize", [True, False])):
            steps.append(with_fallback(get("quantize").space(trial), trial, fallback))
    return tuple(steps)


def with_fallback(config: Any, trial: Any, fallback: Sequence[str]) -> Any:
    """Static int8 with the first k of ``fallback`` (the layers int8 hurts most, by the
    sensitivity analysis) left in float, k drawn from 0 to all of them."""
    if config.mode != "int8-static" or not fallback:
        return config
    count = trial.suggest_int("quantize.fallback", 0, len(fallback))
    return replace(config, skip=tuple(fallback[:count])) if count else config


# a layer is a fallback candidate when leaving it alone in float wins back this much of the
# metric int8 loses (0.2 pt); at most this many layers
FALLBACK_GAIN = 0.002
FALLBACK_LAYERS = 2


# how strongly the sensitivity analysis steers pruning ratios per layer (0: uniform)
ALLOCATION_STRENGTHS = (0.0, 1.0, 2.0)


def int8_fallback(found: Sensitivity, say: Callable[[str], None]) -> list[dict[str, Any]]:
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
    chosen: list[dict[str, Any]] = [{"layer": n, "gain": round(g, 6)} for g, n in kept]
    lost = (found.baseline - found.int8_metric) * 100
    say(
        f"  int8-static loses {lost:.2f} pt; "
        + (
            "left in float it wins back: "
            + ", ".join(f"{name} {gain * 100:+.2f} pt" for gain, name in kept)
            if chosen
            else "no single layer in float wins back 0.2 pt"
        )
    )
    return chosen


def collapse_margin(settings: SearchSettings) -> float:
    """How far below the baseline's metric a candidate has collapsed rather than lost a little:
    5 x the allowed drop, at least 20 pt."""
    return max(0.2, 5 * (settings.max_drop or 1.0) / 100)


def int8_collapses(
    found: Sensitivity, fallback: Sequence[dict[str, Any]], settings: SearchSettings
) -> str:
    """Why static int8 leaves the space though the probe found it faster: with the layers it
    hurts most left in float (their gains added) it still loses more than a collapsed trial
    does (``collapse_margin``). Empty when it does not (all-MiniLM-L6-v2: 61 pt lost, 0.4 won
    back; MobileNetV2: 14.4 lost, 11.4 won back by its stem)."""
    if found.int8_metric is None:
        return ""
    lost = found.baseline - found.int8_metric - sum(f["gain"] for f in fallback)
    if lost <= collapse_margin(settings):
        return ""
    kept = f" with {len(fallback)} layers in float" if fallback else ""
    return f"collapses: loses {lost * 100:.1f} pt{kept}"


class Narrowed:
    """A trial whose categorical choices for some parameters are narrowed to a fixed subset
    (the same for the whole study, so that Optuna's distributions stay consistent)."""

    def __init__(self, trial: Any, choices: dict[str, list[Any]]) -> None:
        self.trial, self.choices = trial, choices

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if name in self.choices:
            choices = [c for c in choices if c in self.choices[name]]
        return self.trial.suggest_categorical(name, choices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trial, name)


def within_probe(params: dict[str, Any], probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """A warm-start recipe with its quantization mode replaced by the fastest mode the probe
    kept, or without quantization when it kept none (None when nothing else is left: the
    baseline itself is measured already)."""
    mode = params.get("quantize.mode")
    if not probe or mode is None or probe.get(mode, {}).get("kept"):
        return params
    kept = sorted((v["latency_ratio"], m) for m, v in probe.items() if v["kept"])
    narrowed = {k: v for k, v in params.items() if not k.startswith("quantize.")}
    if kept:
        return {**narrowed, "quantize.mode": kept[0][1]}
    steps = ("use_layers", "use_heads", "use_prune", "use_lowrank", "use_fuse")
    return {**narrowed, "use_quantize": False} if any(narrowed.get(k) for k in steps) else None


# a mode is kept when it times at most this fraction of the baseline: a few percent either way
# is this machine's noise (fp16 on a CPU timed 0.99x and 1.01x in two runs)
PROBE_KEEP = 0.95
# the probe times each mode this many times as long as a trial times its candidate: its verdict
# holds for the whole study (one short timing flipped int8-static from 0.68x to 1.08x under load)
PROBE_TIMING = 4


def probe_quantization(trialist: Trialist) -> dict[str, dict[str, Any]]:
    """Each quantization mode applied alone to the baseline and timed beside it, interleaved:
    a mode that does not make this model faster on this runtime is left out of a latency
    search (dynamic int8 of a conv net, fp16 on a CPU). What each mode measured is kept."""
    from fulcrum import timing
    from fulcrum.compression import compress, onnx_bytes, output_of
    from fulcrum.errors import FulcrumError, first_line
    from fulcrum.runtimes import OnnxModel
    from fulcrum.techniques.quantize import MODES

    workload, settings = trialist.workload, trialist.settings
    runners: dict[str, Any] = {"baseline": trialist.runner}
    found: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        try:
            candidate = compress(
                workload.model, f"quantize:{mode}", workload, threads=trialist.threads
            )
        except FulcrumError as exc:  # calibration data missing, a graph it cannot take, ...
            found[mode] = {"kept": False, "error": first_line(exc, 200)}
            continue
        data = onnx_bytes(candidate, workload.example_inputs)
        runners[mode] = OnnxModel(data, trialist.threads, output_of(workload))
    times = timing.compare_tuned(
        runners,
        workload.example_inputs,
        tune=[m for m in runners if m != "baseline"],
        batch_size=settings.batch_size,
        threads=trialist.threads,
        seconds=2 * PROBE_TIMING * settings.trial_seconds,
    )
    base = times["baseline"][0].median_ms
    for mode in runners:
        if mode != "baseline":
            latency, threads = times[mode]
            ratio = round(latency.median_ms / base, 4)
            found[mode] = {"kept": ratio < PROBE_KEEP, "latency_ratio": ratio, "threads": threads}
    return found


WARM_START_MIN_TRIALS = 10


def warm_start(
    settings: SearchSettings, task: str, transformer: bool, fallback: bool = False
) -> list[dict[str, Any]]:
    """Recipes known to be strong, tried first so that the sampler starts from good points:
    int8 alone, then 30% and 50% pruning with recovery and int8 (ONNX Runtime searches), then
    (not for transformers) 70% pruning allocated by sensitivity, distilled, and int8; for a
    transformer 30% pruning, half its layers, and a third of its layers with fewer heads and
    half (or a quarter of) the feed-forward width, each distilled, then int8.
    With ``fallback`` (layers int8 hurts, found by the sensitivity analysis), static int8 keeps
    the worst of them in float.

    For a transformer, int8 means fused attention and dynamic int8 with per-channel weights and
    4-bit embedding tables (measured best on all-MiniLM-L6-v2), 8-bit ones for the structural
    students (whose 4-bit lookup cost a tenth to a fifth of their time); otherwise static int8.
    """
    if settings.runtime != "onnxruntime":
        return []
    quantize: dict[str, Any] = (
        {
            "use_fuse": True,
            "quantize.mode": "int8-dynamic",
            "quantize.per_channel": True,
            "quantize.embeddings": "int4",
        }
        if transformer
        else {
            "quantize.mode": "int8-static",
            "quantize.per_channel": True,
            "quantize.calibration": "minmax",
            **({"quantize.fallback": 1} if fallback else {}),
        }
    )
    recovery: dict[str, Any] = (
        {"recovery.unlabelled": "distill"} if task == "embedding" else {"recovery": "finetune"}
    )
    if transformer and task == "embedding":
        recovery["distill.hidden"] = 1.0
    distilled = {
        ("recovery.unlabelled" if task == "embedding" else "recovery"): "distill",
        "distill.hidden": 1.0,
    }
    int8 = {"use_prune": False, "use_lowrank": False, "use_quantize": True, **quantize}
    if transformer:
        int8.update(use_layers=False, use_heads=False)
    pruned = [
        {
            "use_prune": True,
            "prune.ratio": ratio,
            "prune.importance": "magnitude",
            "prune.global_pruning": False,
            "prune.allocation": 0.0,  # uniform (when the sensitivity analysis offers more)
            "use_lowrank": False,
            **recovery,
            "recovery.holdout": True,
            "use_quantize": True,
            **quantize,
            **({"use_layers": False, "use_heads": False} if transformer else {}),
        }
        # a thinned transformer (every layer kept) recovered worse than fewer whole layers
        # (MiniLM, 30%: cosine 0.82): no 50% for it, its structural students go deeper
        for ratio in ((0.3,) if transformer else (0.3, 0.5))
    ]
    if not transformer:
        # and a deep cut steered by sensitivity, distilled at length: on conv nets the hand
        # recipe that reaches 5-6x at batch 1 (prune 0.7 + distillation) before int8. It is
        # not screened: a known recipe needs no early stopping, and all of the training split
        # and the whole schedule recover it best (on `digits`, int8 after: within 0.5 pt of
        # the baseline in 10 of 10 seeds so, with labels and teacher weighed equally; in 2 of
        # 5 screened, with alpha 0.7)
        deep = {
            **pruned[1],
            "prune.ratio": 0.7,
            "prune.allocation": 1.0,
            ("recovery.unlabelled" if task == "embedding" else "recovery"): "distill",
            "recovery.holdout": False,
            "distill.epochs": 10,
            "distill.temperature": 4.0,
            "distill.alpha": 0.5,
        }
        return [int8, *pruned, deep]
    # DistilBERT's student (half the layers), then a third of the layers with a quarter of the
    # heads and half the feed-forward width gone, and with half the heads and three quarters
    # of the width gone (5.5x and 6.7x faster than fp32 on all-MiniLM-L6-v2 with int8, at
    # batch 1), distilled: the frontier then spans int8 alone to the fastest students. They
    # recover for as long as the search allows (the teacher runs once per example, so later
    # epochs cost the student's pass alone; the 6.7x student's cosine: 0.84 after 2 epochs,
    # 0.89 after 20) and keep 8-bit embedding tables: 4-bit ones save 4 MB, but their lookup
    # made a 2-layer student 12% slower at 19 tokens and 28% at 128
    structural = [
        {
            **int8,
            "quantize.embeddings": "int8",
            "distill.epochs": 10,  # the space's longest, capped by --max-epochs like any draw
            "use_layers": True,
            "layers.ratio": depth,
            "use_heads": bool(heads or ffn),
            **(
                {"heads.ratio": heads, "heads.ffn": ffn, "heads.global_ranking": False}
                if heads or ffn
                else {}
            ),
            **distilled,
            "recovery.holdout": True,
        }
        for depth, heads, ffn in ((0.5, 0.0, 0.0), (0.33, 0.25, 0.5), (0.33, 0.5, 0.75))
    ]
    return [int8, *pruned, *structural]


# -- storage ------------------------------------------------------------------------------------


def storage_for(url: str) -> Any:
    """An Optuna RDB storage with heartbeats: a trial whose process died is failed and retried."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
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
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(connection: Any, _record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_locked(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _where(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite file {parsed.database!r} cannot be used"
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name())
    return f"no {parsed.get_backend_name()} server answers at {parsed.host}:{port}"


def check_storage_url(url: str) -> None:
    """Refuse a storage URL whose database kind or driver is unknown, before any work starts."""
    from sqlalchemy.engine import make_url

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
    import optuna

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
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Fulcrum reports a failed trial in one line
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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


# settings a resumed study must share with the command that joins it (trials, seed, workers and
# the pick's policy may change between runs)
SHARED_SETTINGS = ("runtime", "batch_size", "max_drop", "relative", "budgets", "max_epochs")


def check_same_search(
    reference: dict[str, Any] | None,
    workload: str,
    settings: SearchSettings,
    name: str,
    artifacts: str | None = None,
) -> None:
    """Refuse to join a study of another workload, with other budgets or another kind of
    artifact store (``artifacts``: this machine's --artifacts), before any work."""
    from fulcrum.artifacts import kind

    if reference is None:
        return
    if reference.get("workload_source") != workload:
        raise ConfigError(
            f"study {name!r} searches workload {reference.get('workload_source')!r}, not "
            f"{workload!r}; use another --out (or --study name)."
        )
    saved = reference.get("settings", {})
    for key in SHARED_SETTINGS:
        if key in saved and saved[key] != asdict(settings)[key]:
            raise ConfigError(
                f"study {name!r} was started with {key}={saved[key]!r}, not "
                f"{asdict(settings)[key]!r}; resume it with the same setting or use another --out."
            )
    saved_kind, given = reference.get("artifacts"), kind(artifacts)
    if saved_kind != given:
        raise ConfigError(
            f"study {name!r} keeps its trials' files in an artifact store ({saved_kind}); pass "
            f"--artifacts with that store as this machine reaches it."
            if saved_kind
            else f"study {name!r} was started without --artifacts, so its trials' files stay on "
            "the machines that ran them; drop --artifacts, or start another --study with it."
        )


# -- one process's work -------------------------------------------------------------------------


@dataclass
class Baseline:
    metric: float
    metrics: dict[str, Any]
    latency_ms: float
    size_bytes: int
    macs: int
    params: int
    threads: int  # the intra-op thread count it ran fastest with (``timing.compare_tuned``)


def baseline_runner(workload: Workload, settings: SearchSettings, threads: int) -> Any:
    """The baseline as deployed on the search's runtime, to time every candidate beside it."""
    from fulcrum.compression import onnx_bytes, output_of
    from fulcrum.runtimes import OnnxModel
    from fulcrum.techniques import Candidate

    if settings.runtime != "onnxruntime":
        return workload.model
    data = onnx_bytes(Candidate.of(workload.model), workload.example_inputs)
    return OnnxModel(data, threads, output_of(workload))


def measure_baseline(
    workload: Workload, settings: SearchSettings, threads: int, runner: Any
) -> Baseline:
    """The study's reference figures, measured once per study by the process that sets it up."""
    from fulcrum import measure, timing
    from fulcrum.evaluation import evaluate_workload
    from fulcrum.metrics import MAIN_METRIC

    evaluation = evaluate_workload(workload, threads=threads)
    profile = measure.profile(
        workload.model, workload.example_inputs, latency=False, runtimes_=("torch",)
    )
    size = len(runner.data) if settings.runtime == "onnxruntime" else None
    latency, fastest = timing.compare_tuned(
        {"baseline": runner},
        workload.example_inputs,
        tune=["baseline"],
        batch_size=settings.batch_size,
        threads=threads,
        seconds=2 * settings.final_seconds,
    )["baseline"]
    value = evaluation.metrics[MAIN_METRIC[workload.task]]
    return Baseline(
        metric=float(value or 0.0),
        metrics=evaluation.metrics,
        latency_ms=latency.median_ms,
        size_bytes=size if size is not None else profile.artifact_bytes["safetensors"],
        macs=profile.macs,
        params=profile.params_total,
        threads=fastest,
    )


class Trialist:
    """Runs trials of one study in this process, reusing recipe prefixes it has already trained."""

    def __init__(
        self,
        workload: Workload,
        settings: SearchSettings,
        run_dir: Path,
        threads: int,
        reference: dict[str, Any],
        progress: Callable[[str], None] | None = None,
        store: Any = None,
    ) -> None:
        self.workload, self.settings, self.run_dir, self.threads = (
            workload,
            settings,
            run_dir,
            threads,
        )
        self.store = store  # the study's artifact store (``fulcrum.artifacts``), if it has one
        self.reference = reference  # the study's baseline figures (the first process measured them)
        self.progress = progress or (lambda _m: None)
        from fulcrum.compression import PrefixCache

        self.cache = PrefixCache(run_dir / "cache")  # trained prefixes shared by the workers
        self.allocations: dict[tuple[float, float], tuple[str, ...]] = {}
        # the baseline at the thread count it ran fastest with (once the study has measured it)
        self.runner = baseline_runner(workload, settings, reference.get("threads", threads))
        import torch

        from fulcrum.techniques.fuse import has_attention

        self.transformer = isinstance(workload.model, torch.nn.Module) and has_attention(
            workload.model
        )
        self.graph_only = not isinstance(workload.model, torch.nn.Module)  # an ONNX workload

    def allocatable(self) -> bool:
        """Whether the study's sensitivity analysis measured pruning curves to allocate from."""
        found = self.reference.get("sensitivity") or {}
        return any(layer.get("prune") for layer in found.get("layers", []))

    def allocate(self, ratio: float, strength: float) -> tuple[str, ...]:
        """Per-layer ratios removing the MACs ``prune:ratio`` removes, steered by sensitivity
        with ``strength`` (``sensitivity.matched``); computed once per (ratio, strength)."""
        from fulcrum import sensitivity

        key = (ratio, strength)
        if key not in self.allocations:
            found = sensitivity.Sensitivity.from_dict(self.reference["sensitivity"])
            self.allocations[key] = sensitivity.matched(
                self.workload, found, ratio, strength, threads=self.threads
            )
        return self.allocations[key]

    def objective(
        self, trial: Any, wait: Callable[[], None] = lambda: time.sleep(1.0)
    ) -> list[float]:
        """Draw a recipe, apply it, measure it; ``wait`` is called while an earlier trial that
        drew the same recipe is still measuring it."""
        import optuna

        from fulcrum import measure, timing
        from fulcrum.compression import (
            compress,
            counts,
            deployed,
            onnx_bytes,
            output_of,
            recipe_text,
            save_candidate,
        )
        from fulcrum.evaluation import evaluate_workload
        from fulcrum.metrics import MAIN_METRIC
        from fulcrum.runtimes import OnnxModel

        settings, workload = self.settings, self.workload
        start = time.perf_counter()
        probe = self.reference.get("probe")
        recipe = suggest_recipe(
            trial,
            settings,
            workload.task,
            self.transformer,
            graph_only=self.graph_only,
            modes=[m for m, v in probe.items() if v["kept"]] if probe else None,
            fallback=[f["layer"] for f in self.reference.get("fallback", [])],
            allocate=self.allocate if self.allocatable() else None,
        )
        text = recipe_text(recipe)
        trial.set_user_attr("recipe", text)
        self.progress(f"trial {trial.number}: {text}")
        earlier = same_recipe(trial, text, wait)
        if earlier is not None:  # the recipe was measured already: reuse its figures
            trial.set_user_attr("same_as", earlier.number)
            if earlier.state.name == "PRUNED":
                raise optuna.TrialPruned(f"same recipe as trial {earlier.number}, pruned there")
            for key, value in earlier.user_attrs.items():
                if key not in ("recipe", "worker", "same_as", "retry_of"):
                    trial.set_user_attr(key, value)
            self.progress(f"trial {trial.number}: same recipe as trial {earlier.number}, reused")
            saved = self.run_dir / "trials" / str(earlier.number)
            if saved.is_dir():  # so that this trial, too, can be picked and exported
                shutil.copytree(
                    saved, self.run_dir / "trials" / str(trial.number), dirs_exist_ok=True
                )
            recorded = {k: earlier.user_attrs[k] for k in OBJECTIVES if k in earlier.user_attrs}
            for key, value in violations(recorded, self.reference["metric"], settings).items():
                trial.set_constraint(key, value)
            return list(earlier.values)
        floor = self.reference["metric"] - collapse_margin(settings)
        curve: list[float] = []  # the recovery's holdout metric after each epoch
        seen = recovery_curves(trial.study)

        def cut_short(epoch: int, value: float) -> None:
            curve.append(round(value, 6))
            trial.set_user_attr("recovery_curve", curve)
            if epoch >= 1 and value < floor:  # still collapsed after two epochs of recovery
                raise optuna.TrialPruned(f"holdout {value:.3f} after {epoch + 1} epochs")
            reason = hopeless(curve, seen, budget_floor(self.reference["metric"], settings))
            if reason:
                raise optuna.TrialPruned(reason)

        candidate = compress(
            workload.model,
            recipe,
            workload,
            seed=settings.seed,
            threads=self.threads,
            on_epoch=cut_short,
            cache=self.cache,
        )
        if settings.runtime == "onnxruntime":
            data = onnx_bytes(candidate, workload.example_inputs)
            runner: Any = OnnxModel(data, self.threads, output_of(workload))
            size = len(data)
        else:
            runner = deployed(candidate, self.threads)
            size = measure.safetensors_bytes(candidate.require_float("search"))
        evaluation = evaluate_workload(workload, runner, threads=self.threads)
        metric = float(evaluation.metrics[MAIN_METRIC[workload.task]] or 0.0)
        times = timing.compare_tuned(
            {"baseline": self.runner, "candidate": runner},
            workload.example_inputs,
            tune=["candidate"],
            batch_size=settings.batch_size,
            threads=self.threads,
            seconds=settings.trial_seconds,
        )
        (latency, threads), base = times["candidate"], times["baseline"][0]
        ratio = latency.median_ms / base.median_ms
        trial.set_user_attr("threads", threads)
        params, macs = counts(candidate, workload.example_inputs)
        values = {
            "metric": metric,
            "latency_ms": round(ratio * self.reference["latency_ms"], 5),
            "latency_ratio": round(ratio, 4),
            "size_bytes": size,
            "macs": macs,
            "params": params,
        }
        folder = self.run_dir / "trials" / str(trial.number)
        save_candidate(
            candidate, folder, workload.example_inputs, self.reference["workload_source"]
        )
        if self.store is not None:  # where every machine of the study finds them
            from fulcrum.artifacts import upload

            upload(self.store, trial, folder)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("metrics", evaluation.metrics)
        trial.set_user_attr("notes", [n for s in candidate.steps for n in s.notes])
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        over = violations(values, self.reference["metric"], settings)
        for key, value in over.items():  # Optuna's constraints: <= 0 is feasible
            trial.set_constraint(key, value)
        trial.set_user_attr("constraints", list(over.values()) or [0.0])
        return [values[o] for o in settings.objectives]


# multi-fidelity recovery: a recovery is screened after each epoch from the second on, once
# this many earlier trials have recovered to the end
SCREEN_AFTER = 3
SCREEN_SLACK = 0.005  # the screen's allowance for noise (0.5 pt of the main metric)


def recovery_curves(study: Any) -> list[list[float]]:
    """The holdout curves of the study's trials whose recovery ran to its end."""
    from optuna.trial import TrialState

    return [
        t.user_attrs["recovery_curve"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(t.user_attrs.get("recovery_curve", [])) >= 2
    ]


def budget_floor(baseline_metric: float, settings: SearchSettings) -> float | None:
    """The lowest main metric within ``--max-drop`` (None without one)."""
    if settings.max_drop is None:
        return None
    allowed = settings.max_drop / 100
    return baseline_metric - (baseline_metric * allowed if settings.relative else allowed)


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


def same_recipe(trial: Any, text: str, wait: Callable[[], None]) -> Any:
    """The earlier trial of the study whose figures stand for this one's recipe ``text``, if any.

    Earlier means lower-numbered. One that has finished is returned; one that is still measuring
    the recipe (in any process) is waited for, and so is one still drawing its recipe: of two
    trials that draw one recipe at the same moment the later-numbered always waits, and the
    recipe is measured once. If the earlier trial fails, this one measures the recipe itself.
    """
    from optuna.trial import TrialState

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


def violations(
    values: dict[str, float], baseline_metric: float, settings: SearchSettings
) -> dict[str, float]:
    """Per-constraint amounts over the limit (<= 0 when met): the drop, then each budget."""
    out = {}
    floor = budget_floor(baseline_metric, settings)
    if floor is not None:
        out["drop"] = round(floor - values["metric"], 6)
    for key, limit in settings.limits().items():
        out[key] = round((values[key] - limit) / limit, 6)
    return out


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


# -- the exact trial count, Ctrl-C, the loop ----------------------------------------------------


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
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.unstarted: dict[int, float] = {}  # running trials seen not yet started: since when

    def count(self, below: int | None = None) -> tuple[int, int, int]:
        """Finished, running and queued trials (running and queued: numbered below ``below``)."""
        from optuna.trial import TrialState

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
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

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
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

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
        except Exception as exc:  # the trial fails; the search goes on
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
            trialist.progress(best_so_far(study, trialist, trials))

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


class TrialFailed(FulcrumError):
    """A trial ended by an error (recorded on the trial); the search goes on."""


def best_so_far(study: Any, trialist: Trialist, trials: int) -> str:
    """One progress line: how far the study is, and its best trade-off within budget so far."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    cost = next(o for o in trialist.settings.objectives if o != "metric")
    feasible = [
        t
        for t in done
        if t.state == TrialState.COMPLETE and max(t.user_attrs.get("constraints", [0.0])) <= 0
    ]
    line = f"[{len(done)}/{trials}]"
    if not feasible:
        return f"{line} no trial within budget yet"
    best = min(feasible, key=lambda t: (t.user_attrs[cost], t.number))
    base = trialist.reference
    drop = (base["metric"] - best.user_attrs["metric"]) * 100
    return (
        f"{line} best within budget: trial {best.number}, {cost} {best.user_attrs[cost]:.4g} "
        f"({base[cost] / max(best.user_attrs[cost], 1e-12):.2f}x better), drop {drop:.2f} pt"
    )


def _worker(
    spec: str,
    settings: SearchSettings,
    run_dir: str,
    url: str,
    name: str,
    threads: int,
    sequence: tuple[Any, ...],
    reference: dict[str, Any],
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
        with Interrupt() as interrupt:
            threading.Thread(target=orphaned, daemon=True).start()
            import torch

            from fulcrum.artifacts import open_store
            from fulcrum.workloads import load

            torch.set_num_threads(threads)
            workload = load(spec)
            storage = storage_for(url)
            study, _ = open_study(settings, storage, name, sequence)
            store = open_store(artifacts) if artifacts else None
            trialist = Trialist(workload, settings, Path(run_dir), threads, reference, store=store)
            work(study, storage, trialist, settings.trials, interrupt)
    except KeyboardInterrupt:  # the parent says that the search was interrupted, and how to resume
        sys.stderr.flush()
        os._exit(0)  # at once: tearing down torch and friends takes seconds on a busy machine


# -- the whole search ---------------------------------------------------------------------------


def set_up(
    study: Any, trialist: Trialist, say: Callable[[str], None], artifacts: str | None = None
) -> dict[str, Any]:
    """The study's reference figures, measured once per study: the baseline, the quantization
    probe's verdict, the kind of its artifact store; then the warm-start recipes are queued."""
    from fulcrum.artifacts import kind
    from fulcrum.runtimes import OnnxModel
    from fulcrum.workloads import source_of

    settings, workload = trialist.settings, trialist.workload
    say("measuring the baseline")
    base = measure_baseline(workload, settings, trialist.threads, trialist.runner)
    if isinstance(trialist.runner, OnnxModel) and base.threads != trialist.runner.threads:
        trialist.runner = trialist.runner.with_threads(base.threads)
    reference = {
        **asdict(base),
        "workload_source": source_of(workload),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("workers",)},
        "artifacts": kind(artifacts),  # every machine joining must reach a store of this kind
    }
    trialist.reference = reference
    probing = settings.runtime == "onnxruntime" and "latency_ms" in settings.objectives
    if probing and settings.trials >= WARM_START_MIN_TRIALS:  # worth it for longer searches
        say("probing which quantization modes make this model faster")
        reference["probe"] = probe_quantization(trialist)
        for mode, verdict in reference["probe"].items():
            figure = verdict.get("latency_ratio")
            found = f"{figure:.2f}x the baseline's latency" if figure else verdict["error"]
            say(f"  quantize:{mode}: {found}" + ("" if verdict["kept"] else ", left out"))
    if settings.trials >= WARM_START_MIN_TRIALS and not trialist.graph_only:
        analyse_layers(trialist, reference, say)
    study.set_user_attr("baseline", reference)
    if settings.trials >= WARM_START_MIN_TRIALS and not trialist.graph_only:
        fallback = bool(reference.get("fallback"))
        for params in warm_start(settings, workload.task, trialist.transformer, fallback):
            kept = within_probe(params, reference.get("probe"))
            if kept is not None:
                study.enqueue_trial(kept, skip_if_exists=True)
    return reference


# the search's sensitivity analysis: validation samples, and the layers (most MACs first) whose
# pruning curves it measures (3 prunings and evaluations each)
SENSITIVITY_SAMPLES = 256
SENSITIVITY_PRUNE_LAYERS = 24


def analyse_layers(
    trialist: Trialist, reference: dict[str, Any], say: Callable[[str], None]
) -> None:
    """The sensitivity analysis of the baseline (``fulcrum.sensitivity``), once per study: each
    layer pruned alone (for the allocation of pruning ratios; not for transformers, whose
    structure is searched by heads and layers) and int8 with each layer alone in float (for the
    fallback dimension, when int8-static is in the space). Kept in the study, so that every
    machine sees it, and in the run folder's ``sensitivity.json``; the report plots it."""
    from fulcrum import sensitivity

    settings = trialist.settings
    probe = reference.get("probe")
    int8 = settings.runtime == "onnxruntime" and (
        probe is None or bool(probe.get("int8-static", {}).get("kept"))
    )
    prune = not trialist.transformer
    if not (int8 or prune):
        return
    say(
        "measuring each layer's sensitivity"
        + (" to pruning" if prune else "")
        + (" and int8" if int8 else "")
    )
    found = sensitivity.cached(
        trialist.workload,
        trialist.run_dir,
        threads=trialist.threads,
        prune=prune,
        quantize=int8,
        latency=settings.runtime == "onnxruntime",
        samples=SENSITIVITY_SAMPLES,
        prune_layers=SENSITIVITY_PRUNE_LAYERS,
        progress=lambda m: log.info("sensitivity: %s", m),
    )
    reference["sensitivity"] = found.to_dict()
    if found.int8_metric is not None:
        reference["fallback"] = int8_fallback(found, say)
        collapsed = int8_collapses(found, reference["fallback"], settings)
        if collapsed and probe is not None and "int8-static" in probe:
            probe["int8-static"] = {**probe["int8-static"], "kept": False, "left_out": collapsed}
            say(f"  quantize:int8-static left out: it {collapsed}")


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
    progress: Callable[[str], None] | None = None,
    artifacts: str | None = None,
) -> tuple[Any, Trialist, float]:
    """Run (or resume, or join) the study until it has ``settings.trials`` finished trials;
    with ``artifacts`` (a folder or ``s3://bucket/prefix``), each trial's files are uploaded there.

    Returns the Optuna study, this process's Trialist (baseline and runners) and the seconds
    the trials took; ``fulcrum.sweetspot`` turns them into the frontier and the pick. Torch's
    thread count, its random generator, the warning filters and the workload model's mode are
    left as they were. Ctrl-C raises KeyboardInterrupt within seconds, after the workers ended.
    """
    import torch

    from fulcrum.artifacts import open_store
    from fulcrum.runtimes import default_threads
    from fulcrum.workloads import source_of

    if not isinstance(workload.model, torch.nn.Module) and settings.runtime != "onnxruntime":
        raise ConfigError(
            "an ONNX workload runs on ONNX Runtime only; drop --runtime torch to search it."
        )
    if settings.workers > 1 and spec is None:
        raise ConfigError(
            "--workers > 1 needs the workload as a name or file, so that each worker can load it."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    name = study_name or "fulcrum"
    threads = threads or max(1, default_threads() // settings.workers)
    say = progress or (lambda _m: None)
    rdb = storage_for(url)
    study, sequence = open_study(settings, rdb, name)
    check_same_search(
        study.user_attrs.get("baseline"), source_of(workload), settings, name, artifacts
    )
    store = open_store(artifacts) if artifacts else None
    torch.set_num_threads(threads)
    trialist = Trialist(workload, settings, run_dir, threads, {}, progress=say, store=store)
    with locked(run_dir / ".setup.lock"):  # processes sharing this folder set up one at a time
        reference = study.user_attrs.get("baseline") or set_up(study, trialist, say, artifacts)
    trialist.reference = reference
    start = time.perf_counter()
    with Interrupt() as interrupt:
        procs = _start_workers(
            spec, settings, run_dir, url, name, threads, sequence, reference, artifacts
        )
        try:
            work(study, rdb, trialist, settings.trials, interrupt)
            for p in procs:
                p.join()
        except BaseException:  # Ctrl-C, or an error here: the workers end too
            _stop_workers(procs)
            raise
    return study, trialist, time.perf_counter() - start


def _start_workers(
    spec: str | None,
    settings: SearchSettings,
    run_dir: Path,
    url: str,
    name: str,
    threads: int,
    sequence: tuple[Any, ...],
    reference: dict[str, Any],
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
                reference,
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
