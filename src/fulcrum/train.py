"""The one training loop: supervised fitting, recovery fine-tuning and distillation.

Augmentation follows the inputs: images (4-D float) get small shifts and noise, tabular and
signal data (other float tensors) get noise, integer inputs (token ids) get none. Early stopping
watches the task's main metric on a holdout carved from the training split, never on the
validation split the results are reported on.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fulcrum.errors import ConfigError
from fulcrum.runtimes import as_inputs, keeps_caller_state, output_tensor

log = logging.getLogger(__name__)
AUGMENTS = ("auto", "none", "shift", "noise", "shift+noise")


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


def soft_loss(
    task: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """How far the student's outputs are from the teacher's (Hinton et al. for classifiers)."""
    if task == "multiclass" or (task == "binary" and student.ndim == 2 and student.shape[1] > 1):
        t = temperature
        return nn.functional.kl_div(
            nn.functional.log_softmax(student / t, dim=-1),
            nn.functional.softmax(teacher / t, dim=-1),
            reduction="batchmean",
        ) * (t * t)
    if task == "binary":
        target = torch.sigmoid(teacher.reshape(-1) / temperature)
        return nn.functional.binary_cross_entropy_with_logits(
            student.reshape(-1) / temperature, target
        ) * (temperature * temperature)
    return nn.functional.mse_loss(student, teacher)


def augmenter(
    kind: str, example: torch.Tensor, seed: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An augmentation for inputs shaped like ``example``; None when there is nothing sensible."""
    if kind not in AUGMENTS:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got {kind!r}.")
    if kind == "none" or not example.is_floating_point():
        return None
    if kind == "auto":
        kind = "shift+noise" if example.ndim == 4 else "noise"
    generator = torch.Generator().manual_seed(seed)
    shift, noise = "shift" in kind and example.ndim == 4, "noise" in kind

    def augment(x: torch.Tensor) -> torch.Tensor:
        if shift:  # move each image by up to one pixel, filling with zeros
            dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if dy:
                x[:, :, (0 if dy > 0 else -1), :] = 0
            if dx:
                x[:, :, :, (0 if dx > 0 else -1)] = 0
        if noise:
            scale = 0.05 * (x.detach().std() + 1e-8)
            x = x + scale * torch.randn(x.shape, generator=generator)
        return x

    return augment


def holdout(
    train: DataLoader, fraction: float = 0.1, seed: int = 0
) -> tuple[DataLoader, DataLoader | None]:
    """Split a training loader into (train, holdout) loaders; no holdout if it is too small."""
    try:
        size = len(train.dataset)  # type: ignore[arg-type]
    except TypeError:
        return train, None
    n_hold = int(size * fraction)
    if n_hold < 8:
        return train, None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    kept, held = Subset(train.dataset, order[n_hold:]), Subset(train.dataset, order[:n_hold])
    batch = train.batch_size or 64
    collate = train.collate_fn  # token batches are padded by the workload's own collate
    fit_loader = DataLoader(
        kept,
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )
    return fit_loader, DataLoader(held, batch_size=256, collate_fn=collate)


def score(
    model: nn.Module, loader: DataLoader, task: str, teacher: nn.Module | None = None
) -> float:
    """The task's main metric of ``model`` on ``loader`` (higher is better)."""
    from fulcrum.metrics import MAIN_METRIC, compute
    from fulcrum.runtimes import predict

    outputs, targets = predict(model, loader, torch.get_num_threads())
    reference = (
        predict(teacher, loader, torch.get_num_threads())[0]
        if task == "embedding" and teacher
        else None
    )
    value = compute(task, targets, outputs, reference=reference).metrics.get(MAIN_METRIC[task])
    return float("-inf") if value is None else float(value)


@keeps_caller_state("teacher")
def fit(
    model: nn.Module,
    train: DataLoader,
    task: str,
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: str = "none",
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    patience: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train a copy of ``model``; return the copy in eval mode (the input is left untouched).

    With a ``teacher``, the loss is ``alpha * soft + (1 - alpha) * hard`` where ``soft`` compares
    the student's outputs with the teacher's at ``temperature``. With ``patience``, training
    stops when the holdout metric has not improved for that many epochs, and the best epoch's
    weights are returned. ``on_epoch(epoch, holdout_metric)`` may raise to abandon training
    (a search cuts hopeless trials short this way).
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    torch.manual_seed(seed)
    model = copy.deepcopy(model).train()
    hard = loss_for(task) if alpha < 1.0 else None
    if teacher is not None:
        teacher = teacher.eval()
    fit_loader, held = holdout(train, seed=seed) if patience else (train, None)
    transform = None
    if augment != "none":
        transform = augmenter(augment, as_inputs(next(iter(fit_loader))[0])[0], seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * max(len(fit_loader), 1), pct_start=0.15
    )
    best: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
    stale = 0
    for epoch in range(epochs):
        model.train()
        for x, y in fit_loader:
            inputs = as_inputs(x)
            if transform is not None:
                inputs = (transform(inputs[0]), *inputs[1:])
            optimizer.zero_grad(set_to_none=True)
            out = output_tensor(model(*inputs))
            loss = torch.zeros(())
            if hard is not None:
                loss = loss + (1.0 - alpha) * hard(out, y)
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    target = output_tensor(teacher(*inputs))
                loss = loss + alpha * soft_loss(task, out, target, temperature)
            loss.backward()
            optimizer.step()
            schedule.step()
        if held is not None and patience:
            value = score(model.eval(), held, task, teacher)
            if progress:
                progress(f"epoch {epoch + 1}/{epochs}: holdout {value:.4f}")
            if on_epoch is not None:
                on_epoch(epoch, value)
            if value > best[0]:
                best, stale = (value, copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
                if stale >= patience:
                    break
        elif progress:
            progress(f"epoch {epoch + 1}/{epochs}")
    if best[1] is not None:
        model.load_state_dict(best[1])
    return model.eval()
