"""Quantization: the model leaves PyTorch as an int8 (or fp16-weight) ONNX graph for ONNX Runtime.

Settings follow what was measured fast on these machines (AVX-512 VNNI, see DESIGN.md):

- ``int8-static``: QDQ graph, *unsigned* activations and signed (per-channel) weights, calibrated on
  the workload's calibration split. ORT's default signed activations left most of a ResNet-18's
  convolutions unfused and slower than fp32; ``reduce_range`` only costs accuracy with VNNI.
- ``int8-dynamic``: weights int8, activations quantized at run time, for MatMul/Gemm only (Linear
  layers, transformers): dynamic convolutions become ConvInteger, about 3x *slower* than fp32.
- ``fp16``: weights stored in half precision and cast back to fp32 on load: half the file, the
  same fp32 compute (no faster on CPU).

torchao's PyTorch-native path (``pt2e_quantize``) works and is fast once compiled, but a candidate
cannot yet carry, save and reload a compiled ``torch.export`` program, so it is a library function
and not a mode: ``quantize:int8-pt2e`` is refused when the recipe is read, never after work.

The result is an ONNX graph, so quantize is the last step of a recipe.
"""

from __future__ import annotations

import ast
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fulcrum.errors import ConfigError, DataError, TechniqueError, first_line, require
from fulcrum.runtimes import as_inputs, exported_bytes, quiet, with_batch
from fulcrum.techniques.base import (
    Candidate,
    Context,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    copy_model,
    find_modules,
    register,
)

MODES = ("int8-static", "int8-dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
EMBEDDINGS = ("int8", "int4", "float")
# a 1-D float initializer this large is a weight (an embedding row, a norm scale), not a constant
FP16_MIN_ELEMENTS = 1024


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

    def __post_init__(self) -> None:
        if isinstance(self.skip, list):  # from Python or TOML; a frozen config keeps a tuple
            object.__setattr__(self, "skip", tuple(self.skip))
        super().__post_init__()

    def validate(self) -> None:
        if self.mode == "int8-pt2e":
            raise ConfigError(
                "quantize:int8-pt2e is not a recipe step yet (a candidate cannot carry a compiled "
                "PyTorch program); use quantize:int8-static, ONNX Runtime's int8, measured as fast."
            )
        self.check_choice("mode", MODES)
        self.check_choice("calibration", CALIBRATIONS)
        self.check_choice("embeddings", EMBEDDINGS)
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
    if config.mode == "int8-static":
        _check_calibration(ctx, config)
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
        source = _preprocess(exported, folder / "prepared.onnx", notes)
        graph = _load(source)
        exclude = _skipped_nodes(graph, config.skip)
        if config.mode == "fp16":
            result = _weights_to_fp16(graph, exclude, notes)
        else:
            result = _quantize_int8(config, graph, exclude, ctx, folder, notes, facts)
        float_bytes = exported.stat().st_size + sum(
            p.stat().st_size for p in folder.iterdir() if p.name.startswith("float.onnx.")
        )
    data = result.SerializeToString()
    weighted = _weight_nodes(graph)
    left = _weight_nodes(result)
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


def space(trial: Trial) -> QuantizeConfig:
    mode = trial.suggest_categorical("quantize.mode", ["int8-static", "int8-dynamic", "fp16"])
    if mode == "fp16":
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


def pt2e_quantize(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    calib_batches: Iterable[tuple[torch.Tensor, ...]],
) -> nn.Module:
    """Static int8 in PyTorch: torchao pt2e with the x86 Inductor quantizer, then ``torch.compile``.

    ``calib_batches`` yields model inputs as tuples. Compilation happens on the first call of each
    batch size (seconds; uncompiled, the int8 graph is slower than fp32). Each process has a
    recompile limit: call ``torch._dynamo.reset()`` between many models.
    """
    inputs = with_batch(example_inputs, 2)  # with 1, torch.export fixes the batch axis to 1
    batch = torch.export.Dim("batch", min=1, max=65536)
    with quiet():  # torchao logs the optional kernels it cannot load on import
        require("torchao", "torchao")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        exported = torch.export.export(
            copy_model(model), inputs, dynamic_shapes=tuple({0: batch} for _ in inputs)
        ).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch_inputs in calib_batches:
                prepared(*batch_inputs)
        converted = convert_pt2e(prepared)
    return _FrozenCompiled(converted)


class _FrozenCompiled(nn.Module):
    """``torch.compile`` with Inductor's freezing, which turns the int8 graph into oneDNN kernels.

    Freezing must be on whenever a call compiles (``options={"freezing": True}`` fails on the
    int8 weight pre-packing), so every call sets it. ``dynamic=False``: with a symbolic batch,
    the fused int8 convolution fails a stride check at run time (torch 2.13, torchao 0.18); each
    batch size compiles once instead.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, *inputs: torch.Tensor) -> Any:
        import torch._inductor.config

        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*inputs)


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
            graph = _gather_int4(graph, exclude)
            onnx.save(graph, str(source))
        ops = ["MatMul", "Gemm", "Attention", *(["Gather"] if config.embeddings == "int8" else [])]
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
    return _load(target)


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
    activations, signed per-channel weights, no reduce_range)."""
    from onnxruntime import quantization as q

    q.quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=config.per_channel,
        reduce_range=False,
        calibrate_method=method,
        nodes_to_exclude=exclude,
        extra_options=options,
    )


