"""Unstructured magnitude sparsity, made permanent — and reported honestly.

The smallest weights are set to zero in place of a mask, so nothing is left behind to remove.
Zeros shrink the *compressed* artifact (and the non-zero count), but a dense runtime multiplies
by zero as fast as by anything else: this technique does not make the model faster, and the
profile shows it.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fulcrum.errors import TechniqueError
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


@dataclass(frozen=True)
class SparsityConfig(TechniqueConfig):
    """Zero the ``ratio`` smallest-magnitude weights of Linear, Conv and recurrent layers (global
    or per layer)."""

    name: ClassVar[str] = "sparsify"
    primary: ClassVar[str | None] = "ratio"
    ratio: float = 0.5
    global_ranking: bool = True
    skip: tuple[str, ...] = ()
    sparsify_head: bool = False

    def validate(self) -> None:
        self.check_range("ratio", 0.0, 0.99)


def gzip_bytes(model: nn.Module) -> int:
    """Size of the weights after gzip: what sparsity saves on disk and over the wire."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return len(gzip.compress(save(state), compresslevel=6))


def _weights(module: nn.Module) -> list[torch.Tensor]:
    """The weight matrices of a Linear, Conv or recurrent layer (its input and recurrent ones)."""
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return [module.weight]
    if isinstance(module, nn.RNNBase):
        return [p for name, p in module.named_parameters() if name.startswith("weight_")]
    return []


def apply(config: SparsityConfig, candidate: Candidate, ctx: Context) -> Candidate:
    float_model = candidate.require_float("sparsify")
    start = time.perf_counter()
    model = copy_model(float_model)
    skipped = {id(m) for m in find_modules(model, config.skip)}
    head = head_name(model)
    if head and not config.sparsify_head:
        skipped |= {id(m) for m in find_modules(model, [head])}
    weights = [w for m in model.modules() if id(m) not in skipped for w in _weights(m)]
    if not weights:
        raise TechniqueError(
            "sparsify found no Linear, Conv or recurrent weights to sparsify outside the skipped "
            "layers."
        )
    with torch.no_grad():
        if config.global_ranking:
            magnitudes = torch.cat([w.abs().flatten() for w in weights])
            k = int(config.ratio * magnitudes.numel())
            threshold = magnitudes.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
            for w in weights:
                w[w.abs() <= threshold] = 0.0
        else:
            for w in weights:
                k = int(config.ratio * w.numel())
                if k > 0:
                    w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0.0
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    facts = {
        "sparsity": round(zeros / total, 4),
        "gzip_bytes_before": gzip_bytes(float_model),
        "gzip_bytes_after": gzip_bytes(model),
    }
    notes = (
        "unstructured zeros do not speed up dense runtimes (torch, onnxruntime); "
        "they shrink only the compressed artifact",
    )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=notes,
        facts=facts,
    )
    return candidate.with_step(step, model=model)


def space(trial: Trial) -> SparsityConfig:
    return SparsityConfig(ratio=round(trial.suggest_float("sparsify.ratio", 0.2, 0.9, step=0.1), 2))


TECHNIQUE = register(
    Technique(
        name="sparsify",
        config=SparsityConfig,
        apply=apply,
        space=space,
        summary="unstructured magnitude sparsity, permanent zeros: smaller when compressed, not faster",
        speeds_up="",
        reduces="nonzero",
        invalid={"ratio": -0.1},
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
    )
)
