"""``breast-cancer``: scikit-learn's Wisconsin diagnostic data (30 features, binary) and an MLP."""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import loaders, split, trained

DESCRIPTION = "breast cancer diagnosis (sklearn), 30 tabular features, binary; MLP 30-256-128-1"
EPOCHS, LR, SEED = 40, 1e-3, 0


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(30, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )


def build() -> Workload:
    data = load_breast_cancer()
    x_train, x_val, y_train, y_val = split(data.data.astype("float32"), data.target, seed=SEED)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6  # standardised on train only
    xt, xv = torch.from_numpy((x_train - mean) / std), torch.from_numpy((x_val - mean) / std)
    train, val, calib = loaders(
        xt,
        torch.from_numpy(y_train).float(),
        xv,
        torch.from_numpy(y_val).float(),
        batch_size=32,
        seed=SEED,
    )
    model, path = trained(
        "breast-cancer",
        sys.modules[__name__],
        build_model,
        train,
        "binary",
        epochs=EPOCHS,
        lr=LR,
        seed=SEED,
    )
    return Workload(
        name="breast-cancer",
        task="binary",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(xv[:1],),
        num_classes=2,
        source=str(path),
        description=DESCRIPTION,
    )
