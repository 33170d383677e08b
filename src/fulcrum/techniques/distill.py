"""Knowledge distillation: a student learns the teacher's softened outputs and the true labels.

The student is the model compressed so far (recovery after pruning), or — with ``width`` — a
narrower copy of the teacher's own architecture, built by removing channels uniformly with
Torch-Pruning and re-initialising its weights. For transformer encoders, ``hidden`` (a weight)
adds TinyBERT's intermediate-layer loss: each student layer matches the output of the teacher
layer it came from (after ``layers``, the layers it kept; otherwise the same layer), through a
learned projection where widths differ. ``dropout`` (``auto``: off for an embedding task, whose
student must reproduce the teacher's outputs, on otherwise) switches the student's dropout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from fulcrum.errors import ConfigError
from fulcrum.teacher import HiddenMatch
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

DROPOUTS = ("auto", "on", "off")


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    """Loss = ``alpha`` * soft (teacher at ``temperature``) + (1 - ``alpha``) * hard (labels)."""

    name: ClassVar[str] = "distill"
    primary: ClassVar[str | None] = "epochs"
    epochs: int = 5
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 1e-3
    width: float | None = None
    augment: str = "auto"
    patience: int = 3
    hidden: float = 0.0
    dropout: str = "auto"

    def validate(self) -> None:
        self.check_range("epochs", 1, 1000)
        self.check_range("temperature", 1.0, 50.0)
        self.check_range("alpha", 0.0, 1.0)
        self.check_range("lr", 0.0, 1.0, low_open=True)
        if self.width is not None:
            self.check_range("width", 0.05, 1.0, high_open=True)
        self.check_choice("augment", AUGMENTS)
        self.check_range("patience", 0, 1000)
        self.check_range("hidden", 0.0, 100.0)
        self.check_choice("dropout", DROPOUTS)


def layer_pairs(candidate: Candidate, teacher: nn.Module) -> tuple[tuple[int, int], ...]:
    """(student layer, teacher layer) pairs: where each of the student's encoder layers came from."""
    from fulcrum.techniques.layers import encoder_layers

    holder, attribute = encoder_layers(teacher)
    origin = list(range(len(getattr(holder, attribute))))
    for step in candidate.steps:
        if "layers_kept" in step.facts:
            origin = [origin[i] for i in step.facts["layers_kept"]]
    holder, attribute = encoder_layers(candidate.require_float("distill"))
    depth = len(getattr(holder, attribute))
    if depth != len(origin):  # layers changed outside a recorded step: TinyBERT's uniform map
        origin = [int((i + 1) * len(origin) / depth) - 1 for i in range(depth)]
    return tuple(enumerate(origin))


def narrower(model: nn.Module, width: float, ctx: Context) -> nn.Module:
    """A copy of ``model``'s architecture at ``width`` of its channels, freshly initialised."""
    from fulcrum.techniques.prune import PruneConfig
    from fulcrum.techniques.prune import apply as prune

    student = prune(
        PruneConfig(ratio=round(1.0 - width, 4), round_to=1), Candidate(model=model), ctx
    ).require_float("distill")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(ctx.seed)
    for module in student.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    torch.random.set_rng_state(generator_state)
    return student


def apply(config: DistillConfig, candidate: Candidate, ctx: Context) -> Candidate:
    float_model = candidate.require_float("distill")
    if ctx.teacher is None or not isinstance(ctx.teacher, nn.Module):
        raise ConfigError(
            "distill needs a PyTorch teacher model; this workload has none (an ONNX model cannot teach)."
        )
    if ctx.train is None:
        raise ConfigError(
            "distill has no teacher signal: the workload has no training split to run the teacher on; "
            "add 'train' to its data."
        )
    alpha = 1.0 if ctx.task == "embedding" else config.alpha  # embeddings have no labels
    # an embedding student is judged by how closely it reproduces the teacher: dropout only
    # blurs the target (on all-MiniLM-L6-v2, one epoch: cosine 0.804 without, 0.790 with)
    dropout = config.dropout == "on" or (config.dropout == "auto" and ctx.task != "embedding")
    start = time.perf_counter()
    student = float_model if config.width is None else narrower(float_model, config.width, ctx)
    hidden = (
        HiddenMatch(layer_pairs(candidate, ctx.teacher), config.hidden) if config.hidden else None
    )
    model = fit(
        student,
        ctx.train,
        ctx.task,
        epochs=config.epochs,
        lr=config.lr,
        seed=ctx.seed,
        augment=config.augment,
        teacher=ctx.teacher,
        temperature=config.temperature,
        alpha=alpha,
        hidden=hidden,
        dropout=dropout,
        patience=config.patience or None,
        progress=ctx.progress,
        on_epoch=ctx.on_epoch,
        functions=ctx.functions,
    )
    facts: dict[str, float] = {}
    if ctx.val is not None:
        facts = {
            "val_after": round(
                score(model, ctx.val, ctx.task, ctx.teacher, ctx.functions.postprocess), 4
            )
        }
    notes = (
        "compare with the same student trained without a teacher (finetune) before crediting distillation",
    )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=notes,
        facts=facts,
    )
    return candidate.with_step(step, model=model)


def space(trial: Trial) -> DistillConfig:
    return DistillConfig(
        epochs=trial.suggest_int("distill.epochs", 2, 10),
        temperature=round(trial.suggest_float("distill.temperature", 2.0, 8.0), 2),
        alpha=round(trial.suggest_float("distill.alpha", 0.3, 0.9), 2),
    )


def draw(trial: Trial, scope: Scope) -> DistillConfig:
    """The ranges of ``space`` with the recovery schedule; for a transformer, whether the
    student also matches the teacher's hidden states (TinyBERT's intermediate-layer loss)."""
    config = recovery_schedule(trial, space(trial), scope)
    if scope.transformer:
        hidden = trial.suggest_categorical("distill.hidden", [0.0, 1.0])
        config = replace(config, hidden=hidden)
    return config


def warm(scope: Scope, kind: str) -> dict[str, Any] | None:
    """Distillation's part in a warm start: the quick recovery where there are no labels to
    fine-tune on; at length (10 epochs, temperature 4, labels and teacher weighed equally, the
    whole training split: on `digits`, int8 after a 70% cut then kept within 0.5 pt in 10 of 10
    seeds) for a deep cut; for a shallower student, 10 epochs (the teacher runs once per
    example, so later epochs cost the student's pass alone) with hidden states matched."""
    hidden = {"distill.hidden": 1.0} if scope.transformer else {}
    if kind == "quick":
        return None if scope.labelled else {**hidden, **screened(True)}
    if kind == "long":
        params = {"distill.epochs": 10, "distill.temperature": 4.0, "distill.alpha": 0.5}
        return {**params, **screened(False)}
    if kind == "student":
        return {"distill.epochs": 10, "distill.hidden": 1.0, **screened(True)}
    return None


TECHNIQUE = register(
    Technique(
        name="distill",
        config=DistillConfig,
        apply=apply,
        space=space,
        summary="knowledge distillation from the original model (soft targets + labels)",
        speeds_up="",
        reduces="",
        invalid={"temperature": 0.5},
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
        search=Search(
            role="recovery",
            order=10,
            draw=draw,
            applies=lambda scope: not scope.graph_only,
            use=None,
            warm=warm,
        ),
    )
)
