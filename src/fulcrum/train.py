"""The one training loop: supervised fitting now; fine-tuning and distillation build on it."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from fulcrum.errors import ConfigError
from fulcrum.runtimes import as_inputs, output_tensor


def loss_for(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss that matches a task's outputs and targets."""
    if task == "multiclass":
        return lambda out, y: nn.functional.cross_entropy(out, y.long())
    if task == "binary":

        def binary(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if out.ndim == 2 and out.shape[1] == 2:
                return nn.functional.cross_entropy(out, y.long())
            return nn.functional.binary_cross_entropy_with_logits(
                out.reshape(-1), y.float().reshape(-1)
            )

        return binary
    if task == "regression":
        return lambda out, y: nn.functional.mse_loss(out.reshape(y.shape), y.float())
    raise ConfigError(
        f"task {task!r} has no supervised loss; train it with distillation from a reference model."
    )


def fit(
    model: nn.Module,
    train: DataLoader,
    task: str,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train a copy of ``model`` with AdamW and a cosine schedule; return the copy in eval mode."""
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    torch.manual_seed(seed)
    model = copy.deepcopy(model).train()
    loss_fn = loss_for(task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * max(len(train), 1), pct_start=0.15
    )
    for _ in range(epochs):
        for x, y in train:
            inputs = as_inputs(x)
            if augment is not None:
                inputs = (augment(inputs[0]), *inputs[1:])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(output_tensor(model(*inputs)), y)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
