"""Attention-head and feed-forward pruning of transformer encoders (BERT family).

Whole heads leave each layer's attention, and whole channels leave its feed-forward block, by
importance: ``gradient`` is Michel et al. (2019), the size of the loss's gradient with respect to
a mask on each head's (and channel's) output, measured on a few training batches; an embedding
task has no loss, so there the gradient of a random projection of the output stands in (its
expected square is the output's sensitivity to that head). ``magnitude`` ranks by the norms of
the weights that feed and read each head or channel. Torch-Pruning removes head *dimensions*
(``prune``); whole heads are sliced here, because its head pruning takes no gradient importance.

``heads:ratio=0.5,ffn=0.5`` removes half the heads and half the feed-forward channels of every
layer; ``layer_heads=0:3+5:6`` removes 3 heads of layer 0 and 6 of layer 5 instead; with
``global_ranking`` the heads compete across layers (scores normalised per layer, as Michel et al.
do), so insensitive layers lose more. Every layer keeps at least one head. The attention modules'
sizes stay consistent, the config records what went (``pruned_heads``, ``intermediate_size``
when every layer kept the same width), and the model exports to ONNX and quantizes as before.
Works on the BERT module layout (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM); tried on BERT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fulcrum.errors import ConfigError, TechniqueError
from fulcrum.runtimes import as_inputs, output_tensor
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
    register,
)
from fulcrum.techniques.layers import encoder_layers, warm_params

IMPORTANCES = ("gradient", "magnitude")


@dataclass(frozen=True)
class HeadsConfig(TechniqueConfig):
    """Remove ``ratio`` of each layer's heads and ``ffn`` of its feed-forward channels."""

    name: ClassVar[str] = "heads"
    primary: ClassVar[str | None] = "ratio"
    ratio: float = 0.5
    ffn: float = 0.0
    importance: str = "gradient"
    layer_heads: tuple[str, ...] = ()
    global_ranking: bool = False
    batches: int = 4
    round_to: int = 8

    def validate(self) -> None:
        self.check_range("ratio", 0.0, 0.95)
        self.check_range("ffn", 0.0, 0.95)
        self.check_choice("importance", IMPORTANCES)
        self.check_range("batches", 1, 1000)
        self.check_range("round_to", 1, 256)
        for entry in self.layer_heads:
            layer, _, count = entry.partition(":")
            if not (layer.isdigit() and count.isdigit()):
                raise ConfigError(
                    f"The 'layer_heads' parameter of heads takes 'layer:heads_removed' entries "
                    f"joined by '+', e.g. 0:3+5:6. Got {entry!r} instead."
                )


@dataclass
class Block:
    """One encoder layer's prunable parts: the head projections and the feed-forward pair."""

    attention: Any  # an nn.Module holding query, key, value and the head count
    attention_out: nn.Linear  # reads the concatenated heads
    ffn_in: nn.Linear
    ffn_out: nn.Linear

    @property
    def heads(self) -> int:
        return int(self.attention.num_attention_heads)

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)


def blocks(model: nn.Module) -> list[Block]:
    """The encoder layers of a BERT-family model, as Blocks; a one-line error for other models."""
    holder, attribute = encoder_layers(model)
    found = []
    for index, layer in enumerate(getattr(holder, attribute)):
        attention = getattr(getattr(layer, "attention", None), "self", None)
        parts = (
            getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None),
            getattr(getattr(layer, "intermediate", None), "dense", None),
            getattr(getattr(layer, "output", None), "dense", None),
        )
        if not (
            isinstance(getattr(attention, "num_attention_heads", None), int)
            and all(
                isinstance(getattr(attention, p, None), nn.Linear)
                for p in ("query", "key", "value")
            )
            and all(isinstance(p, nn.Linear) for p in parts)
        ):
            children = ", ".join(name for name, _ in layer.named_children())
            raise ConfigError(
                f"heads works on the BERT layer layout (attention.self.query/key/value, "
                f"attention.output.dense, intermediate.dense, output.dense); layer {index} is a "
                f"{type(layer).__name__} with {children}: use prune for this model."
            )
        assert attention is not None
        found.append(Block(attention, parts[0], parts[1], parts[2]))  # type: ignore[arg-type]
    return found


def _scale_input(layer: nn.Linear, mask: torch.Tensor, group: int) -> Any:
    """Multiply ``layer``'s input features by ``mask`` (each entry covering ``group`` features)."""

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (x * mask.repeat_interleave(group).to(x.dtype), *args[1:])

    return layer.register_forward_pre_hook(hook)


