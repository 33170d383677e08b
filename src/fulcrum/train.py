"""The one training loop: supervised fitting, recovery fine-tuning and distillation.

Augmentation follows the inputs: images (4-D float) get small shifts and noise, tabular and
signal data (other float tensors) get noise, integer inputs (token ids) get none. Early stopping
watches the task's main metric on a holdout carved from the training split, never on the
validation split the results are reported on.

A task may need functions of the workload's own (``TaskFunctions``): a detector's loss and its
post-processing depend on its output layout, which only the workload knows.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fulcrum import distributed
from fulcrum.errors import ConfigError
from fulcrum.progress import step as report_step
from fulcrum.runtimes import as_inputs, keeps_caller_state, output_tensor
from fulcrum.teacher import (
    TEACHER_MEMO_BYTES,
    HiddenMatch,
    TeacherMemo,
    hidden_distance,
    layer_outputs,
    projections_for,
    soft_loss,
)

log = logging.getLogger(__name__)
AUGMENTS = ("auto", "none", "shift", "noise", "shift+noise")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# raw outputs (batch, ...) and image sizes (batch, 2) as (height, width) -> one dict per image
# with "boxes" (K, 4), "scores" (K,) and "labels" (K,) (the convention of fulcrum.metrics)
PostprocessFn = Callable[[torch.Tensor, torch.Tensor], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TaskFunctions:
    """A workload's own part of its task: ``loss(outputs, targets)`` replaces the task's training
    loss, ``distill_loss(student_outputs, teacher_outputs)`` the soft loss of distillation, and
    ``postprocess(outputs, image_sizes)`` turns a detector's raw outputs into detections."""

    loss: LossFn | None = None
    distill_loss: LossFn | None = None
    postprocess: PostprocessFn | None = None


