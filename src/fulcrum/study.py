"""The sweet-spot search: an Optuna study over recipes, durable and parallel.

The only module that imports optuna. Each trial builds a recipe from the technique registry's
search spaces (structural steps, then recovery, then quantization: the one order in which each
step can use what came before), applies it, evaluates the result on its deployment runtime and
times it side by side with the baseline. Latency is stored as ``ratio x baseline latency``, the
ratio measured interleaved in one process, so that machine drift between trials cancels.

The study lives in the run folder (SQLite, with heartbeats): a search killed at any moment and
started again with the same command resumes — finished trials are kept, the interrupted one is
retried. ``workers`` processes share the study; ``storage`` accepts any Optuna storage URL so
that many machines can share one study through a database server.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.errors import ConfigError, FulcrumError, MissingDependencyError, first_line, suggest
from fulcrum.runtimes import keeps_caller_state

if TYPE_CHECKING:
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
) -> tuple[Any, ...]:
    """A recipe drawn from the technique registry's spaces, in the one order that works.

    Recovery by fine-tuning needs labels, so an embedding task recovers by distillation only;
    layer dropping, head and feed-forward pruning, hidden-state distillation and graph fusion are
    drawn for transformers (what they act on). An ONNX workload (``graph_only``) has no PyTorch
    model to train: only quantization is drawn. ``modes`` narrows the quantization modes drawn
    (the probe's verdict: the modes that made this model faster); empty, no quantization.
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
        steps.append(get("prune").space(trial))
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
            if transformer and recovery == "distill":  # TinyBERT's intermediate-layer loss
                config = replace(
                    config, hidden=trial.suggest_categorical("distill.hidden", [0.0, 1.0])
                )
            steps.append(config)
    if settings.runtime == "onnxruntime":
        if transformer and trial.suggest_categorical("use_fuse", [True, False]):
            steps.append(get("fuse").space(trial))
        if quantize and trial.suggest_categorical("use_quantize", [True, False]):
            steps.append(get("quantize").space(trial))
    return tuple(steps)


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


def within_probe(params: dict[str, Any], probe: dict[str, Any] | None) -> dict[str, Any]:
    """A warm-start recipe with its quantization mode replaced by the fastest mode the probe
    kept (or without quantization when it kept none)."""
    mode = params.get("quantize.mode")
    if not probe or mode is None or probe.get(mode, {}).get("kept"):
        return params
    kept = sorted((v["latency_ratio"], m) for m, v in probe.items() if v["kept"])
    narrowed = {k: v for k, v in params.items() if not k.startswith("quantize.")}
    return {**narrowed, "quantize.mode": kept[0][1]} if kept else narrowed


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
    runners: dict[str, Any] = {"baseline": trialist.base.runner}
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
    times = timing.compare_latency(
        runners,
        workload.example_inputs,
        batch_sizes=(settings.batch_size,),
        threads=trialist.threads,
        seconds=settings.trial_seconds * len(runners),
    )
    base = times[("baseline", settings.batch_size)].median_ms
    for mode in runners:
        if mode != "baseline":
            ratio = round(times[(mode, settings.batch_size)].median_ms / base, 4)
            found[mode] = {"kept": ratio < 1.0, "latency_ratio": ratio}
    return found


WARM_START_MIN_TRIALS = 10


def warm_start(settings: SearchSettings, task: str, transformer: bool) -> list[dict[str, Any]]:
    """Recipes known to be strong, tried first so that the sampler starts from good points:
    int8 alone, then 30% and 50% pruning with recovery and int8 (ONNX Runtime searches); for a
    transformer also half its layers (and half its feed-forward width) distilled, then int8.

    For a transformer, int8 means fused attention and dynamic int8 with per-channel weights and
    4-bit embedding tables (measured best on all-MiniLM-L6-v2); otherwise static int8.
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
            "use_lowrank": False,
            **recovery,
            "use_quantize": True,
            **quantize,
            **({"use_layers": False, "use_heads": False} if transformer else {}),
        }
        for ratio in (0.3, 0.5)
    ]
    if not transformer:
        return [int8, *pruned]
    # DistilBERT's student: half the layers, then half the feed-forward width too, distilled
    structural = [
        {
            **int8,
            "use_layers": True,
            "layers.ratio": 0.5,
            "use_heads": ffn > 0,
            **(
                {"heads.ratio": 0.25, "heads.ffn": ffn, "heads.global_ranking": False}
                if ffn
                else {}
            ),
            **distilled,
        }
        for ffn in (0.0, 0.5)
    ]
    return [int8, *pruned, *structural]


# -- storage ------------------------------------------------------------------------------------


def storage_for(url: str) -> Any:
    """An Optuna RDB storage with heartbeats and retry of trials whose process died."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=retry,
            engine_kwargs=_engine_kwargs(url),
        )
    except ImportError as exc:
        driver = (
            "psycopg[binary] (pip install 'fulcrum[postgres]')"
            if url.startswith("postgres")
            else "its driver"
        )
        raise MissingDependencyError(f"storage {url!r} needs {driver}: {exc}.") from None
    except Exception as exc:
        first = first_line(exc, 200)
        raise ConfigError(
            f"storage {url!r} cannot be reached ({first}); check the URL, that the server runs, "
            "and that its driver is installed (PostgreSQL: pip install 'fulcrum[postgres]')."
        ) from None


