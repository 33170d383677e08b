"""The "Hello Edge" keyword spotters beside ``keywords``' DS-CNN: DNN, CNN, LSTM, GRU and CRNN.

Zhang et al. 2017 ("Hello Edge: Keyword Spotting on Microcontrollers") compare these families at
three sizes. Each built-in here is a family at the paper's *small* size — its layer shapes as in
the authors' training commands (ARM-software/ML-KWS-for-MCU, ``train_commands.txt``) — on the
``keywords`` data: the same synthesised spoken digits, splits, augmentation and 49 x 40 log-mel
features (the paper's models read 10 MFCCs per frame, so the layers that read a frame are wider
here, and their parameters and MACs larger than the paper's). Each is trained on first use, the
same way as the DS-CNN, and cached.

The paper's LSTM-S has peepholes, which ``nn.LSTM`` lacks, and a projection, which ``prune``
does not slice: ``keywords-lstm`` is its basic LSTM-S (118 cells, the forget gate's bias at 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fulcrum.workloads import keywords
from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import trained

FRAMES, BANDS = 49, keywords.MELS  # every family reads (n, 1, FRAMES, BANDS)
CLASSES = len(keywords.WORDS)
SEED = 0


def dnn(num_classes: int = CLASSES, width: int = 144, depth: int = 3) -> nn.Sequential:
    """DNN-S: ``depth`` fully-connected ReLU layers of ``width`` units on the flattened map."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(FRAMES * BANDS if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def cnn(num_classes: int = CLASSES) -> nn.Sequential:
    """CNN-S: 28 filters of 10x4 (time x frequency), 30 filters of 10x4 with a stride of 2 in
    time (unpadded, each with batch norm and ReLU), a linear bottleneck of 16, a ReLU layer of
    128 with batch norm, and the classifier."""
    frames, bands = (FRAMES - 9 - 10) // 2 + 1, BANDS - 3 - 3  # after the two convolutions
    return nn.Sequential(
        nn.Conv2d(1, 28, (10, 4)),
        nn.BatchNorm2d(28),
        nn.ReLU(),
        nn.Conv2d(28, 30, (10, 4), stride=(2, 1)),
        nn.BatchNorm2d(30),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(30 * frames * bands, 16),
        nn.Linear(16, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class Recurrent(nn.Module):
    """A recurrent layer (``nn.LSTM`` or ``nn.GRU``) over the frames, its output at the last
    frame read by the classifier: the paper's basic LSTM-S (118 cells) and GRU-S (154)."""

    def __init__(
        self, kind: Callable[..., nn.RNNBase], hidden: int, num_classes: int = CLASSES
    ) -> None:
        super().__init__()
        self.rnn: nn.RNNBase = kind(BANDS, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)
        if isinstance(self.rnn, nn.LSTM):  # the paper's forget bias of 1 (TensorFlow's default):
            forget = slice(hidden, 2 * hidden)  # gates: input, forget, cell, output
            with torch.no_grad():  # 73% accuracy without it, 96% with it (15 epochs, here)
                for name, value in (("bias_ih_l0", 1.0), ("bias_hh_l0", 0.0)):
                    getattr(self.rnn, name)[forget] = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, 2))  # (n, 1, frames, bands) -> (n, frames, bands)
        return self.classifier(out[:, -1])


class CRNN(nn.Module):
    """CRNN-S: 48 filters of 10x4 with a stride of 2x2 (unpadded, ReLU), each output frame (48
    filters x 19 bands) read in turn by two GRU layers of 60 cells, then a ReLU layer of 84 at
    the last frame and the classifier."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 48, (10, 4), stride=2)
        bands = (BANDS - 4) // 2 + 1
        self.gru = nn.GRU(48 * bands, 60, num_layers=2, batch_first=True)
        self.fc = nn.Linear(60, 84)
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.conv(x))  # (n, filters, frames, bands)
        frames = maps.permute(0, 2, 1, 3).flatten(2)  # (n, frames, filters x bands)
        out, _ = self.gru(frames)
        return self.classifier(torch.relu(self.fc(out[:, -1])))


@dataclass(frozen=True)
class Family:
    """A Hello Edge family at its small size: the model, its training schedule, its line."""

    model: Callable[[], nn.Module]
    epochs: int
    lr: float
    description: str


FAMILIES: dict[str, Family] = {
    "keywords-dnn": Family(
        dnn, 10, 3e-3, "DNN-S (Hello Edge: 3 x 144 fully connected; 326k params, 0.33M MACs)"
    ),
    "keywords-cnn": Family(
        cnn,
        10,
        3e-3,
        "CNN-S (Hello Edge: 28 and 30 filters of 10x4, 16, 128; 300k params, 20.2M MACs)",
    ),
    "keywords-lstm": Family(
        lambda: Recurrent(nn.LSTM, 118),
        20,
        5e-3,
        "basic LSTM-S (Hello Edge: 118 cells; 77k params, 3.7M MACs)",
    ),
    "keywords-gru": Family(
        lambda: Recurrent(nn.GRU, 154),
        15,
        3e-3,
        "GRU-S (Hello Edge: 154 cells; 92k params, 4.4M MACs)",
    ),
    "keywords-crnn": Family(
        CRNN,
        15,
        3e-3,
        "CRNN-S (Hello Edge: 48 filters 10x4/2, 2 x 60 GRU, 84; 205k params, 4.7M MACs)",
    ),
}
DESCRIPTIONS = {
    name: f"speech: the keywords digits and features (49x40 log-mel); {family.description}"
    for name, family in FAMILIES.items()
}


def build(name: str) -> Workload:
    """The built-in ``name`` (one of ``FAMILIES``), its model trained on first use."""
    family = FAMILIES[name]
    data = keywords.speech()
    model, path = trained(
        name,
        sys.modules[__name__],
        family.model,
        data.augmented,
        "multiclass",
        epochs=family.epochs,
        lr=family.lr,
        seed=SEED,
        shared=(keywords,),
        key=(data.key,),
    )
    return Workload(
        name=name,
        task="multiclass",
        model=model,
        train=data.train,
        val=data.val,
        calib=data.calib,
        example_inputs=(data.example,),
        num_classes=CLASSES,
        source=str(path),
        description=DESCRIPTIONS[name],
        info={**data.info, "family": family.description},
    )
