"""Structured pruning with Torch-Pruning: channels, neurons and heads are removed physically.

Torch-Pruning's dependency graph finds the layers coupled to each channel (a conv, its batch
norm, the next conv's inputs, residual partners) and slices them together, so the pruned model
is a smaller dense model that is faster on every runtime — unlike mask-based pruning.
Recurrent layers (LSTM, GRU, RNN; any depth, either direction) lose whole hidden units through
a pruner of ours registered with it (``recurrent``); one that cannot be pruned keeps its units
and the step's notes say why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fulcrum.errors import ConfigError, TechniqueError, first_line
from fulcrum.runtimes import as_inputs, output_tensor
from fulcrum.techniques import recurrent
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Scope,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    WarmStart,
    copy_model,
    find_modules,
    head_name,
    register,
)
from fulcrum.train import holdout, loss_for

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


def output_layers(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The Conv and Linear layers whose outputs reach the model's output through no other such
    layer: their widths are the output's layout (a detector's box, objectness and class
    predictions of every level, where ``head_name`` finds only the last one). Found by walking
    the autograd graph of one forward pass back from the output."""
    producers: dict[Any, nn.Module] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, _i, out: producers.__setitem__(out.grad_fn, m) if out.grad_fn else None
        )
        for module in model.modules()
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    # inputs that need gradients: the graph is recorded even where the weights are frozen
    probe = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    try:
        with torch.enable_grad():
            start = output_tensor(model(*probe)).grad_fn
    finally:
        for hook in hooks:
            hook.remove()
    found: list[nn.Module] = []
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in producers:
            found.append(producers[node])
        else:
            stack.extend(parent for parent, _ in node.next_functions)
    return found


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
    if ctx.task == "detection" and not config.prune_head:  # the raw output's layout stays
        skipped += output_layers(model, inputs)
    per_layer = {}
    for entry in config.layer_ratios:
        name, _, value = entry.rpartition(":")
        per_layer[find_modules(model, [name])[0]] = float(value)
    heads = _attention_heads(model)
    rnn = recurrent.plan(model, inputs)
    skipped += rnn.ignored
    before = sum(p.numel() for p in model.parameters())
    try:
        with rnn.tracing():
            pruner = tp.pruner.MetaPruner(
                model,
                inputs,
                importance=recurrent.RecurrentImportance(_importance(config), rnn.pruner),
                pruning_ratio=config.ratio,
                pruning_ratio_dict=per_layer or None,
                global_pruning=config.global_pruning,
                ignored_layers=skipped,
                round_to=config.round_to if config.round_to > 1 else None,
                num_heads=heads,
                prune_head_dims=True,
                prune_num_heads=False,
                **rnn.options,
            )
    except Exception as exc:  # torch-pruning raises assorted errors on graphs it cannot follow
        raise _untraceable(copy_model(float_model), inputs, exc) from None
    recurrent.layer_ratios_(pruner, per_layer)
    if config.importance == "taylor":
        _taylor_gradients(model, config, ctx)
    pruner.step()
    model.zero_grad(set_to_none=True)
    _fix_attention(model)
    model = model.eval()
    _check_runs(model, inputs)
    after = sum(p.numel() for p in model.parameters())
    facts = {
        "params_before": before,
        "params_after": after,
        "param_ratio": round(after / before, 4),
    }
    notes = rnn.notes
    if after >= before:
        notes.append(
            "nothing was pruned: every prunable layer was skipped or too small for round_to"
        )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts=facts,
    )
    return candidate.with_step(step, model=model)


def _taylor_gradients(model: nn.Module, config: PruneConfig, ctx: Context) -> None:
    """The gradients Taylor importance ranks by, from the first ``taylor_batches`` batches."""
    if ctx.train is None:
        raise ConfigError(
            "prune:importance=taylor needs training data for gradients; use importance=magnitude."
        )
    # an embedding task has no labels: rank by the gradient of the embeddings' energy
    loss_fn = (
        (lambda out, _y: out.pow(2).sum(-1).mean())
        if ctx.task == "embedding"
        else ctx.functions.loss or loss_for(ctx.task)
    )
    model.zero_grad()
    batches, _ = holdout(ctx.train, fraction=0.0, seed=ctx.seed)  # the same for every trial
    for i, (x, y) in enumerate(batches):
        if i >= config.taylor_batches:
            break
        loss_fn(output_tensor(model(*as_inputs(x))), y).backward()


def _check_runs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """The pruned model runs on the example inputs and gives finite outputs."""
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


def space(trial: Trial) -> PruneConfig:
    return PruneConfig(
        ratio=round(trial.suggest_float("prune.ratio", 0.1, 0.8, step=0.05), 2),
        importance=trial.suggest_categorical("prune.importance", ["magnitude", "taylor"]),
        global_pruning=trial.suggest_categorical("prune.global_pruning", [False, True]),
    )


# how strongly the sensitivity analysis steers pruning ratios per layer (0: uniform)
ALLOCATION_STRENGTHS = (0.0, 1.0, 2.0)


def draw(trial: Trial, scope: Scope) -> PruneConfig:
    """The ranges of ``space``; with the sensitivity analysis's allocation, a drawn strength
    spreads the drawn ratio over the layers (as many MACs removed, where they cost least)."""
    config = space(trial)
    if scope.allocate is None:
        return config
    strength = trial.suggest_categorical("prune.allocation", list(ALLOCATION_STRENGTHS))
    if not strength:
        return config
    ratios = scope.allocate(config.ratio, strength)
    return PruneConfig(
        ratio=0.0, importance=config.importance, global_pruning=False, layer_ratios=ratios
    )


def warm_starts(scope: Scope) -> tuple[WarmStart, ...]:
    """30% and 50% of every layer's channels, recovered briefly; and (not for transformers) a
    deep cut steered by sensitivity, distilled at length: on conv nets the hand recipe that
    reaches 5-6x at batch 1 (prune 0.7 + distillation) before int8. A thinned transformer (every
    layer kept) recovered worse than fewer whole layers (MiniLM, 30%: cosine 0.82): no 50% for
    it, its structural students go deeper (``heads``)."""

    def point(ratio: float, allocation: float) -> dict[str, dict[str, Any]]:
        return {
            "prune": {
                "prune.ratio": ratio,
                "prune.importance": "magnitude",
                "prune.global_pruning": False,
                "prune.allocation": allocation,  # 0: uniform (where sensitivity offers more)
            }
        }

    mild = [WarmStart(1, point(r, 0.0)) for r in ((0.3,) if scope.transformer else (0.3, 0.5))]
    if scope.transformer:
        return tuple(mild)
    return (*mild, WarmStart(2, point(0.7, 1.0), recovery="long"))


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
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
        search=Search(
            role="structural",
            order=30,
            draw=draw,
            applies=lambda scope: not scope.graph_only,
            use=(True, False),
            warm_starts=warm_starts,
        ),
    )
)