def check_storage_url(url: str) -> None:
    """Refuse a storage URL whose database kind or driver is unknown, before any work starts."""
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except Exception as exc:
        raise ConfigError(
            f"--storage {url!r} is not a database URL this machine can open ({first_line(exc, 120)}); "
            "use sqlite:///path/study.db or postgresql://user:password@host:5432/db "
            "(PostgreSQL needs pip install 'fulcrum[postgres]')."
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def open_study(
    settings: SearchSettings, storage: Any, name: str, direction_names: Sequence[str]
) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=10),
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True, n_startup_trials=10
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=settings.seed),
    }[settings.sampler]()
    directions: Any = [OBJECTIVES[o] for o in settings.objectives]
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    saved = study.user_attrs.get("objectives")
    if saved is not None and list(saved) != list(direction_names):
        raise ConfigError(
            f"study {name!r} exists with objectives {', '.join(saved)}, not {', '.join(direction_names)}; "
            "use another --study name or the same objectives."
        )
    if saved is None:
        study.set_user_attr("objectives", list(direction_names))
    return study


# settings a resumed study must share with the command that joins it (trials, seed, workers and
# the pick's policy may change between runs)
SHARED_SETTINGS = ("runtime", "batch_size", "max_drop", "relative", "budgets", "max_epochs")


def check_same_search(
    reference: dict[str, Any] | None, workload: str, settings: SearchSettings, name: str
) -> None:
    """Refuse to join a study of another workload or with other budgets, before any work."""
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


# -- one process's work -------------------------------------------------------------------------


@dataclass
class Baseline:
    metric: float
    metrics: dict[str, Any]
    latency_ms: float
    size_bytes: int
    macs: int
    params: int
    runner: Any


