"""``detection``: a YOLO-style detector finding scikit-learn's handwritten digits in cluttered scenes.

Each 96x96 grey scene holds one to ``max_objects`` digits, each drawn at its own scale (12-40
pixels) and place, some overlapping, over a smooth uneven background with distractors (soft blobs
and thin rectangle outlines) and pixel noise. An object's box is the tight box of its ink. The
digits' 1,797 glyphs are split by class into training and validation glyphs first, so that the
validation scenes show handwriting the detector never saw. The calibration split is the first
training scenes. Everything is generated from seeds: no file is read or downloaded.

The baseline (``yolo.Detector``: 4.5 M parameters, 154 M MACs per image) is trained on first use
and cached. Its training scenes are composed anew on every read from the training glyphs (copy-
paste augmentation: every digit at a new scale and place, on a new background), which is also
scale jitter and translation; flips would make other digits, so there are none. The workload's
own ``train`` split stays the fixed scenes, for recovery training.

``SETTINGS`` sizes everything; tests swap in ``TINY`` (a narrow detector, a handful of images).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fulcrum.metrics import PAD_LABEL
from fulcrum.workloads import yolo
from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import split, trained

DESCRIPTION = (
    "detection: YOLO-style detector (CSP backbone, PAN neck, anchor-free decoupled head; 4.5M "
    "params, 154M MACs) finding sklearn's digits in cluttered 96x96 scenes, COCO mAP"
)
NUM_CLASSES = 10
MEAN, STD = 0.2, 0.16  # the scenes' pixel statistics, roughly: inputs are (x - MEAN) / STD


@dataclass(frozen=True)
class Settings:
    """What the built-in is made of; everything here is part of its cache key."""

    size: int = 96
    train_images: int = 2000  # the fixed scenes of the workload's train split
    scenes_per_epoch: int = 2000  # the baseline's composed scenes
    val_images: int = 500
    calib_images: int = 128
    max_objects: int = 6
    smallest: float = 12.0  # digit heights in pixels
    largest: float = 40.0
    width: int = 24
    depth: int = 1
    epochs: int = 10
    lr: float = 6e-3
    batch_size: int = 16
    seed: int = 0


SETTINGS = Settings()
TINY = Settings(
    size=64,
    train_images=24,
    scenes_per_epoch=24,
    val_images=8,
    calib_images=8,
    max_objects=3,
    smallest=10.0,
    largest=24.0,
    width=4,
    epochs=1,
    batch_size=8,
)


class Glyphs(NamedTuple):
    images: np.ndarray  # (n, 8, 8) in [0, 1]
    labels: np.ndarray


def glyphs(seed: int) -> tuple[Glyphs, Glyphs]:
    """The digits' training and validation glyphs (the stratified split ``digits`` uses)."""
    data = load_digits()
    x_train, x_val, y_train, y_val = split(data.images / 16.0, data.target, seed=seed)
    return Glyphs(x_train, y_train), Glyphs(x_val, y_val)


