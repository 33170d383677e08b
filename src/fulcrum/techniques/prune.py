"""Structured pruning with Torch-Pruning: channels, neurons and heads are removed physically.

Torch-Pruning's dependency graph finds the layers coupled to each channel (a conv, its batch
norm, the next conv's inputs, residual partners) and slices them together, so the pruned model
is a smaller dense model that is faster on every runtime — unlike mask-based pruning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fulcrum.errors import ConfigError, TechniqueError, first_line
from fulcrum.runtimes import as_inputs, output_tensor
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    copy_model,
    find_modules,
    head_name,
    register,
)

IMPORTANCES = ("magnitude", "taylor", "random")


@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    """Remove ``ratio`` of the channels of every prunable layer (or of the model, if global).

    ``layer_ratios`` overrides the ratio per layer ("features.7.0:0.8"); ``skip`` names layers left
    alone (the classifier head is always kept unless ``prune_head``); channel counts are rounded to
    a multiple of ``round_to`` so that int8 and SIMD kernels stay efficient.
    """

    name: ClassVar[str] = "prune"
    primary: ClassVar[str | None] = "ratio"
    ratio: float = 0.5
    importance: str = "magnitude"
    global_pruning: bool = False
    round_to: int = 8
    layer_ratios: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    prune_head: bool = False
    taylor_batches: int = 4

    def validate(self) -> None:
        self.check_range("ratio", 0.0, 0.95, high_open=False)
        self.check_choice("importance", IMPORTANCES)
        self.check_range("round_to", 1, 256)
        self.check_range("taylor_batches", 1, 1000)
        for entry in self.layer_ratios:
            name, _, value = entry.rpartition(":")
            try:
                ok = bool(name) and 0.0 <= float(value) <= 0.95
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"The 'layer_ratios' parameter of prune takes 'layer:ratio' entries with a ratio "
                    f"in [0, 0.95]. Got {entry!r} instead."
                )


def _importance(config: PruneConfig) -> Any:
    import torch_pruning as tp

    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    if config.importance == "random":
        return tp.importance.RandomImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Query/key/value projections of attention blocks and their head count: Hugging Face's
    ``query``/``key``/``value`` with ``num_attention_heads``, or a fused ``qkv`` Linear beside a
    ``num_heads`` or ``heads`` count (timm's and most hand-written encoders)."""
    heads: dict[nn.Module, int] = {}
    for module in model.modules():
        count = getattr(module, "num_attention_heads", None)
        if isinstance(count, int):
            for part in ("query", "key", "value"):
                layer = getattr(module, part, None)
                if isinstance(layer, nn.Linear):
                    heads[layer] = count
        fused = getattr(module, "qkv", None)
        count = getattr(module, "num_heads", getattr(module, "heads", None))
        if isinstance(fused, nn.Linear) and isinstance(count, int) and not isinstance(count, bool):
            heads[fused] = count
    return heads


def _fix_attention(model: nn.Module) -> None:
    """After pruning head dimensions, keep attention blocks' size attributes consistent."""
    for module in model.modules():
        count = getattr(module, "num_attention_heads", None)
        query = getattr(module, "query", None)
        if isinstance(count, int) and isinstance(query, nn.Linear):
            module.attention_head_size = query.out_features // count  # type: ignore[assignment]
            module.all_head_size = query.out_features  # type: ignore[assignment]


def _untraceable(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], exc: Exception
) -> TechniqueError:
    """Name the layer whose forward failed while Torch-Pruning traced the model."""
    stack: list[str] = []
    failed: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda _m, _i, n=name: stack.append(n)))
        hooks.append(
            module.register_forward_hook(lambda _m, _i, _o: stack.pop() if stack else None)
        )
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception:
        failed = [stack[-1]] if stack else []
    finally:
        for h in hooks:
            h.remove()
    first = first_line(exc, 200)
    where = f"at layer {failed[0]!r}" if failed and failed[0] else "in the model's forward"
    fix = (
        f"exclude it with prune:skip={failed[0]}"
        if failed and failed[0]
        else "exclude the layer with prune:skip=NAME"
    )
    return TechniqueError(f"torch-pruning cannot trace the model {where} ({first}); {fix}.")


def apply(config: PruneConfig, candidate: Candidate, ctx: Context) -> Candidate:
    import torch_pruning as tp

    float_model = candidate.require_float("prune")
    start = time.perf_counter()
    model = copy_model(float_model)
    inputs = as_inputs(ctx.example_inputs)
    skipped = find_modules(model, config.skip)
    head = head_name(model)
    if head and not config.prune_head:
        skipped += find_modules(model, [head])
    per_layer = {}
    for entry in config.layer_ratios:
        name, _, value = entry.rpartition(":")
        per_layer[find_modules(model, [name])[0]] = float(value)
    heads = _attention_heads(model)
    before = sum(p.numel() for p in model.parameters())
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            inputs,
            importance=_importance(config),
            pruning_ratio=config.ratio,
            pruning_ratio_dict=per_layer or None,
            global_pruning=config.global_pruning,
            ignored_layers=skipped,
            round_to=config.round_to if config.round_to > 1 else None,
            num_heads=heads,
            prune_head_dims=True,
            prune_num_heads=False,
        )
    except Exception as exc:  # torch-pruning raises assorted errors on graphs it cannot follow
        raise _untraceable(copy_model(float_model), inputs, exc) from None
    if config.importance == "taylor":
        if ctx.train is None:
            raise ConfigError(
                "prune:importance=taylor needs training data for gradients; use importance=magnitude."
            )
        from fulcrum.train import loss_for

        # an embedding task has no labels: rank by the gradient of the embeddings' energy
        loss_fn = (
            (lambda out, _y: out.pow(2).sum(-1).mean())
            if ctx.task == "embedding"
            else loss_for(ctx.task)
        )
        model.zero_grad()
        for i, (x, y) in enumerate(ctx.train):
            if i >= config.taylor_batches:
                break
            loss_fn(output_tensor(model(*as_inputs(x))), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    _fix_attention(model)
    model = model.eval()
    try:
        with torch.no_grad():
            out = output_tensor(model(*inputs))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise TechniqueError(
            f"the pruned model cannot run ({first_line(exc, 160)}): a layer outside the traced "
            "graph kept its width; skip it with prune:skip=LAYER or leave it out of the model."
        ) from None
    if not torch.isfinite(out).all():
        raise TechniqueError(
            "the pruned model produces NaN or inf; lower prune:ratio or skip the layer that breaks."
        )
    after = sum(p.numel() for p in model.parameters())
    facts = {
        "params_before": before,
        "params_after": after,
        "param_ratio": round(after / before, 4),
    }
    notes = (
        ()
        if after < before
        else ("nothing was pruned: every prunable layer was skipped or too small for round_to",)
    )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=notes,
        facts=facts,
    )
    return candidate.with_step(step, model=model)


def space(trial: Trial) -> PruneConfig:
    return PruneConfig(
        ratio=round(trial.suggest_float("prune.ratio", 0.1, 0.8, step=0.05), 2),
        importance=trial.suggest_categorical("prune.importance", ["magnitude", "taylor"]),
        global_pruning=trial.suggest_categorical("prune.global_pruning", [False, True]),
    )


TECHNIQUE = register(
    Technique(
        name="prune",
        config=PruneConfig,
        apply=apply,
        space=space,
        summary="structured pruning (Torch-Pruning): removes channels, neurons and head dims physically",
        speeds_up="torch, onnxruntime",
        reduces="params",
        invalid={"ratio": 1.5},
        contract_kinds=("cnn", "mlp", "bert"),
    )
)