def loss_for(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss that matches a task's outputs and targets."""
    if task == "detection":
        raise ConfigError(
            "a detector's training loss depends on its output layout: give the workload its "
            "loss (in a TOML workload, loss = 'module:callable'), or distill with alpha=1."
        )
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


def contrastive_loss(
    first: torch.Tensor, second: torch.Tensor, scale: float = 20.0
) -> torch.Tensor:
    """SimCSE's unsupervised loss: two dropout views of each sentence are each other's positive,
    the batch's other sentences the negatives. What an embedding model trains on without labels
    and without a teacher."""
    first, second = nn.functional.normalize(first, dim=-1), nn.functional.normalize(second, dim=-1)
    logits = scale * first @ second.T
    return nn.functional.cross_entropy(logits, torch.arange(len(first)))


def augmenter(
    kind: str, example: torch.Tensor, seed: int, task: str = ""
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An augmentation for inputs shaped like ``example``; None when there is nothing sensible.

    A shift would move a detection image away from its boxes: detection images get noise only.
    """
    if kind not in AUGMENTS:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got {kind!r}.")
    if task == "detection" and "shift" in kind:
        raise ConfigError(
            f"augment={kind} shifts images without their boxes; use augment=noise for detection."
        )
    if task == "detection" and kind == "auto":
        kind = "noise"
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
    """Split a training loader into (train, holdout) loaders; no holdout if it is too small
    (or ``fraction`` is 0). The training loader shuffles with a generator seeded by ``seed``,
    whatever the given loader's own generator has drawn before: a recipe trains alike
    whichever trials ran before it (the workload's loader is shared by every trial)."""
    try:
        size = len(train.dataset)  # type: ignore[arg-type]
    except TypeError:
        return train, None
    n_hold = int(size * fraction)
    if n_hold < 8:
        n_hold = 0
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    kept, held = Subset(train.dataset, order[n_hold:]), Subset(train.dataset, order[:n_hold])
    collate = train.collate_fn  # token batches are padded by the workload's own collate
    restricted = getattr(train.batch_sampler, "restricted", None)  # text: batches by length
    if callable(restricted):
        fit_loader = DataLoader(kept, batch_sampler=restricted(order[n_hold:]), collate_fn=collate)
    else:
        fit_loader = DataLoader(
            kept,
            batch_size=train.batch_size or 64,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=collate,
        )
    return fit_loader, DataLoader(held, batch_size=256, collate_fn=collate) if n_hold else None


def score(
    model: nn.Module,
    loader: DataLoader,
    task: str,
    teacher: nn.Module | None = None,
    postprocess: PostprocessFn | None = None,
) -> float:
    """The task's main metric of ``model`` on ``loader`` (higher is better); a detection task's
    ``postprocess`` turns a detector's raw outputs into detections (the workload's)."""
    from fulcrum.metrics import MAIN_METRIC, compute
    from fulcrum.runtimes import predict

    if task == "detection":
        from fulcrum.evaluation import evaluate

        found = evaluate(
            model, loader, task, postprocess=postprocess, threads=torch.get_num_threads()
        )
        value = found.metrics.get(MAIN_METRIC[task])
        return float("-inf") if value is None else float(value)
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
    hidden: HiddenMatch | None = None,
    dropout: bool = True,
    patience: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    functions: TaskFunctions | None = None,
    steps: str | None = None,
) -> nn.Module:
    """Train a copy of ``model``; return the copy in eval mode (the input is left untouched).

    With a ``teacher``, the loss is ``alpha * soft + (1 - alpha) * hard`` where ``soft`` compares
    the student's outputs with the teacher's at ``temperature``; ``hidden`` adds the distance of
    mapped encoder layers' outputs (TinyBERT). Without ``dropout`` the copy's Dropout modules
    are off while it trains (and back as they were after). An embedding task trained without a
    teacher learns SimCSE's contrastive objective (two dropout views of a sentence agree). With
    ``patience``, training stops when the holdout metric has not improved for that many epochs,
    and the best epoch's weights are returned. ``on_epoch(epoch, holdout_metric)`` may raise to
    abandon training (a search cuts hopeless trials short this way). ``functions`` (default:
    the workload's) may replace the task's losses; ``steps`` names it in ``fulcrum.progress``.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    torch.manual_seed(seed)
    model = copy.deepcopy(model).train()
    rates = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    for module in rates if not dropout else ():  # (attention reads its Dropout's p as well)
        module.p = 0.0
    unlabelled = task == "embedding" and teacher is None
    functions = functions or TaskFunctions()
    hard, soft = _losses(task, alpha, temperature, functions)
    if teacher is not None:
        teacher = teacher.eval()
    if hidden is not None and teacher is None:
        raise ConfigError("hidden-state distillation needs a teacher model.")
    fit_loader, held = holdout(train, fraction=0.1 if patience else 0.0, seed=seed)
    transform = None
    if augment != "none":
        transform = augmenter(augment, as_inputs(next(iter(fit_loader))[0])[0], seed, task)
    projections = nn.ModuleList()
    if hidden is not None and teacher is not None:
        projections = projections_for(model, teacher, hidden, as_inputs(next(iter(fit_loader))[0]))
    losses, rates_ = (hard, soft), (lr, weight_decay)
    loop = _Loop.build(
        model, fit_loader, epochs, rates_, teacher, losses, alpha, hidden, projections, transform,
        unlabelled,
    )  # fmt: skip
    pairs = hidden.pairs if hidden is not None else ()
    batches = _Counted(fit_loader, steps, epochs)
    with layer_outputs(model, [s for s, _ in pairs]) as mine, batches:
        best = _epochs(
            loop,
            batches,
            mine,
            epochs,
            held,
            patience,
            on_epoch,
            progress,
            task,
            teacher,
            functions,
        )
    if best is not None:
        model.load_state_dict(best)
    for module, rate in rates.items():
        module.p = rate
    return model.eval()


class _Counted:
    """A training loader whose batches are reported to ``fulcrum.progress`` under ``steps``
    (over all ``epochs``); the report ends when the block does, early stopping or not."""

    def __init__(self, loader: DataLoader, steps: str | None, epochs: int) -> None:
        self.loader, self.steps = loader, steps
        self.done, self.total = 0, epochs * len(loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            self.done += 1
            if self.steps is not None:
                report_step(self.steps, self.done, self.total)

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.steps is not None and self.done < self.total:
            report_step(self.steps, self.total, self.total)


def _epochs(
    loop: _Loop,
    fit_loader: Iterable[Any],
    mine: dict[int, torch.Tensor],
    epochs: int,
    held: DataLoader | None,
    patience: int | None,
    on_epoch: Callable[[int, float], None] | None,
    progress: Callable[[str], None] | None,
    task: str,
    teacher: nn.Module | None,
    functions: TaskFunctions,
) -> dict[str, Any] | None:
    """Train for ``epochs``, scoring the holdout after each (with ``patience``); return the
    best epoch's weights, or None when there was no holdout to judge by."""
    model = loop.model
    best: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
    stale = 0
    for epoch in range(epochs):
        model.train()
        for x, y in fit_loader:
            loop.step(x, y, mine)
        if held is None or not patience:
            if progress:
                progress(f"epoch {epoch + 1}/{epochs}")
            continue
        value = score(model.eval(), held, task, teacher, functions.postprocess)
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}: holdout {value:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, value)
        # a tie keeps the later epoch: a holdout of a hundred-odd samples moves in steps of one
        # sample and often ties, and the later weights have trained longer at the lower rates
        # of the schedule (on `digits`, 70% pruned, ten epochs, five seeds: the first of the
        # tied epochs cost 0.4 pt on average)
        if value >= best[0]:
            best, stale = (value, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
            if stale >= patience:
                break
    return best[1]


@dataclass
class _Loop:
    """What one training step computes and steps: the loss of a batch (the task's loss, the
    teacher's soft targets and hidden states, SimCSE's two views), then the optimizer."""

    model: nn.Module
    trained: nn.Module  # the model, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    schedule: Any
    losses: tuple[Any, Any]  # (hard, soft)
    alpha: float
    unlabelled: bool
    memo: TeacherMemo | None
    hidden: HiddenMatch | None
    projections: nn.ModuleList
    transform: Callable[[torch.Tensor], torch.Tensor] | None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        fit_loader: DataLoader,
        epochs: int,
        rates: tuple[float, float],
        teacher: nn.Module | None,
        losses: tuple[Any, Any],
        alpha: float,
        hidden: HiddenMatch | None,
        projections: nn.ModuleList,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        unlabelled: bool,
    ) -> _Loop:
        """The optimizer (AdamW at ``rates`` = (lr, weight decay), one-cycle schedule), the
        teacher's memo and the DDP wrapper of one training run."""
        lr, weight_decay = rates
        optimizer = adamw([*model.parameters(), *projections.parameters()], lr, weight_decay)
        # under torchrun: each process computes on its slice of every batch, DDP averages
        # gradients
        size = distributed.world_size()
        pairs = hidden.pairs if hidden is not None else ()
        memo = None
        if teacher is not None and (alpha > 0 or hidden is not None):
            # the teacher's outputs depend on the example only (it is in eval mode): computed
            # once and reused every later epoch, unless each epoch changes the inputs
            # (augmentation) or splits the batches (DDP)
            remember = epochs > 1 and transform is None and size == 1
            limit = TEACHER_MEMO_BYTES if remember else 0
            memo = TeacherMemo(teacher, [t for _, t in pairs], limit)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * max(len(fit_loader), 1), pct_start=0.15
        )
        return cls(
            model=model,
            trained=distributed.wrap(model),
            optimizer=optimizer,
            schedule=schedule,
            losses=losses,
            alpha=alpha,
            unlabelled=unlabelled,
            memo=memo,
            hidden=hidden,
            projections=projections,
            transform=transform,
        )

    def step(self, x: Any, y: Any, mine: dict[int, torch.Tensor]) -> None:
        size, index = distributed.world_size(), distributed.rank()
        inputs = as_inputs(x)
        if self.transform is not None:
            inputs = (self.transform(inputs[0]), *inputs[1:])
        if size > 1:
            *parts, y = distributed.shard((*inputs, y), size, index)
            inputs = tuple(parts)
        self.optimizer.zero_grad(set_to_none=True)
        if self.unlabelled and size > 1:  # DDP takes one forward per backward: both views at once
            both = output_tensor(self.trained(*(torch.cat([t, t]) for t in inputs)))
            out, second = both.chunk(2)
        else:
            out = output_tensor(self.trained(*inputs))
            second = output_tensor(self.trained(*inputs)) if self.unlabelled else out
        hard, soft = self.losses
        loss = torch.zeros(())
        if hard is not None:
            loss = loss + (1.0 - self.alpha) * hard(out, y)
        if self.unlabelled:
            loss = loss + contrastive_loss(out, second)
        if self.memo is not None:
            target, theirs = self.memo(inputs)
            if self.alpha > 0:
                loss = loss + self.alpha * soft(out, target)
            if self.hidden is not None:
                pairs = self.hidden.pairs
                distances = [
                    hidden_distance(project(mine[s]), theirs[t], inputs)
                    for project, (s, t) in zip(self.projections, pairs, strict=True)
                ]
                loss = loss + self.hidden.weight * sum(distances) / max(len(pairs), 1)
        loss.backward()
        distributed.average_gradients(list(self.projections.parameters()))
        clip_recurrent_(self.model)
        self.optimizer.step()
        self.schedule.step()


