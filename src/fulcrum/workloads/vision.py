"""Shared data of the vision built-ins: scikit-learn's digits upscaled to 32x32, and augmentation.

The 8x8 images are upscaled bilinearly to the 32x32 of CIFAR-style networks, normalised with the
training split's mean and standard deviation, and their grey channel is repeated three times so
that the networks keep the 3-channel CIFAR stem (and its published parameter and MAC counts).
A baseline is trained on first use with random shifts of up to 3 pixels, rotations of up to 10
degrees and Gaussian noise, drawn from a seeded generator: the same seed trains the same weights.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import loaders, split, trained

SIZE, CHANNELS = 32, 3
MAX_SHIFT, MAX_DEGREES, NOISE = 3.0, 10.0, 0.1


class Digits32(NamedTuple):
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    background: float  # a blank pixel's value after normalisation


def digits_32(seed: int = 0) -> Digits32:
    """The digits at 32x32, normalised, in the stratified, seeded split ``digits`` uses.

    Mean and standard deviation come from the training images only.
    """
    data = load_digits()
    small = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = x.repeat(1, CHANNELS, 1, 1)
    x_train, x_val, y_train, y_val = split(x.numpy(), data.target, seed=seed)
    mean, std = float(x_train.mean()), float(x_train.std())
    return Digits32(
        torch.from_numpy((x_train - mean) / std),
        torch.from_numpy(y_train).long(),
        torch.from_numpy((x_val - mean) / std),
        torch.from_numpy(y_val).long(),
        -mean / std,
    )


def augment(x: torch.Tensor, generator: torch.Generator, *, fill: float) -> torch.Tensor:
    """Each image of the batch ``x`` (N, C, H, W) shifted, rotated and noised at random.

    Shifts are up to ``MAX_SHIFT`` pixels each way, rotations up to ``MAX_DEGREES``; uncovered
    pixels take the value ``fill`` (the background). The draws come from ``generator`` only.
    """
    n, _, height, width = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_DEGREES)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos, -sin, 2 * shift[:, 0] / width], dim=1),
            torch.stack([sin, cos, 2 * shift[:, 1] / height], dim=1),
        ],
        dim=1,
    )
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    moved = nn.functional.grid_sample(x - fill, grid, align_corners=False) + fill
    return moved + NOISE * torch.randn(moved.shape, generator=generator)


class Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and labels whose images are freshly augmented on every read (seeded)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, fill: float, seed: int) -> None:
        self.x, self.y, self.fill = x, y, fill
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = augment(self.x[index : index + 1], self.generator, fill=self.fill)[0]
        return image, self.y[index]


def channels_last(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with its images in channels-last layout: MobileNetV2 trains 1.5x faster that way
    on CPU (ResNet-18 1.07x; one step at batch 64, interleaved, on two AMD EPYC cores)."""
    images, labels = default_collate(batch)
    return images.contiguous(memory_format=torch.channels_last), labels


def build(
    name: str,
    definition: ModuleType,
    make_model: Callable[[], nn.Module],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    description: str,
) -> Workload:
    """A vision built-in: its baseline is trained on augmented images on first use, then cached.

    The workload's own ``train`` split is not augmented: recovery training picks its own.
    """
    data = digits_32(seed)
    train, val, calib = loaders(data.x_train, data.y_train, data.x_val, data.y_val, seed=seed)
    augmented = DataLoader(
        Augmented(data.x_train, data.y_train, fill=data.background, seed=seed),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=channels_last,
    )
    model, path = trained(
        name,
        definition,
        make_model,
        augmented,
        "multiclass",
        epochs=epochs,
        lr=lr,
        seed=seed,
        shared=(sys.modules[__name__],),  # this file's data and augmentation
    )
    return Workload(
        name=name,
        task="multiclass",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(data.x_val[:1],),
        num_classes=10,
        source=str(path),
        description=description,
    )
