"""Built-in workloads: data shipped inside scikit-learn, baselines trained once and cached."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum import train as train_module
from fulcrum.train import LossFn, TaskFunctions, fit
from fulcrum.workloads.base import cache_dir, definition_key
from fulcrum.workloads.checkpoint import load_into

log = logging.getLogger(__name__)


def split(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, val_fraction: float = 0.2
) -> tuple[np.ndarray, ...]:
    """A stratified, seeded train / validation split."""
    return tuple(train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y))


def loaders(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    batch_size: int = 64,
    calib_size: int = 256,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled, seeded), validation and calibration (the first train samples) loaders."""
    train = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=256)
    calib = DataLoader(TensorDataset(x_train[:calib_size], y_train[:calib_size]), batch_size=64)
    return train, val, calib


def trained(
    name: str,
    definition: ModuleType,
    build: Callable[[], nn.Module],
    train: DataLoader,
    task: str,
    *,
    epochs: int,
    lr: float,
    seed: int = 0,
    shared: tuple[ModuleType, ...] = (),
    key: tuple[str, ...] = (),
    loss: LossFn | None = None,
) -> tuple[nn.Module, Path]:
    """The baseline of a built-in: loaded from the cache, or trained deterministically and cached.

    The cache key hashes the defining module's source (model, data, recipe), the ``shared``
    modules it builds on (data and augmentation common to several built-ins), the training loop,
    the torch version and ``key``: whatever else made the data (say, the version of the program
    that generated it), so changing any of them retrains it. ``loss`` replaces the task's own
    (a detector's depends on its output layout).
    """
    digest = definition_key(
        inspect.getsource(definition),
        *(inspect.getsource(m) for m in shared),
        inspect.getsource(train_module),
        f"{epochs}/{lr}/{seed}",
        *key,
    )
    path = cache_dir() / f"{name}-{digest}.safetensors"
    if path.is_file():
        return load_into(build(), path), path
    log.info("training the %s baseline (first use; cached in %s)", name, path.parent)
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        functions = TaskFunctions(loss=loss) if loss is not None else None
        model = fit(
            build(),
            train,
            task,
            epochs=epochs,
            lr=lr,
            seed=seed,
            functions=functions,
            steps=f"training the {name} baseline (batches)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # atomic: a killed run never leaves half a checkpoint
    log.info("trained %s in %.1f s", name, time.perf_counter() - start)
    return model, path
