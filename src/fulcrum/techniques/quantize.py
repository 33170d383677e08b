"""Quantization executed by ONNX Runtime: int8 static, int8 dynamic, and fp16 weights.

Settings follow what was measured fast on these machines (see DESIGN.md): static int8 as QDQ
with *unsigned* activations and per-channel signed weights (ORT's default signed activations
left most convolutions unfused and slower than fp32); dynamic int8 only for MatMul/Gemm
(dynamic convolutions become ConvInteger, about 3x slower than fp32); never ``reduce_range``.
fp16 stores weights in half precision and casts them back once at load: half the size, the
same speed. The result is an ONNX graph: quantization is the last step of a recipe.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from fulcrum.errors import ConfigError, TechniqueError
from fulcrum.runtimes import as_inputs, export_onnx, with_batch
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    find_modules,
    register,
)

MODES = ("int8-static", "int8-dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
WEIGHT_OPS = {
    "Conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "Gemm": (nn.Linear,),
    "MatMul": (nn.Linear,),
}


@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    """``mode``: int8-static (calibrated), int8-dynamic (Linear-heavy models) or fp16 weights."""

    name: ClassVar[str] = "quantize"
    primary: ClassVar[str | None] = "mode"
    mode: str = "int8-static"
    calibration: str = "minmax"
    per_channel: bool = True
    calib_batches: int = 8
    skip: tuple[str, ...] = ()

    def validate(self) -> None:
        self.check_choice("mode", MODES)
        self.check_choice("calibration", CALIBRATIONS)
        self.check_range("calib_batches", 1, 10000)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs and prints freely; keep the terminal for Fulcrum."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _Batches:
    """ORT's CalibrationDataReader over the first batches of the calibration split."""

    def __init__(self, loader: Any, names: Sequence[str], limit: int) -> None:
        self.feeds: list[dict[str, np.ndarray]] = []
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            self.feeds.append(
                {
                    n: np.ascontiguousarray(t.numpy())
                    for n, t in zip(names, as_inputs(x), strict=True)
                }
            )
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def _scopes(node: Any) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            with contextlib.suppress(ValueError, SyntaxError):
                return [str(s) for s in ast.literal_eval(prop.value)]
    return []


def skipped_nodes(proto: Any, model: nn.Module, names: Sequence[str]) -> list[str]:
    """ONNX node names that compute the PyTorch layers ``names`` (from the exporter's scopes)."""
    modules = dict(model.named_modules())
    found: list[str] = []
    for name in names:
        layer = modules[name]
        ops = [op for op, kinds in WEIGHT_OPS.items() if isinstance(layer, kinds)]
        inside = [
            n
            for n in proto.graph.node
            if any(s == name or s.startswith(name + ".") for s in _scopes(n))
        ]
        if not inside and "." in name:  # a conv fused with its batch norm carries the norm's scope
            parent = name.rpartition(".")[0]
            inside = [n for n in proto.graph.node if parent in _scopes(n) and n.op_type in ops]
        if not inside:
            raise ConfigError(
                f"quantize:skip={name} matches no operation of the exported graph; skip a Conv or Linear layer."
            )
        found.extend(n.name for n in inside)
    return found


def _fp16(proto: Any) -> tuple[Any, int]:
    """Store float32 weights as float16, each followed by a Cast back to float32."""
    from onnx import TensorProto, helper, numpy_helper

    converted = 0
    casts = []
    for init in proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2:
            continue  # shapes, scalars and biases stay as they are
        array = numpy_helper.to_array(init)
        half = numpy_helper.from_array(array.astype(np.float16), init.name + "_fp16")
        init.CopyFrom(half)
        casts.append(
            helper.make_node(
                "Cast",
                [init.name],
                [init.name[: -len("_fp16")]],
                to=TensorProto.FLOAT,
                name=f"cast_{init.name}",
            )
        )
        converted += 1
    for i, cast in enumerate(casts):
        proto.graph.node.insert(i, cast)
    return proto, converted


