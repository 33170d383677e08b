"""The Workload: a model, its data, its task and example inputs — everything a stage needs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fulcrum.errors import ConfigError, DataError, suggest
from fulcrum.metrics import TASKS
from fulcrum.runtimes import OnnxModel

SPLITS = ("train", "val", "calib")
MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float] | float]


@dataclass(frozen=True)
class Workload:
    """A model with the data and task to judge it on.

    ``val`` is the split every metric is reported on; ``train`` feeds fine-tuning and
    distillation; ``calib`` feeds int8 calibration. Each yields ``(inputs, target)`` batches.
    """

    name: str
    task: str
    model: nn.Module | OnnxModel
    val: DataLoader | None
    example_inputs: tuple[torch.Tensor, ...]
    train: DataLoader | None = None
    calib: DataLoader | None = None
    num_classes: int | None = None
    metric: MetricFn | None = None
    reference: nn.Module | OnnxModel | None = None
    source: str = ""
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_task(self.task, self.name)

    def pytorch_model(self, command: str) -> nn.Module:
        """The model as a PyTorch module, for ``command``s that change or rebuild it."""
        if not isinstance(self.model, nn.Module):
            raise ConfigError(
                f"{command} needs a PyTorch model; an ONNX workload can be profiled and "
                "evaluated only."
            )
        return self.model


def check_task(task: str, where: str) -> None:
    if not isinstance(task, str):
        raise ConfigError(
            f"{where}: task must be a string, one of {', '.join(TASKS)}; got {task!r}."
        )
    if task not in TASKS:
        raise ConfigError(
            f"{where}: task {task!r} is not known; use one of {', '.join(TASKS)}.{suggest(task, TASKS)}"
        )


def cache_dir() -> Path:
    """Where trained baselines are kept: $FULCRUM_CACHE_DIR, else the user cache folder."""
    root = os.environ.get("FULCRUM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fulcrum"
    )
    return Path(root)


def definition_key(*parts: str) -> str:
    """A short hash of everything that determines a trained baseline."""
    digest = hashlib.sha256()
    for part in (*parts, torch.__version__.split("+")[0]):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def to_loader(
    split: Any, name: str, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A DataLoader from a DataLoader, a Dataset, or an ``(inputs, targets)`` pair of arrays.

    ``inputs`` may be a tuple of arrays, one per input of a model that takes several; batches
    are then ``((x1, x2, ...), targets)``.
    """
    if isinstance(split, DataLoader):
        loader = split
    else:
        if isinstance(split, Dataset):
            dataset = split
        elif isinstance(split, tuple | list) and len(split) == 2:
            xs = split[0] if isinstance(split[0], tuple) else (split[0],)
            x_tensors = tuple(_tensor(x) for x in xs)
            y = _tensor(split[1])
            for x in x_tensors:
                if len(x) != len(y):
                    raise DataError(
                        f"data split {name!r} has {len(x)} inputs but {len(y)} targets; give one target per input."
                    )
            dataset = (
                TensorDataset(x_tensors[0], y) if len(xs) == 1 else SeveralInputs(x_tensors, y)
            )
        else:
            raise DataError(
                f"data split {name!r} is a {type(split).__name__}; give a DataLoader, a Dataset or an (inputs, targets) pair."
            )
        if len(dataset) == 0:  # type: ignore[arg-type]  # (a shuffled empty loader cannot be built)
            raise DataError(
                f"data split {name!r} has zero samples; give it at least one (inputs, target) pair."
            )
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    try:
        size = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    if size == 0:
        raise DataError(
            f"data split {name!r} has zero samples; give it at least one (inputs, target) pair."
        )
    return loader


def _tensor(values: Any) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


class SeveralInputs(Dataset):
    """Samples ``((x1[i], x2[i], ...), y[i])`` of a model with several inputs."""

    def __init__(self, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(x[index] for x in self.inputs), self.targets[index]


def first_inputs(loader: Iterable[Any], name: str) -> tuple[torch.Tensor, ...]:
    """One sample of model inputs (batch of 1) taken from the first batch of ``loader``."""
    for batch in loader:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
        return tuple(t[:1] for t in xs)
    raise DataError(
        f"data split {name!r} has zero samples; give it at least one (inputs, target) pair."
    )