def measure_baseline(workload: Workload, settings: SearchSettings, threads: int) -> Baseline:
    from fulcrum import measure, timing
    from fulcrum.compression import onnx_bytes, output_of
    from fulcrum.evaluation import evaluate_workload
    from fulcrum.metrics import MAIN_METRIC
    from fulcrum.runtimes import OnnxModel
    from fulcrum.techniques import Candidate

    evaluation = evaluate_workload(workload, threads=threads)
    profile = measure.profile(
        workload.model, workload.example_inputs, latency=False, runtimes_=("torch",)
    )
    if settings.runtime == "onnxruntime":
        data = onnx_bytes(Candidate.of(workload.model), workload.example_inputs)
        runner: Any = OnnxModel(data, threads, output_of(workload))
        size = len(data)
    else:
        runner, size = workload.model, profile.artifact_bytes["safetensors"]
    times = timing.compare_latency(
        {"baseline": runner},
        workload.example_inputs,
        batch_sizes=(settings.batch_size,),
        threads=threads,
        seconds=settings.final_seconds,
    )
    value = evaluation.metrics[MAIN_METRIC[workload.task]]
    return Baseline(
        metric=float(value or 0.0),
        metrics=evaluation.metrics,
        latency_ms=times[("baseline", settings.batch_size)].median_ms,
        size_bytes=size,
        macs=profile.macs,
        params=profile.params_total,
        runner=runner,
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
    ) -> None:
        self.workload, self.settings, self.run_dir, self.threads = (
            workload,
            settings,
            run_dir,
            threads,
        )
        self.reference = reference  # the study's baseline figures (the first process measured them)
        self.progress = progress or (lambda _m: None)
        self.cache: dict[str, Any] = {}
        self.base = measure_baseline(workload, settings, threads)
        import torch

        from fulcrum.techniques.fuse import has_attention

        self.transformer = isinstance(workload.model, torch.nn.Module) and has_attention(
            workload.model
        )
        self.graph_only = not isinstance(workload.model, torch.nn.Module)  # an ONNX workload

    def objective(self, trial: Any) -> list[float]:
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
        )
        text = recipe_text(recipe)
        trial.set_user_attr("recipe", text)
        trial.set_user_attr("worker", WORKER)  # which machine and process ran it
        self.progress(f"trial {trial.number}: {text}")
        earlier = same_recipe(trial, text)
        if earlier is not None:  # the sampler drew a recipe already measured: reuse its figures
            for key, value in earlier.user_attrs.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("recipe", text)
            trial.set_user_attr("worker", WORKER)
            trial.set_user_attr("same_as", earlier.number)
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
        floor = self.reference["metric"] - max(0.2, 5 * (settings.max_drop or 1.0) / 100)

        def cut_short(epoch: int, value: float) -> None:
            if epoch >= 1 and value < floor:  # still collapsed after two epochs of recovery
                raise optuna.TrialPruned(f"holdout {value:.3f} after {epoch + 1} epochs")

        if len(self.cache) > 24:
            self.cache.clear()
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
        times = timing.compare_latency(
            {"baseline": self.base.runner, "candidate": runner},
            workload.example_inputs,
            batch_sizes=(settings.batch_size,),
            threads=self.threads,
            seconds=settings.trial_seconds,
        )
        ratio = (
            times[("candidate", settings.batch_size)].median_ms
            / times[("baseline", settings.batch_size)].median_ms
        )
        params, macs = counts(candidate, workload.example_inputs)
        values = {
            "metric": metric,
            "latency_ms": round(ratio * self.reference["latency_ms"], 5),
            "latency_ratio": round(ratio, 4),
            "size_bytes": size,
            "macs": macs,
            "params": params,
        }
        save_candidate(
            candidate,
            self.run_dir / "trials" / str(trial.number),
            workload.example_inputs,
            self.reference["workload_source"],
        )
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


def same_recipe(trial: Any, text: str) -> Any:
    """A finished trial of this study that measured the recipe ``text`` already, if any."""
    from optuna.trial import TrialState

    for earlier in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if earlier.user_attrs.get("recipe") == text and earlier.number != trial.number:
            return earlier
    return None