def apply(config: QuantizeConfig, candidate: Candidate, ctx: Context) -> Candidate:
    import onnx
    from onnxruntime import quantization as q

    if candidate.final:
        raise TechniqueError(
            "quantize is already applied: a recipe can quantize once, as its last step."
        )
    if config.mode == "int8-static" and ctx.calib is None:
        raise ConfigError(
            "quantize:int8-static needs calibration data: the workload has no calib or train split; "
            "add one, or use quantize:int8-dynamic."
        )
    find_modules(candidate.model, config.skip)
    start = time.perf_counter()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fulcrum-quant-") as tmp:
        folder = Path(tmp)
        source = export_onnx(
            candidate.model, with_batch(ctx.example_inputs, 1), folder / "float.onnx"
        )
        float_proto = onnx.load(str(source))
        exclude = skipped_nodes(float_proto, candidate.model, config.skip)
        if config.mode == "fp16":
            proto, converted = _fp16(float_proto)
            notes.append(
                "fp16 weights halve the file; ONNX Runtime on CPU still computes in fp32, so it is not faster"
            )
            facts: dict[str, Any] = {"weights_fp16": converted}
        else:
            prepared = folder / "prepared.onnx"
            try:
                with _quiet():
                    q.shape_inference.quant_pre_process(
                        str(source), str(prepared), skip_symbolic_shape=True
                    )
            except Exception:
                prepared = source  # pre-processing only helps; quantize the export as it is
            output = folder / "int8.onnx"
            names = [
                i.name
                for i in float_proto.graph.input
                if i.name not in {t.name for t in float_proto.graph.initializer}
            ]
            with _quiet():
                if config.mode == "int8-static":
                    reader = _Batches(ctx.calib, names, config.calib_batches)
                    if not reader.feeds:
                        raise ConfigError(
                            "quantize:int8-static: the calibration split has zero batches; give it data."
                        )
                    method = {
                        "minmax": q.CalibrationMethod.MinMax,
                        "entropy": q.CalibrationMethod.Entropy,
                        "percentile": q.CalibrationMethod.Percentile,
                    }[config.calibration]
                    q.quantize_static(
                        str(prepared),
                        str(output),
                        reader,
                        quant_format=q.QuantFormat.QDQ,
                        activation_type=q.QuantType.QUInt8,
                        weight_type=q.QuantType.QInt8,
                        per_channel=config.per_channel,
                        reduce_range=False,
                        calibrate_method=method,
                        nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    )
                else:
                    q.quantize_dynamic(
                        str(prepared),
                        str(output),
                        weight_type=q.QuantType.QInt8,
                        per_channel=config.per_channel,
                        reduce_range=False,
                        op_types_to_quantize=["MatMul", "Gemm"],
                        nodes_to_exclude=exclude,
                    )
            proto = onnx.load(str(output))
            ops = [n.op_type for n in proto.graph.node]
            convs = sum(op == "Conv" for op in [n.op_type for n in float_proto.graph.node])
            facts = {
                "quantize_ops": ops.count("QuantizeLinear") + ops.count("DynamicQuantizeLinear"),
                "dequantize_ops": ops.count("DequantizeLinear"),
                "integer_ops": sum(
                    op in ("MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul")
                    for op in ops
                ),
            }
            if config.mode == "int8-dynamic" and convs:
                notes.append(
                    f"{convs} convolutions left in float: dynamic int8 convolutions are slower than fp32 "
                    "here; use int8-static for convolutional models"
                )
        if exclude:
            notes.append(f"left in float: {', '.join(config.skip)}")
        data = proto.SerializeToString()
    facts["onnx_bytes"] = len(data)
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts=facts,
    )
    return candidate.with_step(step, onnx=data, runtime="onnxruntime")


def space(trial: Trial) -> QuantizeConfig:
    mode = trial.suggest_categorical("quantize.mode", list(MODES))
    if mode == "int8-static":
        return QuantizeConfig(
            mode=mode,
            calibration=trial.suggest_categorical("quantize.calibration", ["minmax", "percentile"]),
        )
    return QuantizeConfig(mode=mode)


TECHNIQUE = register(
    Technique(
        name="quantize",
        config=QuantizeConfig,
        apply=apply,
        space=space,
        summary="int8 static/dynamic and fp16 weights, executed by ONNX Runtime (last step of a recipe)",
        speeds_up="onnxruntime",
        reduces="artifact",
        invalid={"mode": "int4"},
    )
)