def gradient_scores(
    model: nn.Module, found: list[Block], ctx: Context, batches: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Michel et al.'s head importance (and the same for feed-forward channels)."""
    from fulcrum.train import loss_for

    if ctx.train is None:
        raise ConfigError(
            "heads:importance=gradient needs training data for gradients; use importance=magnitude."
        )
    head_masks = [torch.ones(b.heads, requires_grad=True) for b in found]
    channel_masks = [torch.ones(b.ffn_in.out_features, requires_grad=True) for b in found]
    hooks = [
        _scale_input(b.attention_out, m, b.head_size)
        for b, m in zip(found, head_masks, strict=True)
    ]
    hooks += [_scale_input(b.ffn_out, m, 1) for b, m in zip(found, channel_masks, strict=True)]
    head_scores = [torch.zeros(b.heads) for b in found]
    channel_scores = [torch.zeros(b.ffn_in.out_features) for b in found]
    generator = torch.Generator().manual_seed(ctx.seed)
    embedding = ctx.task == "embedding"
    loss_fn = None if embedding else loss_for(ctx.task)
    try:
        for i, (x, y) in enumerate(ctx.train):
            if i >= batches:
                break
            out = output_tensor(model(*as_inputs(x)))
            if embedding:  # E[(d r.out / d mask)^2] over random r: the output's sensitivity
                loss = (out * torch.randn(out.shape, generator=generator)).sum()
            else:
                assert loss_fn is not None
                loss = loss_fn(out, y)
            grads = torch.autograd.grad(loss, [*head_masks, *channel_masks])
            for scores, grad in zip([*head_scores, *channel_scores], grads, strict=True):
                scores += grad.pow(2) if embedding else grad.abs()
    finally:
        for hook in hooks:
            hook.remove()
    return head_scores, channel_scores


def magnitude_scores(found: list[Block]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weight norms of what feeds and reads each head and each feed-forward channel."""
    heads, channels = [], []
    for b in found:
        a = b.attention
        rows = sum(getattr(a, p).weight.detach().pow(2).sum(1) for p in ("query", "key", "value"))
        columns = b.attention_out.weight.detach().pow(2).sum(0)
        heads.append((rows + columns).view(b.heads, b.head_size).sum(1))
        channels.append(
            b.ffn_in.weight.detach().pow(2).sum(1) + b.ffn_out.weight.detach().pow(2).sum(0)
        )
    return heads, channels


def heads_to_remove(
    config: HeadsConfig, found: list[Block], scores: list[torch.Tensor]
) -> list[list[int]]:
    """For each layer, the heads to remove (the least important), at least one head left."""
    counts = {int(k): int(v) for k, v in (e.split(":") for e in config.layer_heads)}
    for layer, count in counts.items():
        if layer >= len(found):
            raise ConfigError(
                f"heads: layer {layer} does not exist; the encoder has {len(found)} layers "
                f"(0 to {len(found) - 1})."
            )
        if count >= found[layer].heads:
            raise ConfigError(
                f"heads: removing {count} heads of layer {layer} leaves it none (it has "
                f"{found[layer].heads}); remove at most {found[layer].heads - 1}, or drop the "
                f"layer with layers:indices=..."
            )
    if counts:
        return [torch.argsort(s)[: counts.get(i, 0)].tolist() for i, s in enumerate(scores)]
    if not config.global_ranking:
        return [
            torch.argsort(s)[: min(round(config.ratio * b.heads), b.heads - 1)].tolist()
            for b, s in zip(found, scores, strict=True)
        ]
    normalised = [s / (s.norm() + 1e-12) for s in scores]
    ranked = sorted((float(v), i, h) for i, s in enumerate(normalised) for h, v in enumerate(s))
    budget = round(config.ratio * sum(b.heads for b in found))
    chosen: list[list[int]] = [[] for _ in found]
    for _, layer, head in ranked:
        if budget <= 0:
            break
        if len(chosen[layer]) < found[layer].heads - 1:
            chosen[layer].append(head)
            budget -= 1
    return chosen


def _keep_rows(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` of the output features (dim 0) or input features (dim 1)."""
    weight = layer.weight.detach().index_select(dim, index).clone()
    bias = layer.bias
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach()[index] if dim == 0 else bias.detach())
    return new


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def remove_heads_(model: nn.Module, block: Block, heads: list[int]) -> None:
    """Remove ``heads`` of ``block``'s attention from ``model``, in place."""
    size = block.head_size
    kept = [h for h in range(block.heads) if h not in set(heads)]
    index = torch.tensor([h * size + d for h in kept for d in range(size)], dtype=torch.long)
    for part in ("query", "key", "value"):
        setattr(block.attention, part, _keep_rows(getattr(block.attention, part), index, 0))
    _replace(model, block.attention_out, _keep_rows(block.attention_out, index, 1))
    block.attention.num_attention_heads = len(kept)
    block.attention.all_head_size = len(kept) * size


def remove_channels_(model: nn.Module, block: Block, keep: torch.Tensor) -> None:
    """Keep only the feed-forward channels ``keep`` of ``block``, in place."""
    _replace(model, block.ffn_in, _keep_rows(block.ffn_in, keep, 0))
    _replace(model, block.ffn_out, _keep_rows(block.ffn_out, keep, 1))


def apply(config: HeadsConfig, candidate: Candidate, ctx: Context) -> Candidate:
    start = time.perf_counter()
    model = copy_model(candidate.require_float("heads"))
    found = blocks(model)
    if config.importance == "gradient":
        head_scores, channel_scores = gradient_scores(model, found, ctx, config.batches)
    else:
        head_scores, channel_scores = magnitude_scores(found)
    removed = heads_to_remove(config, found, head_scores)
    widths = []
    for block, gone, scores in zip(found, removed, channel_scores, strict=True):
        channels = block.ffn_in.out_features
        keep = channels - int(config.ffn * channels)  # rounded up to a multiple of round_to
        keep = min(channels, max(config.round_to, -(-keep // config.round_to) * config.round_to))
        if keep < channels:
            remove_channels_(
                model, block, torch.argsort(scores, descending=True)[:keep].sort().values
            )
        if gone:
            remove_heads_(model, block, gone)
        widths.append(keep)
    settings: Any = getattr(model, "config", None) or next(
        (m.config for m in model.modules() if hasattr(m, "config")), None
    )
    if settings is not None:  # what a reader of the config needs to know went
        settings.pruned_heads = {i: sorted(g) for i, g in enumerate(removed) if g}
        if len(set(widths)) == 1:
            settings.intermediate_size = widths[0]
    model = model.eval()
    inputs = as_inputs(ctx.example_inputs)
    with torch.no_grad():
        out = output_tensor(model(*inputs))
    if not torch.isfinite(out).all():
        raise TechniqueError("the head-pruned model produces NaN or inf; lower heads:ratio.")
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=(
            "recover with distill: the remaining heads and channels were trained with the others",
        ),
        facts={
            "heads_removed": [sorted(g) for g in removed],
            "heads_kept": [b.heads for b in found],
            "ffn_channels": widths,
        },
    )
    return candidate.with_step(step, model=model)


def space(trial: Trial) -> HeadsConfig:
    return HeadsConfig(
        ratio=round(trial.suggest_float("heads.ratio", 0.25, 0.75, step=0.25), 2),
        ffn=round(trial.suggest_float("heads.ffn", 0.0, 0.75, step=0.25), 2),
        global_ranking=trial.suggest_categorical("heads.global_ranking", [False, True]),
    )


def warm_starts(scope: Scope) -> tuple[WarmStart, ...]:
    """DistilBERT's student (half the layers), then a third of the layers with a quarter of the
    heads and half the feed-forward width gone, and with half the heads and three quarters of
    the width gone (5.5x and 6.7x faster than fp32 on all-MiniLM-L6-v2 with int8, at batch 1),
    distilled: the frontier then spans int8 alone to the fastest students."""
    students: list[WarmStart] = [WarmStart(3, {"layers": warm_params(0.5)}, recovery="student")]
    for heads, ffn in ((0.25, 0.5), (0.5, 0.75)):
        params = {"heads.ratio": heads, "heads.ffn": ffn, "heads.global_ranking": False}
        students.append(
            WarmStart(3, {"layers": warm_params(0.33), "heads": params}, recovery="student")
        )
    return tuple(students)


TECHNIQUE = register(
    Technique(
        name="heads",
        config=HeadsConfig,
        apply=apply,
        space=space,
        summary="remove whole attention heads and feed-forward channels of a transformer encoder",
        speeds_up="torch, onnxruntime",
        reduces="params",
        invalid={"ratio": 1.0},
        contract_kinds=("bert",),
        search=Search(  # fewer heads and feed-forward channels
            role="structural",
            order=20,
            draw=lambda trial, _scope: space(trial),
            applies=lambda scope: scope.transformer and not scope.graph_only,
            warm_starts=warm_starts,
        ),
    )
)