def violations(
    values: dict[str, float], baseline_metric: float, settings: SearchSettings
) -> dict[str, float]:
    """Per-constraint amounts over the limit (<= 0 when met): the drop, then each budget."""
    out = {}
    if settings.max_drop is not None:
        allowed = (
            baseline_metric * settings.max_drop / 100
            if settings.relative
            else settings.max_drop / 100
        )
        out["drop"] = round(baseline_metric - values["metric"] - allowed, 6)
    for key, limit in settings.limits().items():
        out[key] = round((values[key] - limit) / limit, 6)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by this machine's workers (asking for a trial is not atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def work(study: Any, trialist: Trialist, trials: int, lock: Path) -> int:
    """Ask for and run trials until the study has ``trials`` finished ones; return how many ran here."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    ran = 0
    attempts = 0
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with our own heartbeat thread (below) is what Study.optimize does internally
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    while True:
        fail_stale_trials(study)  # a dead process's trial is failed and queued again
        with _locked(lock):
            states = [t.state for t in study.get_trials(deepcopy=False)]
            finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
            running = states.count(TrialState.RUNNING)
            waiting = states.count(TrialState.WAITING)
            if finished >= trials:
                return ran
            busy = not waiting and finished + running >= trials
            trial = None if busy else study.ask()
        if trial is None:  # the rest are running elsewhere; wait in case one of them dies
            time.sleep(1.0)
            continue
        attempts += 1
        if attempts > 3 * trials + 10:
            raise ConfigError(
                "too many trials failed; see the errors in results.json and fix the recipe space."
            )
        heartbeat = get_heartbeat_thread(trial._trial_id, study._storage)
        heartbeat.start()
        try:
            values = trialist.objective(trial)
        except BaseException as exc:
            heartbeat.join()  # always: a live heartbeat would keep a dead trial "running"
            if isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("pruned", str(exc))
                study.tell(trial, state=TrialState.PRUNED)
            elif isinstance(exc, Exception):  # the trial fails; the search goes on
                message = (
                    str(exc)
                    if isinstance(exc, FulcrumError)
                    else f"internal error (a bug in Fulcrum): {type(exc).__name__}: {first_line(exc)}"
                )
                trial.set_user_attr("error", message)
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number, message)
            else:  # Ctrl-C: the trial is failed and queued again for the resumed search
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                study.tell(trial, state=TrialState.FAIL)
                raise
        else:
            heartbeat.join()
            study.tell(trial, values)
        ran += 1
        trialist.progress(best_so_far(study, trialist, trials))


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
    index: int,
    reference: dict[str, Any],
) -> None:
    """A worker process: loads the workload by name and joins the study."""
    import torch

    from fulcrum.workloads import load

    torch.set_num_threads(threads)
    worker_settings = replace(settings, seed=settings.seed + index)
    workload = load(spec)
    storage = storage_for(url)
    study = open_study(worker_settings, storage, name, settings.objectives)
    trialist = Trialist(workload, worker_settings, Path(run_dir), threads, reference)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches every worker: end quietly
        work(study, trialist, settings.trials, Path(run_dir) / ".ask.lock")


# -- the whole search ---------------------------------------------------------------------------


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
) -> tuple[Any, Trialist, float]:
    """Run (or resume) the study in ``run_dir`` until it has ``settings.trials`` finished trials.

    Returns the Optuna study, this process's Trialist (baseline and runners) and the seconds
    the trials took; ``fulcrum.sweetspot`` turns them into the frontier and the pick. Torch's
    thread count, its random generator, the warning filters and the workload model's mode are
    left as they were.
    """
    import torch

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
    study = open_study(settings, storage_for(url), name, settings.objectives)
    check_same_search(study.user_attrs.get("baseline"), source_of(workload), settings, name)
    torch.set_num_threads(threads)
    say("measuring the baseline")
    trialist = Trialist(workload, settings, run_dir, threads, {}, progress=say)
    reference = study.user_attrs.get("baseline")
    if reference is None:
        reference = {
            "metric": trialist.base.metric,
            "latency_ms": trialist.base.latency_ms,
            "size_bytes": trialist.base.size_bytes,
            "macs": trialist.base.macs,
            "params": trialist.base.params,
            "metrics": trialist.base.metrics,
            "workload_source": source_of(workload),
            "settings": {k: v for k, v in asdict(settings).items() if k not in ("workers",)},
        }
        probing = settings.runtime == "onnxruntime" and "latency_ms" in settings.objectives
        if probing and settings.trials >= WARM_START_MIN_TRIALS:  # worth it for longer searches
            say("probing which quantization modes make this model faster")
            reference["probe"] = probe_quantization(trialist)
            for mode, verdict in reference["probe"].items():
                figure = verdict.get("latency_ratio")
                found = f"{figure:.2f}x the baseline's latency" if figure else verdict["error"]
                say(f"  quantize:{mode}: {found}" + ("" if verdict["kept"] else ", left out"))
        study.set_user_attr("baseline", reference)
        if settings.trials >= WARM_START_MIN_TRIALS and not trialist.graph_only:
            for params in warm_start(settings, workload.task, trialist.transformer):
                study.enqueue_trial(within_probe(params, reference.get("probe")))
    trialist.reference = reference
    start = time.perf_counter()
    if settings.workers > 1:
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(
                target=_worker,
                args=(spec, settings, str(run_dir), url, name, threads, i, reference),
            )
            for i in range(1, settings.workers)
        ]
        for p in procs:
            p.start()
        work(study, trialist, settings.trials, run_dir / ".ask.lock")
        for p in procs:
            p.join()
    else:
        work(study, trialist, settings.trials, run_dir / ".ask.lock")
    return study, trialist, time.perf_counter() - start
