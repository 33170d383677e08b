"""Transformer graph fusion: ONNX Runtime's transformer optimizer on the exported graph.

``onnxruntime.transformers.optimizer`` rewrites the subgraphs of a transformer into ONNX
Runtime's fused kernels — attention, LayerNorm with its residual add (SkipLayerNormalization),
GELU with its bias — which cut the per-node overhead that dominates a small encoder at batch 1.
The result runs on ONNX Runtime only (its contrib ops), so fuse is a graph step: only quantize
may follow it. What was fused is recorded, and a graph in which nothing fused is said to be so.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fulcrum.errors import ConfigError, TechniqueError, first_line
from fulcrum.runtimes import export_onnx, quiet, with_batch
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

LEVELS = (0, 1, 2, 99)
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
)


@dataclass(frozen=True)
class FuseConfig(TechniqueConfig):
    """``level``: ONNX Runtime's graph optimisation level applied with the fusions (0: the
    transformer fusions alone; 1 basic; 2 extended; 99 all, layout included)."""

    name: ClassVar[str] = "fuse"
    primary: ClassVar[str | None] = "level"
    level: int = 1

    def validate(self) -> None:
        if self.level not in LEVELS or isinstance(self.level, bool):
            raise ConfigError(
                f"The 'level' parameter of fuse must be one of {', '.join(map(str, LEVELS))}. "
                f"Got {self.level!r} instead."
            )


def transformer_shape(model: Any) -> tuple[str, int, int]:
    """(optimizer model type, attention heads, attention width) of the transformer inside
    ``model``: read from its attention modules (pruning may have changed them), else from its
    ``transformers`` config; heads is -1 when layers differ (heads pruned per layer), and
    (``"bert"``, 0, 0) lets the optimizer detect them from the graph."""
    kind, shapes = "bert", set()
    for module in model.modules():
        kind = str(getattr(getattr(module, "config", None), "model_type", None) or kind)
        count, width = (getattr(module, a, None) for a in ("num_attention_heads", "all_head_size"))
        if isinstance(count, int) and isinstance(width, int):
            shapes.add((count, width))
    kind = kind if kind in ("gpt2", "t5", "bart") else "bert"
    if len(shapes) > 1:
        return kind, -1, -1
    if shapes:
        return kind, *shapes.pop()
    for module in model.modules():
        config = getattr(module, "config", None)
        heads, hidden = (getattr(config, a, None) for a in ("num_attention_heads", "hidden_size"))
        if heads and hidden:
            return kind, int(heads), int(hidden)
    return kind, 0, 0


def has_attention(model: Any) -> bool:
    """Whether the model holds a transformer (what fuse acts on)."""
    return transformer_shape(model)[1] != 0


def fuse_graph(source: Path, model_type: str, heads: int, hidden: int, level: int) -> Any:
    """ONNX Runtime's transformer optimizer on the ONNX file ``source``; its OnnxModel.

    The embedding LayerNorm is not fused with the embedding lookups: fused, the tables could no
    longer be quantized on their own (they are a third of a small encoder's weights).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = False
    if heads < 0:  # one head count for every layer is all the attention fusion can take
        options.enable_attention = False
        heads = hidden = 0
    with quiet():
        return optimizer.optimize_model(
            str(source),
            model_type=model_type,
            num_heads=heads,
            hidden_size=hidden,
            opt_level=level,
            use_gpu=False,
            optimization_options=options,
        )


def eager_attention(model: Any) -> Any:
    """A copy of ``model`` whose ``transformers`` modules compute attention explicitly (eager):
    the fused scaled-dot-product kernel exports to a pattern ONNX Runtime does not fuse."""
    model = copy_model(model)
    for module in model.modules():
        setter = getattr(module, "set_attn_implementation", None)
        if callable(setter):
            with contextlib.suppress(Exception):
                setter("eager")
    return model


def apply(config: FuseConfig, candidate: Candidate, ctx: Context) -> Candidate:
    if candidate.quantized:
        raise TechniqueError(
            "fuse must come before quantize: fuse the float graph, then quantize it."
        )
    start = time.perf_counter()
    model_type, heads, hidden = transformer_shape(candidate.model)
    with tempfile.TemporaryDirectory(prefix="fulcrum-fuse-") as tmp:
        source = Path(tmp) / "float.onnx"
        if candidate.onnx is not None:
            source.write_bytes(candidate.onnx)
        else:
            with quiet():  # the TorchScript exporter warns about traced Python conditions
                export_onnx(
                    eager_attention(candidate.model),
                    with_batch(ctx.example_inputs, 1),
                    source,
                    exporter="torchscript",
                )
        try:
            optimized = fuse_graph(source, model_type, heads, hidden, config.level)
        except Exception as exc:
            raise TechniqueError(
                f"fuse: ONNX Runtime's transformer optimizer failed on this graph "
                f"({first_line(exc, 200)}); leave fuse out of the recipe."
            ) from None
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        target = Path(tmp) / "fused.onnx"
        optimized.save_model_to_file(str(target))  # also declares the contrib-op domain
        data = target.read_bytes()
    fused = {op: stats.get(op, 0) for op in FUSED_OPS if stats.get(op, 0)}
    notes = []
    if not fused:
        notes.append("nothing was fused: the graph has no transformer pattern ONNX Runtime knows")
    elif heads < 0:
        notes.append("attention was not fused: its layers have different head counts")
    elif not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        notes.append(
            "attention was not fused (ONNX Runtime's attention patterns do not match this "
            "export); the layer norms and activations were"
        )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts={"graph": True, "fused": fused, "model_type": model_type},
    )
    return candidate.with_step(step, onnx=data, runtime="onnxruntime")


def space(trial: Trial) -> FuseConfig:
    return FuseConfig(level=trial.suggest_categorical("fuse.level", [1, 2]))


TECHNIQUE = register(
    Technique(
        name="fuse",
        config=FuseConfig,
        apply=apply,
        space=space,
        summary="ONNX Runtime's transformer fusions (attention, SkipLayerNorm, BiasGelu); a graph step",
        speeds_up="onnxruntime",
        reduces="",
        invalid={"level": 3},
        acts_on="onnx",
        contract_kinds=("bert",),
        search=Search(  # a warm start's int8 of a transformer runs on its fused graph
            role="graph",
            order=10,
            draw=lambda trial, _scope: space(trial),
            applies=lambda scope: scope.transformer and scope.runtime == "onnxruntime",
            use=(True, False),
            warm=lambda _scope, _kind: {},
        ),
    )
)