# the largest gradient norm a model with recurrent layers steps with: back-propagation through
# time multiplies a gradient once per time step, and one exploding batch can wreck the weights
RECURRENT_MAX_NORM = 1.0


def clip_recurrent_(model: nn.Module) -> None:
    """Clip the gradients of a model with recurrent layers (LSTM, GRU, RNN) to a total norm of
    ``RECURRENT_MAX_NORM``, in place; other models' gradients are left as they are."""
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        nn.utils.clip_grad_norm_(model.parameters(), RECURRENT_MAX_NORM)


def _losses(
    task: str, alpha: float, temperature: float, functions: TaskFunctions
) -> tuple[LossFn | None, LossFn]:
    """The hard loss (None where there is none to weigh) and the soft loss of distillation: the
    workload's own where it gives them, else the task's."""
    hard = None
    if alpha < 1.0 and task != "embedding":
        hard = functions.loss or loss_for(task)
    return hard, functions.distill_loss or (lambda s, t: soft_loss(task, s, t, temperature))


def adamw(parameters: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, with its fused kernel where that applies (float32/64 on CPU or CUDA): the default
    on CPU steps parameter by parameter, and updating all-MiniLM-L6-v2's 11.7 M-entry word
    embedding table took 65 ms of a 300 ms distillation step with it, 8 ms fused."""
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
        for p in parameters
    )
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)
