"""What defines a search: ``SearchSettings``, and the budget built from them once per study."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from fulcrum import runtimes
from fulcrum.errors import ConfigError, suggest
from fulcrum.frontier import POLICIES, Budget

OBJECTIVES = {
    "metric": "maximize",
    "latency_ms": "minimize",
    "size_bytes": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
BUDGET_KEYS = ("latency_ms", "size_mb", "size_bytes", "macs", "params")
SAMPLERS = ("tpe", "nsga2", "random")
# settings a resumed study must share with the command that joins it (trials, seed, workers and
# the pick's policy may change between runs)
SHARED_SETTINGS = ("runtime", "batch_size", "max_drop", "relative", "budgets", "max_epochs")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search; saved in the study so that a resume can be checked."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # (as a run record)

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
        known = runtimes.known()
        for target in self.targets:
            if target not in known:
                raise ConfigError(
                    f"--runtime {target!r} is not a deployment target; choose from "
                    f"{', '.join(known)}, a comma-separated list of them, or auto."
                    f"{suggest(target, known)}"
                )
            missing = runtimes.unavailable(target)
            if missing is not None:
                raise ConfigError(f"--runtime {target}: {missing}.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(
                f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}.{suggest(self.sampler, SAMPLERS)}"
            )
        if self.policy not in POLICIES:
            raise ConfigError(
                f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}."
                f"{suggest(self.policy, POLICIES)}"
            )
        if self.workers < 1 or self.batch_size < 1:
            raise ConfigError("--workers and --batch-size must be at least 1.")
        for name in ("trial_seconds", "final_seconds"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a positive number of seconds; got {value}."
                )
        if self.finalists < 1 or self.max_epochs < 1:
            raise ConfigError(
                f"--finalists and --max-epochs must be at least 1; got {self.finalists} and "
                f"{self.max_epochs}."
            )
        if self.max_drop is not None and not 0 <= self.max_drop < float("inf"):
            raise ConfigError(
                f"--max-drop must be a finite number of points >= 0; got {self.max_drop}."
            )

    @property
    def targets(self) -> tuple[str, ...]:
        """The deployment targets searched: ``runtime`` is one (``onnxruntime``), several
        (``onnxruntime,torch-compile``), or ``auto``: every target available here."""
        if self.runtime == "auto":  # ONNX Runtime first: it is every search's reference
            found = [t for t in runtimes.known() if runtimes.unavailable(t) is None]
            return tuple(sorted(found, key=lambda t: t != "onnxruntime"))
        return tuple(dict.fromkeys(t.strip() for t in self.runtime.split(",") if t.strip()))

    @property
    def primary(self) -> str:
        """The first target: the one whose baseline sets the budget and the reported figures."""
        return self.targets[0] if self.targets else self.runtime

    def limits(self) -> dict[str, float]:
        """Budgets in the units trials record (size in bytes)."""
        out = dict(self.budgets)
        if "size_mb" in out:
            out["size_bytes"] = out.pop("size_mb") * 1e6
        return out

    def budget(self, baseline_metric: float) -> Budget:
        """The search's budget: the floor under the baseline's metric and the hard limits. Built
        once per study and kept in its reference; everything that judges a trial reads it there."""
        return Budget(
            metric="metric",
            baseline=baseline_metric,
            max_drop=self.max_drop,
            relative=self.relative,
            limits=self.limits(),
        )

    def shared(self) -> dict[str, Any]:
        """The settings a study keeps for the processes that join it (all but ``workers``)."""
        return {k: v for k, v in asdict(self).items() if k != "workers"}
