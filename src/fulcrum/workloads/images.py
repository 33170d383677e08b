"""Image workloads: a ``transformers`` image classifier and its image processor from disk, with a
folder of images by class (one subfolder per class, as torchvision's ``ImageFolder`` reads).

Every image goes through the model's own processor once (resize, crop, normalise) into
``pixel_values``; a seeded quarter validates, a tenth calibrates, the rest trains. Class numbers
are the model's ``label2id`` where it names every folder, else the folders in sorted order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum.errors import ConfigError, DataError, MissingDependencyError, first_line
from fulcrum.workloads.base import Workload
from fulcrum.workloads.text import split_indices, transformers_quietly

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_classifier(folder: Path, where: str) -> tuple[nn.Module, Any]:
    """The image classifier in ``folder`` and its image processor."""
    try:
        with transformers_quietly() as transformers:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                str(folder), local_files_only=True
            ).eval()
            processor = transformers.AutoImageProcessor.from_pretrained(
                str(folder), local_files_only=True
            )
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}: no image classifier and image processor can be loaded from "
            f"{str(folder)!r} ({first_line(exc, 160)}); it needs config.json, the weights and "
            "preprocessor_config.json."
        ) from None
    return model, processor


def read_folder(
    folder: Path, where: str, label_ids: dict[str, int]
) -> tuple[list[Path], list[int]]:
    """The images of ``folder``'s class subfolders, and their class numbers."""
    if not folder.is_dir():
        raise ConfigError(
            f"{where}: image folder {str(folder)!r} does not exist; give a folder with one "
            "subfolder of images per class."
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(
            f"{where}: {folder} has {len(classes)} class folder(s); give one subfolder of images "
            "per class, at least two."
        )
    known = label_ids and all(c in label_ids for c in classes)
    ids = {c: label_ids[c] for c in classes} if known else {c: i for i, c in enumerate(classes)}
    paths = [
        (p, ids[c])
        for c in classes
        for p in sorted((folder / c).iterdir())
        if p.suffix.lower() in SUFFIXES
    ]
    if not paths:
        raise DataError(f"{where}: {folder}'s class folders hold no {', '.join(SUFFIXES)} images.")
    return [p for p, _ in paths], [i for _, i in paths]


def pixels(processor: Any, paths: list[Path], where: str) -> torch.Tensor:
    """Every image through the model's processor: ``(n, channels, height, width)``."""
    from PIL import Image

    batches = []
    for start in range(0, len(paths), 64):
        images = []
        for path in paths[start : start + 64]:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except OSError as exc:
                raise DataError(f"{where}: {path} is not an image ({first_line(exc)}).") from None
        batches.append(processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(batches)


def load(spec: dict[str, Any], path: Path, name: str) -> Workload:
    """An image workload from a TOML ``spec`` (``transformers`` and ``images`` folders)."""
    from fulcrum.workloads.text import label_ids

    where = path.name
    if "transformers" not in spec or spec["task"] != "multiclass":
        raise ConfigError(
            f"{where}: images are judged by a transformers image classifier: give "
            "transformers = 'model folder' and task = 'multiclass'."
        )
    folder = path.parent / str(spec["transformers"])
    model, processor = load_classifier(folder, where)
    paths, labels = read_folder(path.parent / str(spec["images"]), where, label_ids(model))
    x, y = pixels(processor, paths, where), torch.tensor(labels)
    parts = split_indices(len(x))
    loaders = {
        split: DataLoader(TensorDataset(x[idx], y[idx]), batch_size=32, shuffle=split == "train")
        for split, idx in parts.items()
        if len(idx)
    }
    classes = int(getattr(model.config, "num_labels", 0) or len(set(labels)))
    return Workload(
        name=name,
        task="multiclass",
        model=model,
        val=loaders["val"],
        train=loaders.get("train"),
        calib=loaders.get("calib") or loaders.get("train"),
        example_inputs=(x[:1].clone(),),
        num_classes=classes,
        source=str(path),
        description=str(spec.get("description", f"image workload from {path.name}")),
        info={
            "transformers_folder": str(folder.resolve()),
            "processor_folder": str(folder.resolve()),
            "images": {k: len(v) for k, v in parts.items()},
        },
    )
