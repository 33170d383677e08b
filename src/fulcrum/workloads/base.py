"""The Workload: a model, its data, its task and example inputs — everything a stage needs."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from fulcrum.errors import ConfigError, DataError, suggest
from fulcrum.metrics import PAD_LABEL, TASKS
from fulcrum.runtimes import OnnxModel
from fulcrum.train import LossFn, PostprocessFn

SPLITS = ("train", "val", "calib")
MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float] | float]


@dataclass(frozen=True)
class Workload:
    """A model with the data and task to judge it on.

    ``val`` is the split every metric is reported on; ``train`` feeds fine-tuning and
    distillation; ``calib`` feeds int8 calibration. Each yields ``(inputs, target)`` batches.

    A ``detection`` workload's targets are ``(batch, M, 5)`` rows ``[x1, y1, x2, y2, label]``
    in pixels, padded with label -1 (``detection_collate`` builds them from per-image dicts);
    its ``postprocess`` turns the network's raw output into boxes, scores and labels, and its
    ``loss`` (and optionally ``distill_loss``) is what recovery training minimises (see
    ``fulcrum.train.TaskFunctions``). ``loss`` may replace any other task's loss as well.
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
    postprocess: PostprocessFn | None = None
    loss: LossFn | None = None
    distill_loss: LossFn | None = None

    def __post_init__(self) -> None:
        check_task(self.task, self.name)
        if self.task == "detection" and self.postprocess is None:
            raise ConfigError(
                f"{self.name}: a detection workload needs its post-processing (decoding and NMS "
                "of the raw outputs); in a TOML workload, postprocess = 'module:callable'."
            )

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
    split: Any,
    name: str,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    task: str = "",
) -> DataLoader:
    """A DataLoader from a DataLoader, a Dataset, or an ``(inputs, targets)`` pair of arrays.

    ``inputs`` may be a tuple of arrays, one per input of a model that takes several; batches
    are then ``((x1, x2, ...), targets)``. For a detection task, an image's target may be a dict
    ``{"boxes": (K, 4), "labels": (K,)}`` or ``(K, 5)`` rows (``targets`` a list of them, one per
    image), and batches carry them padded (``detection_collate``).
    """
    collate = functools.partial(detection_collate, where=name) if task == "detection" else None
    if isinstance(split, DataLoader):
        loader = split
    else:
        if isinstance(split, Dataset):
            dataset = split
        elif task == "detection" and isinstance(split, tuple | list) and len(split) == 2:
            dataset = PerImage(_tensor(split[0]), list(split[1]), name)
        elif isinstance(split, tuple | list) and len(split) == 2:
            xs = split[0] if isinstance(split[0], tuple) else (split[0],)
            x_tensors = tuple(_tensor(x) for x in xs)
            y = _tensor(split[1])
            for x in x_tensors:
                if len(x) != len(y):
                    raise DataError(
                        f"data split {name!r} has {len(x)} inputs but {len(y)} targets; give one target per input."
                    )
                if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    row = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0, 0])
                    raise DataError(
                        f"data split {name!r} has NaN or infinite inputs (sample {row} first); "
                        "clean or drop those samples."
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
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
        )
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


class PerImage(Dataset):
    """Images and one detection target per image (a dict or rows), as ``(image, target)``."""

    def __init__(self, images: torch.Tensor, targets: list[Any], name: str) -> None:
        if len(images) != len(targets):
            raise DataError(
                f"data split {name!r} has {len(images)} images but {len(targets)} targets; give "
                "one target per image."
            )
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.images[index], self.targets[index]


def box_rows(target: Any, where: str = "data") -> torch.Tensor:
    """One image's detection target as ``(K, 5)`` float rows ``[x1, y1, x2, y2, label]``, from
    a dict ``{"boxes": (K, 4), "labels": (K,)}`` or from rows already."""
    if isinstance(target, Mapping):
        if "boxes" not in target or "labels" not in target:
            missing = "boxes" if "boxes" not in target else "labels"
            raise DataError(
                f"an image of split {where!r} has no {missing!r} entry (its keys: "
                f"{sorted(map(str, target))}); give each image {{'boxes': (K, 4) x1, y1, x2, y2 "
                "in pixels, 'labels': (K,)}, with K = 0 for an image without objects."
            )
        boxes = _tensor(target["boxes"]).float().reshape(-1, 4)
        labels = _tensor(target["labels"]).float().reshape(-1, 1)
        if len(boxes) != len(labels):
            raise DataError(
                f"an image of split {where!r} has {len(boxes)} boxes but {len(labels)} labels; "
                "give one label per box."
            )
        return torch.cat([boxes, labels], dim=1)
    rows = _tensor(target).float()
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise DataError(
            f"an image's detection target in split {where!r} has shape {list(rows.shape)}; give "
            "a dict {'boxes': (K, 4), 'labels': (K,)} or (K, 5) rows [x1, y1, x2, y2, label]."
        )
    return rows


def detection_collate(
    batch: list[tuple[Any, Any]], where: str = "data"
) -> tuple[Any, torch.Tensor]:
    """A batch of ``(image, target)`` samples as images and ``(batch, M, 5)`` targets, each
    image's rows padded with label -1 to the batch's most boxes ``M``."""
    images = default_collate([image for image, _ in batch])
    rows = [box_rows(target, where) for _, target in batch]
    most = max([1, *(len(r) for r in rows)])
    padded = torch.zeros(len(rows), most, 5)
    padded[:, :, 4] = PAD_LABEL
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return images, padded


def first_inputs(loader: Iterable[Any], name: str) -> tuple[torch.Tensor, ...]:
    """One sample of model inputs (batch of 1) taken from the first batch of ``loader``."""
    for batch in loader:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
        return tuple(t[:1] for t in xs)
    raise DataError(
        f"data split {name!r} has zero samples; give it at least one (inputs, target) pair."
    )
