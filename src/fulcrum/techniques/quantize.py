"""Quantization: the model leaves PyTorch as an int8 (or fp16-weight) ONNX graph for ONNX Runtime.

Settings follow what was measured fast on these machines (AVX-512 VNNI, see DESIGN.md):

- ``int8-static``: QDQ graph, *unsigned* activations and signed (per-channel) weights, calibrated on
  the workload's calibration split. ORT's default signed activations left most of a ResNet-18's
  convolutions unfused and slower than fp32. On a CPU without int8 dot products (AVX2 only: no
  VNNI, no AMX) weights are 7-bit (``reduce_range``): there ONNX Runtime's u8 x s8 kernels add
  pairs of products in int16 with saturation (``vpmaddubsw``), which cost the keywords DS-CNN
  7.7 points (its 1-channel first convolution saturated); with VNNI ``reduce_range`` only costs
  accuracy. A global average pool that the exporter wrote as ``ReduceMean`` is rewritten as
  ``GlobalAveragePool``, which ONNX Runtime runs in int8 (``QLinearGlobalAveragePool``) instead
  of in float between a DequantizeLinear and a QuantizeLinear.
- ``int8-dynamic``: weights int8, activations quantized at run time, for MatMul/Gemm (Linear
  layers, transformers) and LSTM (``DynamicQuantizeLSTM``), not convolutions: dynamic ones become
  ConvInteger, about 3x *slower* than fp32. ``int8-static`` quantizes LSTMs the same dynamic way
  (ONNX Runtime has no static int8 LSTM); GRUs and plain RNNs stay float on every runtime here,
  and the step's notes say so (``recurrent.quantize_notes``).
- ``fp16``: weights stored in half precision and cast back to fp32 on load: half the file, the
  same fp32 compute (no faster on CPU).

- ``int8-pt2e``: PyTorch's own static int8 (torchao pt2e, ``fulcrum.techniques.pt2e``), a
  ``torch.export`` program for the torch-compile target.

The result is an ONNX graph (or, for int8-pt2e, a program), so quantize is the last step.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fulcrum.errors import ConfigError, DataError, FulcrumError, TechniqueError, first_line
from fulcrum.progress import step as report_step
from fulcrum.runtimes import as_inputs, exported_bytes, quiet
from fulcrum.runtimes.base import int8_dot_products
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Scope,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    find_modules,
    register,
)
from fulcrum.techniques.graph_rewrites import gather_int4, global_pools, weights_to_fp16
from fulcrum.techniques.onnx_nodes import skipped_nodes, weight_nodes
from fulcrum.techniques.recurrent import quantize_lstms, quantize_notes

MODES = ("int8-static", "int8-dynamic", "fp16", "int8-pt2e")
ONNX_MODES = MODES[:3]  # those that make an ONNX graph (the others' runtimes say which they run)
CALIBRATIONS = ("minmax", "entropy", "percentile")
EMBEDDINGS = ("int8", "int4", "float")
# "fulcrum": the settings measured fast here; "ort": ONNX Runtime's own defaults, untouched;
# "ort-per-channel": those with per-channel weights, the one option users most often turn on
PRESETS = ("fulcrum", "ort", "ort-per-channel")


@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    """``mode``: int8-static (calibrated; conv nets), int8-dynamic (Linear-heavy models) or fp16
    (weights only: half the file).

    ``calibration`` and ``calib_batches`` apply to int8-static; ``skip`` names PyTorch layers
    ("classifier.3") that stay in float; ``embeddings`` (int8-dynamic) is how embedding tables
    (the weights of Gather nodes: a transformer's vocabulary) are stored: ``int8``, ``int4``
    (4-bit blocks of 32, ONNX Runtime's GatherBlockQuantized) or ``float``.
    """

    name: ClassVar[str] = "quantize"
    primary: ClassVar[str | None] = "mode"
    mode: str = "int8-static"
    calibration: str = "minmax"
    per_channel: bool = True
    calib_batches: int = 8
    skip: tuple[str, ...] = ()
    embeddings: str = "int8"
    preset: str = "fulcrum"

    def __post_init__(self) -> None:
        if isinstance(self.skip, list):  # from Python or TOML; a frozen config keeps a tuple
            object.__setattr__(self, "skip", tuple(self.skip))
        super().__post_init__()

    def validate(self) -> None:
        self.check_choice("mode", MODES)
        if self.mode == "int8-pt2e" and (
            self.preset != "fulcrum" or self.calibration != "minmax" or not self.per_channel
        ):
            raise ConfigError(
                "quantize:int8-pt2e calibrates min/max per channel (torchao's x86 defaults); "
                "calibration, per_channel and preset apply to the ONNX modes."
            )
        self.check_choice("calibration", CALIBRATIONS)
        self.check_choice("embeddings", EMBEDDINGS)
        self.check_choice("preset", PRESETS)
        if self.preset != "fulcrum" and self.mode == "fp16":
            raise ConfigError(
                "quantize:fp16 has no ONNX Runtime default to follow; use preset=fulcrum."
            )
        self.check_range("calib_batches", 1, 10000)
        if not isinstance(self.calib_batches, int):
            raise ConfigError(
                f"The 'calib_batches' parameter of quantize must be a whole number of batches. "
                f"Got {self.calib_batches!r} instead."
            )
        if not isinstance(self.skip, tuple) or not all(isinstance(s, str) for s in self.skip):
            raise ConfigError(
                "The 'skip' parameter of quantize must be a tuple of layer names, e.g. "
                f"('classifier.3',). Got {self.skip!r} instead."
            )


def apply(config: QuantizeConfig, candidate: Candidate, ctx: Context) -> Candidate:
    if candidate.quantized:
        raise TechniqueError(
            "quantize must be the last step of a recipe: this candidate is already quantized "
            f"({candidate.runtime} graph); remove the second quantize, or put quantize last."
        )
    if candidate.model is not None:  # an ONNX workload's skip names graph nodes instead
        find_modules(candidate.model, config.skip)
    if config.mode in ("int8-static", "int8-pt2e"):
        _check_calibration(ctx, config)
    if config.mode == "int8-pt2e":
        from fulcrum.techniques import pt2e

        return pt2e.apply(config, candidate, ctx)
    start = time.perf_counter()
    notes: list[str] = []
    facts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fulcrum-quantize-") as tmp, quiet():
        folder = Path(tmp)
        exported = folder / "float.onnx"
        if candidate.onnx is not None:  # a graph step (fuse) came first: quantize its graph
            exported.write_bytes(candidate.onnx)
        else:  # the exporter leaves the model's mode as it was
            exported.write_bytes(
                exported_bytes(candidate.require_float("quantize"), ctx.example_inputs)
            )
        if config.preset != "fulcrum":  # what a user who calls ONNX Runtime's quantizer gets
            graph = _load(exported)
            result = _ort_defaults(config, exported, ctx, folder)
            float_bytes = exported.stat().st_size
            exclude: list[str] = []
        else:
            graph, result, exclude = _quantized(config, exported, ctx, folder, notes, facts)
            float_bytes = exported.stat().st_size + sum(
                p.stat().st_size for p in folder.iterdir() if p.name.startswith("float.onnx.")
            )
    data = result.SerializeToString()
    weighted = weight_nodes(graph)
    left = weight_nodes(result)
    if config.mode == "int8-dynamic":
        convs = sum(op in ("Conv", "ConvTranspose") for op in left.values())
        if convs:
            notes.append(
                f"{convs} convolution(s) left in float: ONNX Runtime's dynamic int8 convolution "
                "(ConvInteger) measured ~3x slower than fp32 on the development machine (AVX-512 "
                "VNNI); use quantize:int8-static for conv layers"
            )
    if config.mode == "fp16":
        notes.append(
            "fp16 weights halve the artifact, but ONNX Runtime's CPU provider computes in fp32 "
            "(weights are cast back on load): not faster"
        )
    if config.mode != "fp16":
        notes += quantize_notes(result, config.mode)
    if exclude:
        notes.append(f"left in float as asked: {', '.join(config.skip)}")
    float_ops = dict(Counter(left.values()))
    unasked = {op: n for op, n in float_ops.items() if op not in ("Conv", "ConvTranspose")}
    if unasked and config.mode != "fp16":
        notes.append(
            "left in float: "
            + ", ".join(f"{n} {op}" for op, n in sorted(unasked.items()))
            + (" (as asked)" if exclude else " (ops this mode does not quantize)")
        )
    facts.update(
        nodes_quantized=len(weighted) - len(left),
        nodes_float=len(left),
        float_ops=float_ops,
        onnx_bytes=len(data),
        float_onnx_bytes=float_bytes,
        graph=True,
    )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts=facts,
    )
    return candidate.with_step(step, onnx=data, runtime="onnxruntime")


def _quantized(
    config: QuantizeConfig,
    exported: Path,
    ctx: Context,
    folder: Path,
    notes: list[str],
    facts: dict[str, Any],
) -> tuple[Any, Any, list[str]]:
    """Fulcrum's quantization of the exported float graph: (the prepared float graph, the
    quantized one, the nodes left in float as asked)."""
    source = _preprocess(exported, folder / "prepared.onnx", notes)
    graph = _load(source)
    exclude = skipped_nodes(graph, config.skip)
    if config.mode == "int8-static":
        graph, pools = global_pools(graph, exclude)
        if pools:
            facts["global_pools"] = pools
    if config.mode == "fp16":
        return graph, weights_to_fp16(graph, exclude, notes), exclude
    return graph, _quantize_int8(config, graph, exclude, ctx, folder, notes, facts), exclude


def _ort_defaults(config: QuantizeConfig, exported: Path, ctx: Context, folder: Path) -> Any:
    """ONNX Runtime's quantizers with their defaults, as a user who never heard of Fulcrum
    calls them (and as ``tools/peers.py`` does): ``quant_pre_process`` then ``quantize_static``
    (QDQ, signed 8-bit activations and weights, per-tensor, MinMax) on the calibration
    batches, or ``quantize_dynamic`` on the raw export. A search measures them beside its own
    candidates, so that its pick is never slower than what the runtime gives for free."""
    from onnxruntime import quantization as q  # (heavy: loaded when quantizing)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = folder / "default.onnx"
    per_channel = config.preset == "ort-per-channel"
    try:
        if config.mode == "int8-dynamic":
            q.quantize_dynamic(str(exported), str(target), per_channel=per_channel)
            return _load(target)
        prepared = folder / "default-prepared.onnx"
        with contextlib.chdir(folder):  # (scratch files of a failed symbolic inference)
            try:
                quant_pre_process(str(exported), str(prepared))
            except Exception:  # as a user would: quantize what was exported
                shutil.copyfile(exported, prepared)
        reader = _CalibrationReader(ctx.calib, _load(prepared), config.calib_batches)
        q.quantize_static(str(prepared), str(target), reader, per_channel=per_channel)
    except FulcrumError:
        raise
    except Exception as exc:  # what the user would meet too: this default is not available
        raise TechniqueError(
            f"ONNX Runtime's quantizer with preset={config.preset} fails on this graph "
            f"({first_line(exc, 200)}); use preset=fulcrum."
        ) from None
    return _load(target)


def mode_choice(modes: Sequence[str]) -> str:
    """The name of the choice of mode among ``modes``. A distribution's choices are fixed per
    name, and the targets of one search (or the probe) leave different modes in the space, so
    each set of choices has a name of its own; every ONNX mode, the plain one."""
    choices = tuple(m for m in MODES if m in modes)
    return "quantize.mode" if choices == ONNX_MODES else f"quantize.mode[{','.join(choices)}]"


def space(trial: Trial, modes: Sequence[str] = ONNX_MODES) -> QuantizeConfig:
    """Its ranges; ``modes`` narrows the modes drawn (a subset of ``MODES``, kept in its order,
    under the name ``mode_choice`` gives that set)."""
    choices = [m for m in MODES if m in modes]
    mode = trial.suggest_categorical(mode_choice(choices), choices)
    if mode in ("fp16", "int8-pt2e"):
        return QuantizeConfig(mode=mode)
    calibration = (
        trial.suggest_categorical("quantize.calibration", ["minmax", "percentile"])
        if mode == "int8-static"
        else "minmax"
    )
    per_channel = trial.suggest_categorical("quantize.per_channel", [True, False])
    embeddings = (
        trial.suggest_categorical("quantize.embeddings", ["int8", "int4"])
        if mode == "int8-dynamic"
        else "int8"
    )
    return QuantizeConfig(
        mode=mode, calibration=calibration, per_channel=per_channel, embeddings=embeddings
    )


def draw(trial: Trial, scope: Scope) -> QuantizeConfig:
    """The ranges of ``space`` over the modes the probe kept; static int8 with the first k of
    the layers int8 hurts most (the sensitivity analysis's fallback) left in float, k drawn
    from 0 to all of them."""
    config = space(trial, ONNX_MODES if scope.modes is None else scope.modes)
    if config.mode != "int8-static" or not scope.fallback:
        return config
    count = trial.suggest_int("quantize.fallback", 0, len(scope.fallback))
    return replace(config, skip=tuple(scope.fallback[:count])) if count else config


def warm(scope: Scope, kind: str) -> dict[str, Any] | None:
    """Quantization's part in a warm start: for a transformer, dynamic int8 with per-channel
    weights and 4-bit embedding tables (measured best on all-MiniLM-L6-v2), 8-bit ones for a
    shallower student (whose 4-bit lookup cost a tenth to a fifth of its time); otherwise
    static int8, with the layer int8 hurts most in float where the analysis found one. Where
    the probe left that mode out, its fastest kept mode; None where it kept none."""
    if scope.transformer:
        embeddings = "int8" if kind == "student" else "int4"
        params: dict[str, Any] = {
            "quantize.mode": "int8-dynamic",
            "quantize.per_channel": True,
            "quantize.embeddings": embeddings,
        }
    else:
        params = {
            "quantize.mode": "int8-static",
            "quantize.per_channel": True,
            "quantize.calibration": "minmax",
            **({"quantize.fallback": 1} if scope.fallback else {}),
        }
    modes = ONNX_MODES if scope.modes is None else scope.modes
    name, mode = mode_choice(modes), params.pop("quantize.mode")
    if mode in modes:
        return {name: mode, **params}
    return {name: modes[0]} if modes else None


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _preprocess(source: Path, target: Path, notes: list[str]) -> Path:
    """ONNX Runtime's recommended pre-processing: shape inference and graph clean-up.

    Its symbolic shape inference fails on some exports (the position slicing of transformers,
    ``Min(32, sequence)``); then the same clean-up is done with ONNX's own shape inference and
    ONNX Runtime's basic graph optimisations, and the note says so.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # auto_merge resolves the transformers position slicing; inside the temp folder, because
        # a failed symbolic inference leaves its scratch files in the working directory
        with contextlib.chdir(target.parent):
            quant_pre_process(str(source), str(target), auto_merge=True)
        return target
    except Exception as exc:
        reason = first_line(exc, 120)
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        model = onnx.shape_inference.infer_shapes(onnx.load(str(target)), data_prop=True)
        onnx.save(model, str(target))
    except Exception as exc:
        raise TechniqueError(
            f"quantize: the exported graph cannot be pre-processed for quantization "
            f"({reason}; then {first_line(exc, 120)}). Report this with `fulcrum env`."
        ) from None
    notes.append(
        f"ONNX Runtime's symbolic shape inference failed ({reason}); pre-processed with ONNX "
        "shape inference and ONNX Runtime's basic optimisations instead"
    )
    return target


def _check_calibration(ctx: Context, config: QuantizeConfig) -> None:
    message = (
        f"quantize:{config.mode} needs calibration data: the workload has no calib/train split; "
        "add one or use quantize:int8-dynamic"
    )
    if ctx.calib is None:
        raise ConfigError(message + ".")
    first = next(iter(ctx.calib), None)
    if first is None:
        raise ConfigError(message + " (its calibration split is empty).")
    given, expected = len(_batch_inputs(first)), len(ctx.example_inputs)
    if given != expected:
        raise DataError(
            f"quantize: calibration batches give {given} model input(s) but the example inputs "
            f"have {expected}; calibration batches must be (inputs, target) like the val split."
        )


def _batch_inputs(batch: Any) -> tuple[torch.Tensor, ...]:
    """The model inputs of an ``(inputs, target)`` batch; inputs is a tensor or a tuple."""
    if isinstance(batch, list | tuple) and len(batch) > 1:
        batch = batch[0]
    return as_inputs(batch)


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over the first ``limit`` calibration batches.

    It also has the length and ``set_range`` that ONNX Runtime's strided calibration asks for:
    ``static`` collects one batch at a time, so that the histogram calibrations (percentile,
    entropy) merge one batch's histogram into the next instead of stacking every batch's
    activations into one array, which fails when batches differ in shape (text padded to each
    batch's longest sentence).
    """

    def __init__(self, batches: Iterable[Any], graph: Any, limit: int) -> None:
        from onnx import helper

        initializers = {t.name for t in graph.graph.initializer}
        self.inputs = [
            (i.name, helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for i in graph.graph.input
            if i.name not in initializers
        ]
        self.batches, self.limit = batches, limit
        self.feeds: list[dict[str, np.ndarray]] | None = None
        self.start, self.end = 0, limit

    def _feeds(self) -> list[dict[str, np.ndarray]]:
        if self.feeds is None:
            self.feeds = []
            for batch in self.batches:
                if len(self.feeds) == self.limit:
                    break
                self.feeds.append(
                    {
                        name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)
                        for (name, dtype), x in zip(self.inputs, _batch_inputs(batch), strict=True)
                    }
                )
        return self.feeds

    @property
    def count(self) -> int:
        """How many calibration batches there are (at most ``limit``)."""
        return len(self._feeds())

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = self._feeds()
        if self.start >= min(self.end, len(feeds)):
            return None
        self.start += 1
        report_step("calibrating int8 (batches)", self.start, len(feeds))
        return feeds[self.start - 1]


def _quantize_int8(
    config: QuantizeConfig,
    graph: Any,
    exclude: list[str],
    ctx: Context,
    folder: Path,
    notes: list[str],
    facts: dict[str, Any],
) -> Any:
    import onnx
    from onnxruntime import quantization as q

    source, target = folder / "to_quantize.onnx", folder / "int8.onnx"
    onnx.save(graph, str(source))
    if config.mode == "int8-dynamic":
        # the dynamic quantizer rewrites each Gemm into a MatMul named "<gemm>_MatMul" first
        gemms = {n.name for n in graph.graph.node if n.op_type == "Gemm"}
        exclude = [*exclude, *(f"{name}_MatMul" for name in exclude if name in gemms)]
        if config.embeddings == "int4":
            graph = gather_int4(graph, exclude)
            onnx.save(graph, str(source))
        # with int4, the tables left as Gather (under INT4_MIN_ROWS rows) are stored in int8
        ops = ["MatMul", "Gemm", "Attention", "LSTM"]
        ops += ["Gather"] if config.embeddings != "float" else []
        q.quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=ops,
            per_channel=config.per_channel,
            reduce_range=False,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=exclude,
            # DefaultTensorType: a fused graph's contrib ops have no type information
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return _load(target)
    reader = _CalibrationReader(ctx.calib, graph, config.calib_batches)
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[config.calibration]
    # one batch per collection (ONNX Runtime strides every method, despite the option's name):
    # bounds calibration memory, and histograms need it (see the reader)
    options: dict[str, Any] = {"CalibStridedMinMax": 1}
    facts["reduce_range"] = not int8_dot_products()
    if facts["reduce_range"]:
        notes.append(
            "7-bit weights (reduce_range): this CPU has no int8 dot products (VNNI/AMX), and ONNX "
            "Runtime's 8-bit kernels saturate there; quantize on the deployment CPU"
        )
    try:
        static(source, target, reader, method, options, config, exclude)
    except ValueError as exc:
        if "finite-sized bins" in str(exc):  # numpy cannot bin float32's whole range
            raise TechniqueError(
                f"quantize:calibration={config.calibration} could not make a histogram of a "
                "tensor that spans float32's whole range (an unfused transformer's attention "
                "mask): put fuse before quantize, or use calibration=percentile."
            ) from None
        # ONNX Runtime's bias-scale adjustment compares arrays as scalars for per-channel weights
        # of some graphs (a scikit-learn MLP converted by skl2onnx): quantize without it
        if "truth value of an array" not in str(exc):
            raise
        options["QDQDisableWeightAdjustForInt32Bias"] = True
        static(source, target, reader, method, options, config, exclude)
        notes.append(
            "ONNX Runtime's weight-scale adjustment for int32 biases failed on this graph; "
            "quantized without it"
        )
    facts["calib_batches"] = reader.count
    if reader.count < config.calib_batches:
        notes.append(
            f"calibrated on all {reader.count} batch(es) of the calibration split "
            f"(calib_batches={config.calib_batches})"
        )
    lstms = folder / "int8-lstm.onnx"  # ONNX Runtime has no static int8 LSTM: a dynamic one
    return _load(lstms if quantize_lstms(target, lstms, exclude, config.per_channel) else target)


def static(
    source: Path,
    target: Path,
    reader: Any,
    method: Any,
    options: dict[str, Any],
    config: QuantizeConfig,
    exclude: list[str],
) -> None:
    """ONNX Runtime's static QDQ quantizer with the settings measured fast here (unsigned
    activations, signed per-channel weights), 7-bit weights where the CPU lacks VNNI."""
    from onnxruntime import quantization as q

    q.quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=config.per_channel,
        reduce_range=not int8_dot_products(),
        calibrate_method=method,
        nodes_to_exclude=exclude,
        extra_options=options,
    )


TECHNIQUE = register(
    Technique(
        name="quantize",
        config=QuantizeConfig,
        apply=apply,
        space=space,
        summary="int8 (static QDQ / dynamic) or fp16 weights as an ONNX graph for ONNX Runtime; last step",
        speeds_up="onnxruntime",
        reduces="artifact",
        invalid={"mode": "int4"},
        acts_on="onnx",
        contract_kinds=("cnn", "mlp", "bert", "lstm"),
        search=Search(
            role="quantization",
            order=10,
            draw=draw,
            # on a target that runs Fulcrum's ONNX quantization, where the probe kept a mode
            # that makes this model faster
            applies=lambda scope: scope.modes != (),
            use=(True, False),
            warm=warm,
        ),
    )
)
