"""What every technique shares: the Candidate passed between steps, the context, the registry.

A technique is one file with three things: a frozen config dataclass that validates itself, an
``apply(config, candidate, context) -> Candidate`` that returns a new candidate and never changes
its input, and ``space(trial) -> config``, the ranges a search explores (``trial`` is an Optuna
trial or anything with the same ``suggest_*`` methods).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fulcrum.errors import ConfigError, TechniqueError, suggest
from fulcrum.train import TaskFunctions


class Trial(Protocol):
    """The part of ``optuna.Trial`` a search space uses."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...
    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of technique configs: frozen, validated on construction, saved with type and version."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    primary: ClassVar[str | None] = None  # the field a bare value sets: "quantize:int8-static"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a value out of range; subclasses extend this."""

    def check_range(
        self,
        field_name: str,
        low: float,
        high: float,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        value = getattr(self, field_name)
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not isinstance(value, int | float) or isinstance(value, bool) or too_low or too_high:
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            raise ConfigError(
                f"The {field_name!r} parameter of {self.name} must be a number in the range "
                f"{lo}{low}, {high}{hi}. Got {value!r} instead."
            )

    def check_choice(self, field_name: str, choices: Iterable[str]) -> None:
        value, options = getattr(self, field_name), list(choices)
        if value not in options:
            raise ConfigError(
                f"The {field_name!r} parameter of {self.name} must be one of {', '.join(map(repr, options))}. "
                f"Got {value!r} instead.{suggest(str(value), options)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config with its type and version, as plain JSON values."""
        values = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {"type": self.name, "version": self.version, **values}

    def __str__(self) -> str:
        args = ",".join(
            f"{f.name}={_text(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        )
        return f"{self.name}:{args}" if args else self.name


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "+".join(map(str, value))
    return str(value)


def coerce(config_cls: type[TechniqueConfig], key: str, raw: Any) -> Any:
    """Convert a recipe's text (or TOML value) to the type the config field declares."""
    hints = typing.get_type_hints(config_cls)
    if key not in hints:
        names = [f.name for f in fields(config_cls)]
        raise ConfigError(
            f"{config_cls.name} has no parameter {key!r}; its parameters are {', '.join(names)}."
            f"{suggest(key, names)}"
        )
    hint = hints[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    options = tuple(typing.get_origin(o) or o for o in options)
    if raw is None or (isinstance(raw, str) and raw.lower() == "none" and type(None) in options):
        return None
    if not isinstance(raw, str):
        return tuple(raw) if isinstance(raw, list) else raw
    for kind in options:
        try:
            if kind is bool:
                if raw.lower() in ("true", "yes", "1", "false", "no", "0"):
                    return raw.lower() in ("true", "yes", "1")
                continue
            if kind is int:
                return int(raw)
            if kind is float:
                value = float(raw)
                if math.isfinite(value):
                    return value
            if kind is tuple:
                return tuple(part for part in raw.split("+") if part)
            if kind is str:
                return raw
        except ValueError:
            continue
    raise ConfigError(
        f"The {key!r} parameter of {config_cls.name} cannot be {raw!r}; expected {hint}."
    )


@dataclass(frozen=True)
class Step:
    """A record of one applied technique: its config, what it measured, what to know."""

    config: dict[str, Any]
    seconds: float
    notes: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """A compressed model and where it runs.

    ``model`` is the float-compatible PyTorch module that training steps continue from, or None
    when the workload itself is an ONNX graph (a model from another framework), where only graph
    steps apply. When ``onnx`` is set, the deployed form is that ONNX graph run on ONNX Runtime
    (fused, int8 or fp16); when ``program`` is set, it is that ``torch.export`` archive (PyTorch's
    own int8, compiled by the torch-compile target); otherwise it is ``model`` itself.
    """

    model: nn.Module | None
    onnx: bytes | None = None
    runtime: str = "torch"
    steps: tuple[Step, ...] = ()
    program: bytes | None = None

    @classmethod
    def of(cls, model: Any) -> Candidate:
        """The uncompressed candidate of a workload's model: a PyTorch module or an OnnxModel."""
        if isinstance(model, nn.Module):
            return cls(model=model.eval())
        return cls(model=None, onnx=model.proto().SerializeToString(), runtime="onnxruntime")

    def with_step(self, step: Step, **changes: Any) -> Candidate:
        return dataclasses.replace(self, steps=(*self.steps, step), **changes)

    def require_float(self, technique: str) -> nn.Module:
        """The PyTorch model ``technique`` works on; refused once the recipe turned it into an
        ONNX graph, or when there never was one (an ONNX workload)."""
        if self.model is None:
            raise TechniqueError(
                f"{technique} works on a PyTorch model; this workload is an ONNX graph, on which "
                "only graph steps apply (fuse, quantize)."
            )
        if self.final:
            done = ", ".join(s.config.get("type", "?") for s in self.steps if s.facts.get("graph"))
            form = "an int8 program" if self.program is not None else "an ONNX graph"
            raise TechniqueError(
                f"{technique} works on the PyTorch model, which this recipe already turned into "
                f"{form} ({done or 'quantize'}); put {technique} before those steps."
            )
        return self.model

    @property
    def final(self) -> bool:
        """True once the model has left PyTorch's float model for its deployed form: an ONNX
        graph (fused or quantized) or an int8 program."""
        return self.onnx is not None or self.program is not None

    @property
    def quantized(self) -> bool:
        return any(s.config.get("type") == "quantize" for s in self.steps)


@dataclass(frozen=True)
class Context:
    """What techniques may use besides the model: the workload's data, task and teacher."""

    task: str
    example_inputs: tuple[torch.Tensor, ...]
    train: Any = None
    val: Any = None
    calib: Any = None
    teacher: nn.Module | None = None
    num_classes: int | None = None
    threads: int = 1
    seed: int = 0
    progress: Callable[[str], None] = lambda _message: None
    on_epoch: Callable[[int, float], None] | None = None  # called with each holdout score
    # the workload's own loss, soft loss and post-processing (a detector's), if it has them
    functions: TaskFunctions = field(default_factory=TaskFunctions)


ApplyFn = Callable[[Any, Candidate, Context], Candidate]
SpaceFn = Callable[[Trial], TechniqueConfig]

# the parts of a recipe a search composes, in the one order in which each step can use what came
# before: structural changes, then recovery training, then graph steps, then quantization
ROLES = ("structural", "recovery", "graph", "quantization")


@dataclass(frozen=True)
class Scope:
    """What a technique's search dimensions may depend on: the model, its task, the target, and
    what the search's set-up measured (the sensitivity analysis and the quantization probe)."""

    task: str
    runtime: str = "onnxruntime"
    transformer: bool = False
    graph_only: bool = False  # an ONNX workload: no PyTorch model to change or train
    max_epochs: int = 10
    # a pruning ratio spread over the layers by sensitivity, steered by a strength (0: uniform)
    allocate: Callable[[float, float], tuple[str, ...]] | None = None
    fallback: tuple[str, ...] = ()  # layers int8 hurts most, worst first
    modes: tuple[str, ...] | None = None  # quantization modes the probe kept, fastest first

    @property
    def labelled(self) -> bool:
        """Whether the data has labels to train on (an embedding task has none)."""
        return self.task != "embedding"


@dataclass(frozen=True)
class WarmStart:
    """A point a search tries first, owned by a structural technique: each technique's own
    parameters by technique name (Optuna's names, spelled in that technique's file), the kind
    of recovery it needs ("quick": a short fine-tuning, as a mild cut needs; "long":
    distillation at length, for a deep cut; "student": distillation of a shallower student),
    and its place among the search's warm starts (``rank``)."""

    rank: int
    params: dict[str, dict[str, Any]]
    recovery: str = "quick"


@dataclass(frozen=True)
class Search:
    """How a search draws a technique: its role, its own dimensions, and its warm starts.

    ``draw(trial, scope)`` suggests the technique's parameters (names prefixed by its own name)
    and returns its config. ``use`` is the order of the choices of the switch ``use_<name>``
    (None: no switch; a recovery technique is chosen among its role instead). ``warm(scope,
    kind)`` is the technique's part in a warm start of ``kind`` ("alone", "quick", "long",
    "student"): its parameters, or None when it takes no part.
    """

    role: str
    order: int
    draw: Callable[[Trial, Scope], TechniqueConfig]
    applies: Callable[[Scope], bool] = lambda _scope: True
    use: tuple[bool, bool] | None = (False, True)
    warm_starts: Callable[[Scope], tuple[WarmStart, ...]] = lambda _scope: ()
    warm: Callable[[Scope, str], dict[str, Any] | None] = lambda _scope, _kind: None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(
                f"a technique's role must be one of {', '.join(ROLES)}; got {self.role!r}."
            )


def recovery_schedule(trial: Trial, config: Any, scope: Scope) -> Any:
    """The dimensions every recovery technique shares: its epochs capped by the search's
    ``max_epochs``, and whether it is screened (early stopping, cut short when hopeless, on a
    holdout carved from the training split) or run to the end of its schedule on all of it."""
    config = dataclasses.replace(config, epochs=min(config.epochs, scope.max_epochs))
    if not trial.suggest_categorical("recovery.holdout", [True, False]):
        config = dataclasses.replace(config, patience=0)
    return config


def screened(holdout: bool) -> dict[str, Any]:
    """The shared recovery dimension's value in a warm start (see ``recovery_schedule``)."""
    return {"recovery.holdout": holdout}


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    apply: ApplyFn
    space: SpaceFn
    summary: str
    speeds_up: str  # the runtimes on which it is meant to be faster, or "" if it is not
    # what it promises to reduce, checked by the contract suite: "params" (and MACs), "nonzero",
    # "artifact" (bytes of the deployed file) or "" (nothing by itself, e.g. fine-tuning)
    reduces: str = ""
    invalid: dict[str, Any] = field(default_factory=dict)  # a parameter value it must refuse
    # "torch": changes the PyTorch model; "onnx": works on the exported graph, so only other
    # "onnx" steps can follow it in a recipe
    acts_on: str = "torch"
    # the tiny model kinds of ``fulcrum.testing`` the contract suite checks it on
    contract_kinds: tuple[str, ...] = ("cnn", "mlp")
    search: Search | None = None  # how a search draws it (None: never drawn, only by recipe)


TECHNIQUES: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    """Add ``technique`` to the registry; a second technique under the same name is refused."""
    existing = TECHNIQUES.get(technique.name)
    if existing is not None and existing.apply is not technique.apply:
        raise ConfigError(
            f"a technique named {technique.name!r} is already registered; choose another name."
        )
    TECHNIQUES[technique.name] = technique
    return technique


def get(name: str) -> Technique:
    from fulcrum import techniques  # noqa: F401 - importing the package registers every technique

    if name not in TECHNIQUES:
        raise ConfigError(
            f"unknown technique {name!r}; choose from {', '.join(sorted(TECHNIQUES))}."
            f"{suggest(name, TECHNIQUES)}"
        )
    return TECHNIQUES[name]


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Rebuild a config from ``to_dict()`` output."""
    data = dict(data)
    technique = get(str(data.pop("type", "")))
    data.pop("version", None)
    return technique.config(**{k: coerce(technique.config, k, v) for k, v in data.items()})


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode: techniques never change the model they were given."""
    return copy.deepcopy(model).eval()


def find_modules(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """Modules by qualified name, with a clear error for a name that is not in the model."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            shown = name if len(name) <= 120 else f"{name[:60]}... ({len(name):,} characters)"
            close = suggest(name, modules) if len(name) <= 120 else ""
            raise ConfigError(
                f"layer {shown!r} is not in the model; its layers include "
                f"{', '.join(list(n for n in modules if n)[:8])} ...{close}"
            )
        found.append(modules[name])
    return found


def head_name(model: nn.Module) -> str | None:
    """The last Linear (or Conv) layer in definition order: the classifier head by convention."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.Conv1d):
            last = name
    return last
