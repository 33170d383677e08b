"""``mobilenet``: a CIFAR-style MobileNetV2 on scikit-learn's digits upscaled to 32x32.

MobileNetV2 (Sandler et al. 2018): inverted residual blocks — a 1x1 expansion (6x; 1x in the
first block, as in the paper), a depthwise 3x3 convolution, ReLU6, and a linear 1x1 bottleneck,
with a residual connection where the shape allows. For 32x32 inputs the stem and the second stage
keep stride 1 (the usual CIFAR adaptation), so the last feature map is 4x4. Channel counts are
scaled by ``width_mult`` and rounded to multiples of 8.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from fulcrum.workloads import vision
from fulcrum.workloads.base import Workload

DESCRIPTION = (
    "vision: CIFAR-style MobileNetV2 (depthwise-separable, 2.2M params, 0.09G MACs) on sklearn's "
    "digits upscaled to 32x32, 10 classes"
)
EPOCHS, LR, BATCH_SIZE, SEED = 5, 5e-3, 64, 0
# (expansion, output channels, blocks, stride of the first block) per stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def divisible(channels: float, divisor: int = 8) -> int:
    """``channels`` rounded to a multiple of ``divisor``, never below 90% of it (MobileNet's rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (depthwise 3x3), project (linear 1x1); add the input where shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*conv_bn(c_in, hidden, 1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += conv_bn(hidden, c_out, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobilenet_v2(
    num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3
) -> nn.Sequential:
    """A CIFAR-style MobileNetV2 with every stage ``width_mult`` times as wide."""
    c_in = divisible(32 * width_mult)
    last = divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [*conv_bn(in_channels, c_in, 3), nn.ReLU6()]
    for expansion, channels, blocks, stride in STAGES:
        c_out = divisible(channels * width_mult)
        for i in range(blocks):
            layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expansion))
            c_in = c_out
    layers += [*conv_bn(c_in, last, 1), nn.ReLU6()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(last, num_classes)]
    return nn.Sequential(*layers)


def build() -> Workload:
    return vision.build(
        "mobilenet",
        sys.modules[__name__],
        lambda: mobilenet_v2(in_channels=vision.CHANNELS),
        epochs=EPOCHS,
        lr=LR,
        batch_size=BATCH_SIZE,
        seed=SEED,
        description=DESCRIPTION,
    )
