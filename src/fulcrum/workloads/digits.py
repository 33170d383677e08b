"""``digits``: scikit-learn's 8x8 handwritten digits and a deliberately oversized conv classifier.

The network is wider than 8x8 digits need — as deployed models usually are — so that there is
real room to compress: about 1.2 M parameters where a few thousand would do.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import loaders, split, trained

DESCRIPTION = "handwritten digits 8x8 (sklearn), 10 classes; oversized VGG-style CNN, ~1.2M params"
EPOCHS, LR, SEED = 15, 3e-3, 0


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class DigitsNet(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            conv_block(1, c1),
            conv_block(c1, c1),
            nn.MaxPool2d(2),
            conv_block(c1, c2),
            conv_block(c2, c2),
            nn.MaxPool2d(2),
            conv_block(c2, c3),
            conv_block(c3, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c3, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> Workload:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    x_train, x_val, y_train, y_val = split(x.numpy(), y.numpy(), seed=SEED)
    train, val, calib = loaders(
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_val),
        torch.from_numpy(y_val),
        seed=SEED,
    )
    model, path = trained(
        "digits",
        sys.modules[__name__],
        DigitsNet,
        train,
        "multiclass",
        epochs=EPOCHS,
        lr=LR,
        seed=SEED,
    )
    return Workload(
        name="digits",
        task="multiclass",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(torch.from_numpy(x_val[:1]),),
        num_classes=10,
        source=str(path),
        description=DESCRIPTION,
    )
