"""Recovery fine-tuning: a few epochs on the training split, with augmentation and early stopping.

An embedding task has no labels: there it trains on SimCSE's contrastive objective (dropout
makes two views of each sentence), which is what "the same student trained without the teacher"
means for an encoder, and it stops by epochs (a holdout score would need the teacher).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from fulcrum.errors import ConfigError
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Scope,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    recovery_schedule,
    register,
    screened,
)
from fulcrum.train import AUGMENTS, fit, score


@dataclass(frozen=True)
class FinetuneConfig(TechniqueConfig):
    """Train the current model on the task's labels for up to ``epochs`` epochs.

    ``augment``: ``auto`` picks small shifts and noise for images and noise for tabular or signal
    inputs; ``patience`` stops early when the holdout metric (carved from the training split)
    stops improving.
    """

    name: ClassVar[str] = "finetune"
    primary: ClassVar[str | None] = "epochs"
    epochs: int = 5
    lr: float = 1e-3
    augment: str = "auto"
    patience: int = 3
    weight_decay: float = 1e-4

    def validate(self) -> None:
        self.check_range("epochs", 1, 1000)
        self.check_range("lr", 0.0, 1.0, low_open=True)
        self.check_choice("augment", AUGMENTS)
        self.check_range("patience", 0, 1000)
        self.check_range("weight_decay", 0.0, 1.0)


def apply(config: FinetuneConfig, candidate: Candidate, ctx: Context) -> Candidate:
    float_model = candidate.require_float("finetune")
    if ctx.train is None:
        raise ConfigError("finetune needs the workload's training split; add 'train' to its data.")
    unlabelled = ctx.task == "embedding"
    start = time.perf_counter()
    model = fit(
        float_model,
        ctx.train,
        ctx.task,
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=ctx.seed,
        augment=config.augment,
        patience=None if unlabelled else config.patience or None,
        progress=ctx.progress,
        on_epoch=ctx.on_epoch,
        functions=ctx.functions,
    )
    facts = {}
    if ctx.val is not None:
        reference = ctx.teacher if unlabelled else None  # cosine to the original, reported only
        facts = {
            "val_before": round(
                score(float_model, ctx.val, ctx.task, reference, ctx.functions.postprocess), 4
            ),
            "val_after": round(
                score(model, ctx.val, ctx.task, reference, ctx.functions.postprocess), 4
            ),
        }
    step = Step(config=config.to_dict(), seconds=round(time.perf_counter() - start, 3), facts=facts)
    return candidate.with_step(step, model=model)


def space(trial: Trial) -> FinetuneConfig:
    return FinetuneConfig(
        epochs=trial.suggest_int("finetune.epochs", 2, 10),
        lr=float(f"{trial.suggest_float('finetune.lr', 3e-4, 3e-3, log=True):.2g}"),
    )


def warm(scope: Scope, kind: str) -> dict[str, Any] | None:
    """The quick recovery of a mild cut, screened on a holdout (its epochs and rate drawn)."""
    return screened(True) if kind == "quick" else None


TECHNIQUE = register(
    Technique(
        name="finetune",
        config=FinetuneConfig,
        apply=apply,
        space=space,
        summary="recovery fine-tuning with augmentation and early stopping on a training holdout",
        speeds_up="",
        reduces="",
        invalid={"epochs": 0},
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
        search=Search(
            role="recovery",
            order=20,
            draw=lambda trial, scope: recovery_schedule(trial, space(trial), scope),
            applies=lambda scope: scope.labelled and not scope.graph_only,  # needs labels
            use=None,
            warm=warm,
        ),
    )
)
