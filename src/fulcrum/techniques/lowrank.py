"""Low-rank factorisation: a Linear (or 1x1 conv) becomes two thinner ones by truncated SVD.

W (out x in) ~ U_r S_r V_r^T, stored as ``Linear(in, r)`` followed by ``Linear(r, out)``. A layer
is factorised only when the two factors have fewer parameters than the original, which is where
the saving in size and compute comes from. A recurrent layer (LSTM, GRU, RNN) has its first
layer's input matrices factorised the same way (a ``Linear(in, r)`` in front of it) where that
saves a good share of its MACs, and its recurrent matrices left whole
(``recurrent.factor_input``); each one's step notes say which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fulcrum.runtimes import as_inputs
from fulcrum.techniques import recurrent
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    copy_model,
    find_modules,
    head_name,
    register,
)


@dataclass(frozen=True)
class LowRankConfig(TechniqueConfig):
    """Keep ``rank_ratio`` of each layer's full rank, or (if ``energy`` is set) the smallest rank
    that keeps that fraction of the squared singular values."""

    name: ClassVar[str] = "lowrank"
    primary: ClassVar[str | None] = "rank_ratio"
    rank_ratio: float = 0.25
    energy: float | None = None
    conv1x1: bool = True
    skip: tuple[str, ...] = ()
    factor_head: bool = False

    def validate(self) -> None:
        self.check_range("rank_ratio", 0.0, 1.0, low_open=True)
        if self.energy is not None:
            self.check_range("energy", 0.0, 1.0, low_open=True)


def _rank(s: torch.Tensor, config: LowRankConfig) -> int:
    if config.energy is not None:
        cumulative = torch.cumsum(s**2, 0) / torch.sum(s**2)
        return int(torch.searchsorted(cumulative, torch.tensor(config.energy)).item()) + 1
    return max(1, round(config.rank_ratio * len(s)))


def _factor(
    weight: torch.Tensor, config: LowRankConfig
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first, second) with second @ first ~ weight, or None when it would not save parameters."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    r = min(_rank(s, config), len(s))
    out_f, in_f = weight.shape
    if r * (in_f + out_f) >= in_f * out_f:
        return None
    root = s[:r].sqrt()
    first = (root[:, None] * vh[:r]).float()  # r x in
    second = (u[:, :r] * root[None, :]).float()  # out x r
    return first, second


def _replacement(module: nn.Module, config: LowRankConfig) -> nn.Module | None:
    a: nn.Linear | nn.Conv2d
    b: nn.Linear | nn.Conv2d
    if isinstance(module, nn.Linear):
        factors = _factor(module.weight, config)
        if factors is None:
            return None
        first, second = factors
        a = nn.Linear(module.in_features, first.shape[0], bias=False)
        b = nn.Linear(first.shape[0], module.out_features, bias=module.bias is not None)
    elif (
        isinstance(module, nn.Conv2d)
        and config.conv1x1
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
    ):
        factors = _factor(module.weight[:, :, 0, 0], config)
        if factors is None:
            return None
        first, second = factors
        a = nn.Conv2d(module.in_channels, first.shape[0], 1, bias=False)
        b = nn.Conv2d(first.shape[0], module.out_channels, 1, bias=module.bias is not None)
        first, second = first[:, :, None, None], second[:, :, None, None]
    else:
        return None
    with torch.no_grad():
        a.weight.copy_(first)
        b.weight.copy_(second)
        if module.bias is not None and b.bias is not None:
            b.bias.copy_(module.bias)
    return nn.Sequential(a, b)


def apply(config: LowRankConfig, candidate: Candidate, ctx: Context) -> Candidate:
    float_model = candidate.require_float("lowrank")
    start = time.perf_counter()
    model = copy_model(float_model)
    skipped = set(config.skip)
    find_modules(model, config.skip)
    head = head_name(model)
    if head and not config.factor_head:
        skipped.add(head)
    factored: list[str] = []
    notes: list[str] = []
    layers = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    calls = recurrent.usage(model, as_inputs(ctx.example_inputs)) if layers else {}
    for name, module in list(model.named_modules()):
        if name in skipped or not name:
            continue
        if isinstance(module, nn.RNNBase):
            replacement, how = recurrent.factor_input(
                module,
                calls.get(module, recurrent.LayerUse()),
                lambda weight: _factor(weight, config),
            )
            notes.append(f"{name}: {how}")
        else:
            replacement = _replacement(module, config)
        if replacement is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replacement)
        factored.append(name)
    before = sum(p.numel() for p in float_model.parameters())
    after = sum(p.numel() for p in model.parameters())
    if layers:
        notes.append(
            "recurrent matrices stay full-rank: a factorised recurrence is no longer an LSTM, GRU "
            "or RNN operator that a runtime runs whole"
        )
    if not factored:
        notes.append("no layer was factorised: at this rank no factorisation saves enough")
    facts = {"layers_factorised": factored, "params_before": before, "params_after": after}
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts=facts,
    )
    return candidate.with_step(step, model=model.eval())


def space(trial: Trial) -> LowRankConfig:
    return LowRankConfig(
        rank_ratio=round(trial.suggest_float("lowrank.rank_ratio", 0.1, 0.6, step=0.05), 2)
    )


TECHNIQUE = register(
    Technique(
        name="lowrank",
        config=LowRankConfig,
        apply=apply,
        space=space,
        summary="low-rank factorisation of Linear and 1x1 conv layers by truncated SVD",
        speeds_up="torch, onnxruntime",
        reduces="params",
        invalid={"rank_ratio": 0.0},
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
        search=Search(
            role="structural",
            order=40,
            draw=lambda trial, _scope: space(trial),
            applies=lambda scope: not scope.graph_only,
        ),
    )
)
