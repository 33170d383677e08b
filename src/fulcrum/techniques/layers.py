"""Layer dropping: a student with k of a transformer encoder's n layers, initialised from them.

DistilBERT keeps every other layer of BERT; TinyBERT maps student layer m to teacher layer
m x n / k. ``layers:keep=3`` keeps layers 1, 3 and 5 of a 6-layer encoder (the uniform mapping,
ending with the last layer); ``layers:indices=0+2+4`` keeps a chosen list. The rest of the model
(embeddings, pooling, head) is unchanged, the config says the new depth, and the result is still
a ``transformers`` model that exports to ONNX and quantizes like the original. Recovery
(distillation) follows in a recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fulcrum.errors import ConfigError
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    copy_model,
    register,
)


@dataclass(frozen=True)
class LayersConfig(TechniqueConfig):
    """Keep ``keep`` layers (or ``ratio`` of them), evenly spaced, or exactly ``indices``."""

    name: ClassVar[str] = "layers"
    primary: ClassVar[str | None] = "keep"
    keep: int | None = None
    ratio: float | None = None
    indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.indices, list | tuple):  # recipe text gives strings: "0+2+4"
            numbers = tuple(
                int(i) if isinstance(i, str) and i.isdigit() else i for i in self.indices
            )
            object.__setattr__(self, "indices", numbers)
        super().__post_init__()

    def validate(self) -> None:
        given = [k for k in ("keep", "ratio", "indices") if getattr(self, k) not in (None, ())]
        if len(given) > 1:
            raise ConfigError(
                f"layers takes one of keep, ratio or indices; got {', '.join(given)}."
            )
        if self.keep is not None:
            self.check_range("keep", 1, 10_000)
        if self.ratio is not None:
            self.check_range("ratio", 0.0, 1.0, low_open=True)
        if not all(isinstance(i, int) and i >= 0 for i in self.indices):
            raise ConfigError(
                f"The 'indices' parameter of layers must be layer numbers >= 0, e.g. 0+2+4. "
                f"Got {self.indices!r} instead."
            )


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding a transformer encoder's layer list, and the list's attribute name."""
    for module in model.modules():
        config = getattr(module, "config", None)
        depth = getattr(config, "num_hidden_layers", None)
        for attribute in ("layer", "layers"):
            stack = getattr(module, attribute, None)
            if isinstance(stack, nn.ModuleList) and depth == len(stack):
                return module, attribute
    found = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.ModuleList)})
    raise ConfigError(
        f"layers needs a transformer encoder (a `transformers` model whose config counts its "
        f"layers); {type(model).__name__} has "
        + (f"only layer lists {', '.join(found)} without such a config" if found else "none")
        + "."
    )


def chosen(config: LayersConfig, depth: int) -> list[int]:
    if config.indices:
        missing = [i for i in config.indices if i >= depth]
        if missing:
            raise ConfigError(
                f"layers: layer {missing[0]} does not exist; the encoder has {depth} layers "
                f"(0 to {depth - 1})."
            )
        return sorted(set(config.indices))
    keep = config.keep if config.keep is not None else max(1, round(depth * (config.ratio or 0.5)))
    if keep > depth:
        raise ConfigError(
            f"layers: keep={keep}, but the encoder has only {depth} layers; keep at most {depth}."
        )
    return [int((i + 1) * depth / keep) - 1 for i in range(keep)]


def keep_layers_(model: nn.Module, kept: list[int]) -> None:
    """Keep only the encoder layers ``kept`` of ``model``, in place (config and numbering too)."""
    holder, attribute = encoder_layers(model)
    stack = getattr(holder, attribute)
    setattr(holder, attribute, nn.ModuleList([stack[i] for i in kept]))
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    for settings in configs.values():  # one config object is often shared by several modules
        if getattr(settings, "num_hidden_layers", None) is not None:
            settings.num_hidden_layers = len(kept)
            pruned = getattr(settings, "pruned_heads", None) or {}  # renumbered with the layers
            if pruned:
                settings.pruned_heads = {
                    new: pruned[old] for new, old in enumerate(kept) if old in pruned
                }
    for position, layer in enumerate(getattr(holder, attribute)):
        for sub in layer.modules():  # attention layers number themselves (for KV caches)
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = position


def apply(config: LayersConfig, candidate: Candidate, ctx: Context) -> Candidate:
    start = time.perf_counter()
    model = copy_model(candidate.require_float("layers"))
    holder, attribute = encoder_layers(model)
    stack = getattr(holder, attribute)
    kept = chosen(config, len(stack))
    keep_layers_(model, kept)
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=("recover with distill: the kept layers were trained to feed the dropped ones",),
        facts={"layers_kept": kept, "layers_before": len(stack)},
    )
    return candidate.with_step(step, model=model.eval())


def space(trial: Trial) -> LayersConfig:
    return LayersConfig(ratio=trial.suggest_categorical("layers.ratio", [0.33, 0.5, 0.67]))


def warm_params(ratio: float) -> dict[str, float]:
    """A shallower student's parameters in a warm start (``heads`` builds its students on it)."""
    return {"layers.ratio": ratio}


TECHNIQUE = register(
    Technique(
        name="layers",
        config=LayersConfig,
        apply=apply,
        space=space,
        summary="keep k of a transformer encoder's layers (DistilBERT / TinyBERT students)",
        speeds_up="torch, onnxruntime",
        reduces="params",
        invalid={"keep": 0},
        contract_kinds=("bert",),
        search=Search(  # a shallower student of the same encoder
            role="structural",
            order=10,
            draw=lambda trial, _scope: space(trial),
            applies=lambda scope: scope.transformer and not scope.graph_only,
        ),
    )
)
