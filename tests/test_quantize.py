"""Quantized models stay close to their float reference, shrink, and refuse bad input."""

import onnx
import pytest
import torch

from fulcrum.compression import onnx_bytes
from fulcrum.errors import ConfigError, TechniqueError
from fulcrum.runtimes import OnnxModel
from fulcrum.techniques import Candidate, Context
from fulcrum.techniques.quantize import QuantizeConfig, apply
from fulcrum.testing import tiny_cnn, tiny_context, tiny_mlp


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def weight_bytes(data: bytes) -> int:
    """Bytes of a graph's initializers: on tiny models names and metadata dominate the file."""
    from onnx import numpy_helper

    return sum(
        numpy_helper.to_array(t).nbytes for t in onnx.load_from_string(data).graph.initializer
    )


def outputs(model, candidate, shape):
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        reference = model(x)
    return reference, OnnxModel(candidate.onnx, threads=1)(x)


# 8-bit quantization noise on well-calibrated activations lands around 30-40 dB; 20 dB (1% of the
# signal power) and a cosine of 0.99 leave room for tiny random models while catching broken
# scales, which give single-digit SQNR.
@pytest.mark.parametrize(
    ("kind", "factory", "shape", "mode"),
    [
        ("cnn", tiny_cnn, (3, 8, 8), "int8-static"),
        ("mlp", tiny_mlp, (16,), "int8-static"),
        ("mlp", tiny_mlp, (16,), "int8-dynamic"),
    ],
)
def test_int8_stays_close_to_float_and_shrinks(kind, factory, shape, mode):
    model = factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    candidate = apply(QuantizeConfig(mode=mode), Candidate(model=model), tiny_context(kind, model))
    reference, approx = outputs(model, candidate, shape)
    assert sqnr_db(reference, approx) > 20
    assert torch.nn.functional.cosine_similarity(reference, approx, dim=1).mean() > 0.99
    float_bytes = weight_bytes(onnx_bytes(Candidate(model=model), (torch.zeros(1, *shape),)))
    assert (
        weight_bytes(candidate.onnx) < 0.35 * float_bytes
    )  # int8 weights, float32 biases and scales
    assert candidate.runtime == "onnxruntime" and candidate.final
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_halves_the_file_and_matches_closely():
    model = tiny_mlp()
    candidate = apply(
        QuantizeConfig(mode="fp16"), Candidate(model=model), tiny_context("mlp", model)
    )
    reference, approx = outputs(model, candidate, (16,))
    assert torch.allclose(reference, approx, rtol=1e-2, atol=1e-3)
    ratio = weight_bytes(candidate.onnx) / weight_bytes(
        onnx_bytes(Candidate(model=model), (torch.zeros(1, 16),))
    )
    assert 0.45 < ratio < 0.55
    assert "not faster" in candidate.steps[-1].notes[0]


def test_dynamic_int8_leaves_convolutions_in_float_and_says_so():
    model = tiny_cnn()
    candidate = apply(
        QuantizeConfig(mode="int8-dynamic"), Candidate(model=model), tiny_context("cnn", model)
    )
    ops = {n.op_type for n in onnx.load_from_string(candidate.onnx).graph.node}
    assert "ConvInteger" not in ops and "Conv" in ops
    assert "convolutions left in float" in candidate.steps[-1].notes[0]


def test_skipped_layer_stays_float():
    model = tiny_mlp()
    candidate = apply(
        QuantizeConfig(mode="int8-static", skip=("4",)),
        Candidate(model=model),
        tiny_context("mlp", model),
    )
    graph = onnx.load_from_string(candidate.onnx).graph
    producers = {o: n for n in graph.node for o in n.output}
    gemms = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    quantized = [
        any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
            for i in n.input[1:2]
        )
        for n in gemms
    ]
    assert quantized.count(False) == 1 and quantized.count(True) == 2


def test_bad_input():
    model = tiny_mlp()
    ctx = tiny_context("mlp", model)
    with pytest.raises(ConfigError, match="Did you mean 'int8-static'"):
        QuantizeConfig(mode="int8-statc")
    with pytest.raises(ConfigError, match="calib_batches"):
        QuantizeConfig(calib_batches=0)
    with pytest.raises(ConfigError, match="needs calibration data"):
        apply(
            QuantizeConfig(),
            Candidate(model=model),
            Context(task="multiclass", example_inputs=ctx.example_inputs),
        )
    with pytest.raises(ConfigError, match="layer 'nope' is not in the model"):
        apply(QuantizeConfig(skip=("nope",)), Candidate(model=model), ctx)
    once = apply(QuantizeConfig(mode="fp16"), Candidate(model=model), ctx)
    with pytest.raises(TechniqueError, match="quantize once"):
        apply(QuantizeConfig(), once, ctx)