def _gather_int4(graph: Any, exclude: Sequence[str]) -> Any:
    """Embedding tables (Gather weights) in 4-bit blocks of 32 along the hidden axis."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copied = onnx.ModelProto()
    copied.CopyFrom(graph)  # the quantizer rewrites the model it is given
    graph = copied
    initializers = {t.name for t in graph.graph.initializer}
    tables = [
        n.name
        for n in graph.graph.node
        if n.op_type == "Gather" and n.input[0] in initializers and n.name not in exclude
    ]
    if not tables:
        return graph
    quantizer = MatMulNBitsQuantizer(
        graph,
        bits=4,
        block_size=32,
        is_symmetric=False,
        accuracy_level=4,
        op_types_to_quantize=("Gather",),
        nodes_to_exclude=list(exclude),
        quant_axes=(("Gather", 1),),
    )
    quantizer.process()
    return quantizer.model.model


def _module_scopes(node: Any) -> list[str]:
    """The qualified names of the PyTorch modules a node was exported from, outermost first."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":  # the dynamo exporter: [..., op name]
            with contextlib.suppress(ValueError, SyntaxError):
                return [str(s) for s in ast.literal_eval(prop.value)[:-1]]
    return node.name.split("/")[1:-1]  # the TorchScript exporter: "/features/features.0/Conv"


def _skipped_nodes(graph: Any, names: Sequence[str]) -> list[str]:
    """ONNX node names that compute the PyTorch layers ``names``.

    A node belongs to a layer when the layer is in its module scopes, or when it reads one of the
    layer's parameters: a convolution fused with its batch norm carries the norm's scope but
    keeps the convolution's weight name.
    """
    initializers = {t.name for t in graph.graph.initializer}
    found: list[str] = []
    for name in names:
        prefix = name + "."
        nodes = [
            n.name
            for n in graph.graph.node
            if name in _module_scopes(n)
            or n.name == name  # a node of an ONNX workload's own graph
            or any(i in initializers and i.startswith(prefix) for i in n.input)
        ]
        if not nodes:
            raise ConfigError(
                f"quantize: skip layer {name!r} has no operation of its own in the exported graph "
                "(it has no weights or was fused away); skip its Conv or Linear layer instead."
            )
        found.extend(n for n in nodes if n not in found)
    return found


def _weight_nodes(graph: Any) -> dict[str, str]:
    """Nodes (name -> op type) that read a float32 weight (an initializer of 2 or more dims)."""
    from onnx import TensorProto

    weights = {
        t.name
        for t in graph.graph.initializer
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2
    }
    return {n.name: n.op_type for n in graph.graph.node if any(i in weights for i in n.input)}


def _weights_to_fp16(graph: Any, exclude: Sequence[str], notes: list[str]) -> Any:
    """float32 weights stored as float16, each cast back to float32 in front of its users.

    The graph's inputs, outputs and every op stay float32. Shape constants, small vectors, the
    weights of skipped nodes and weights beyond float16's range are left as they are.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(graph)
    keep = {i for n in result.graph.node if n.name in exclude for i in n.input}
    keep |= {i.name for i in result.graph.input}
    limit = float(np.finfo(np.float16).max)
    casts, out_of_range = [], []
    for init in result.graph.initializer:
        elements = int(np.prod(init.dims))
        if (
            init.data_type != TensorProto.FLOAT
            or init.name in keep
            or (len(init.dims) < 2 and elements < FP16_MIN_ELEMENTS)
        ):
            continue
        array = numpy_helper.to_array(init)
        if array.size and float(np.abs(array).max()) > limit:
            out_of_range.append(init.name)
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float16), f"{name}__fp16"))
        casts.append(
            helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32"
            )
        )
    if out_of_range:
        notes.append(f"kept in fp32 (values beyond fp16's range): {', '.join(out_of_range)}")
    nodes = [*casts, *result.graph.node]
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


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
        contract_kinds=("cnn", "mlp", "bert"),
    )
)