def scene(
    source: Glyphs, settings: Settings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised scene (1, size, size) and its targets (max_objects, 5), padded with -1."""
    size = settings.size
    image = background(size, rng)
    rows = np.full((settings.max_objects, 5), float(PAD_LABEL), dtype=np.float32)
    count = int(rng.integers(1, settings.max_objects + 1))
    placed = 0
    for _ in range(count * 4):  # a few tries each: a digit may not hide another one
        if placed == count:
            break
        index = int(rng.integers(len(source.labels)))
        side = round(rng.uniform(settings.smallest, settings.largest))
        scale = resize_matrix(side, 8)
        glyph = np.clip(scale @ source.images[index] @ scale.T, 0, 1)
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        ink_rows, ink_cols = np.nonzero(glyph > 0.25)
        box = np.array(
            [
                x + ink_cols.min(),
                y + ink_rows.min(),
                x + ink_cols.max() + 1,
                y + ink_rows.max() + 1,
            ],
            dtype=np.float32,
        )
        if placed and overlap(box, rows[:placed, :4]) > 0.25:
            continue
        window = image[y : y + side, x : x + side]
        np.maximum(window, rng.uniform(0.6, 1.0) * glyph, out=window)
        rows[placed] = [*box, source.labels[index]]
        placed += 1
    noisy = np.clip(image + rng.normal(0.0, 0.06, image.shape), 0, 1)
    return torch.from_numpy(((noisy - MEAN) / STD).astype(np.float32))[None], torch.from_numpy(rows)


@functools.cache
def resize_matrix(size: int, source: int) -> np.ndarray:
    """(size, source) weights of bilinear resizing (half-pixel centres): ``m @ a @ m.T``."""
    position = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((size, source))
    weights[np.arange(size), low] += 1 - (position - low)
    weights[np.arange(size), high] += position - low
    return weights


def overlap(box: np.ndarray, others: np.ndarray) -> float:
    """The largest IoU of ``box`` with any of ``others`` (n, 4)."""
    top_left, bottom_right = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return float(np.max(inter / (np.prod(box[2:] - box[:2]) + areas - inter)))


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """An uneven background with soft blobs and thin rectangle outlines (not digits)."""
    smooth = resize_matrix(size, 5)
    image = smooth @ rng.uniform(0.0, 0.3, (5, 5)) @ smooth.T
    grid = np.arange(size)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, radius = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, size / 6)
        across, down = (np.exp(-(((grid - c) / radius) ** 2)) for c in (cx, cy))
        np.maximum(image, rng.uniform(0.2, 0.5) * np.outer(down, across), out=image)
    for _ in range(int(rng.integers(0, 3))):
        x1, y1 = (int(v) for v in rng.integers(0, size - 8, size=2))
        x2, y2 = (int(v) for v in rng.integers((x1 + 6, y1 + 6), (size, size)))
        shade = rng.uniform(0.2, 0.5)
        image[y1:y2, [x1, x2 - 1]] = shade
        image[[y1, y2 - 1], x1:x2] = shade
    return image


def scenes(
    source: Glyphs, count: int, settings: Settings, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes from ``source`` drawn with ``seed``: images and padded targets."""
    rng = np.random.default_rng(seed)
    made = [scene(source, settings, rng) for _ in range(count)]
    return torch.stack([m[0] for m in made]), torch.stack([m[1] for m in made])


class Composed(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``length`` scenes per epoch, each composed anew from ``source`` when read (seeded)."""

    def __init__(self, source: Glyphs, settings: Settings, length: int, seed: int) -> None:
        self.source, self.settings, self.length = source, settings, length
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return scene(self.source, self.settings, self.rng)


def build() -> Workload:
    settings = SETTINGS
    seed = settings.seed
    train_glyphs, val_glyphs = glyphs(seed)
    x_train, y_train = scenes(train_glyphs, settings.train_images, settings, seed + 1)
    x_val, y_val = scenes(val_glyphs, settings.val_images, settings, seed + 2)
    size = (settings.size, settings.size)
    loss = yolo.Loss(size, NUM_CLASSES)
    generator = torch.Generator().manual_seed(seed)
    composed = DataLoader(
        Composed(train_glyphs, settings, settings.scenes_per_epoch, seed + 3),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
    )
    model, path = trained(
        "detection",
        sys.modules[__name__],
        lambda: yolo.Detector(NUM_CLASSES, 1, settings.width, settings.depth),
        composed,
        "detection",
        epochs=settings.epochs,
        lr=settings.lr,
        seed=seed,
        shared=(yolo,),
        key=(repr(settings),),
        loss=loss,
    )
    calib = settings.calib_images
    return Workload(
        name="detection",
        task="detection",
        model=model,
        train=DataLoader(
            TensorDataset(x_train, y_train),
            batch_size=settings.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        ),
        val=DataLoader(TensorDataset(x_val, y_val), batch_size=64),
        calib=DataLoader(TensorDataset(x_train[:calib], y_train[:calib]), batch_size=32),
        example_inputs=(x_val[:1],),
        num_classes=NUM_CLASSES,
        source=str(path),
        description=DESCRIPTION,
        postprocess=yolo.Postprocess(),
        loss=loss,
        distill_loss=loss.distill,
        info={
            "image_size": list(size),
            "strides": list(yolo.STRIDES),
            "prediction_layers": yolo.prediction_layers(model),
            "training_scenes": settings.scenes_per_epoch * settings.epochs,
            "objects_per_image": round(float((y_val[..., 4] != PAD_LABEL).sum()) / len(y_val), 2),
        },
    )
