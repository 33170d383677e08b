"""``resnet18``: the CIFAR-style ResNet-18 on scikit-learn's digits upscaled to 32x32.

The topology is the one CIFAR papers use (He et al. 2016, adapted to 32x32 inputs): a 3x3 stem
of stride 1 without max-pooling, BasicBlocks [2, 2, 2, 2] of widths 64/128/256/512 and strides
1/2/2/2, global average pooling and one linear layer — 11.17 M parameters and 0.56 G MACs per
image. The workload's grey images are repeated over the three input channels.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from fulcrum.workloads import vision
from fulcrum.workloads.base import Workload

DESCRIPTION = (
    "vision: CIFAR-style ResNet-18 (11.2M params, 0.56G MACs) on sklearn's digits upscaled "
    "to 32x32, 10 classes"
)
EPOCHS, LR, BATCH_SIZE, SEED = 3, 2e-3, 64, 0


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers and a shortcut (a 1x1 conv+BN where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> nn.Sequential:
    """A CIFAR-style ResNet-18 whose stages are ``width`` x 1, 2, 4, 8 channels wide.

    >>> sum(p.numel() for p in resnet18().parameters())
    11173962
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    c_in = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def build() -> Workload:
    return vision.build(
        "resnet18",
        sys.modules[__name__],
        lambda: resnet18(in_channels=vision.CHANNELS),
        epochs=EPOCHS,
        lr=LR,
        batch_size=BATCH_SIZE,
        seed=SEED,
        description=DESCRIPTION,
    )
