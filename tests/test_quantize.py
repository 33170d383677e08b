"""Quantized graphs stay close to their float model, shrink, keep skipped layers float, refuse bad input."""

from __future__ import annotations

import onnx
import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum.compression import onnx_bytes, parse_recipe
from fulcrum.errors import ConfigError, TechniqueError
from fulcrum.runtimes import OnnxModel
from fulcrum.techniques.base import Candidate, Context, Step
from fulcrum.techniques.quantize import TECHNIQUE, QuantizeConfig, apply, space
from fulcrum.testing import check_technique

# 8-bit quantization noise on well-calibrated activations is ~30-40 dB SQNR (each uint8 step adds
# noise ~48 dB below a full-scale signal, and real signals use part of the range, through a few
# layers). 20 dB (noise at 1% of the signal power) and a cosine of 0.99 leave room for tiny
# random models, while a wrong scale, zero point or calibration gives single-digit SQNR.
MIN_SQNR_DB, MIN_COSINE = 20.0, 0.99


class ConvNet(nn.Module):
    """Conv + BatchNorm blocks (folded into the convs on export) and a Linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def structured(shape: tuple[int, ...], n: int, seed: int, classes: int = 4) -> TensorDataset:
    """Noise around one fixed random template per class: inputs with structure, like real data."""
    templates = torch.randn(classes, *shape, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return TensorDataset(templates[y] + 0.5 * torch.randn(n, *shape, generator=g), y)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():  # real running statistics, so the folded BatchNorms matter
        model.train()
        for x, _ in DataLoader(structured((3, 8, 8), 64, seed=7), batch_size=16):
            model(x)
    return model.eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)
    ).eval()


def context(shape: tuple[int, ...], calib: bool = True) -> Context:
    x, y = structured(shape, 64, seed=0).tensors
    loader = DataLoader(TensorDataset(x, y), batch_size=16) if calib else None
    return Context(task="multiclass", example_inputs=(x[:1],), calib=loader, threads=2)


def compare(model: nn.Module, data: bytes, shape: tuple[int, ...]) -> tuple[float, float]:
    """SQNR (dB) and mean cosine similarity of the ONNX graph's outputs to the float model's."""
    x = structured(shape, 64, seed=1).tensors[0]  # unseen by calibration
    with torch.no_grad():
        reference = model(x)
    approx = OnnxModel(data, threads=2)(x)
    sqnr = 10 * torch.log10(reference.pow(2).sum() / (reference - approx).pow(2).sum())
    cosine = nn.functional.cosine_similarity(reference, approx, dim=1).mean()
    return float(sqnr), float(cosine)


def float_bytes(model: nn.Module, shape: tuple[int, ...]) -> int:
    return len(onnx_bytes(Candidate(model=model), (torch.zeros(1, *shape),)))


def weight_is_dequantized(graph: onnx.GraphProto, weight: str) -> bool:
    """True when the node reading ``weight`` gets it through a DequantizeLinear (int8 storage)."""
    producers = {out: node for node in graph.node for out in node.output}
    readers = [n for n in graph.node if weight in n.input]
    if readers:  # the float initializer is read directly: not quantized
        return False
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    return any(producers.get(n.input[0]) is None and weight in n.input[0] for n in dequantize)


def test_static_int8_conv_net_is_close_small_and_leaves_the_model_alone():
    model = conv_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    candidate = apply(QuantizeConfig(), Candidate(model=model), context((3, 8, 8)))

    sqnr, cosine = compare(model, candidate.onnx, (3, 8, 8))
    assert sqnr > MIN_SQNR_DB and cosine > MIN_COSINE
    assert len(candidate.onnx) < 0.35 * float_bytes(model, (3, 8, 8))
    assert candidate.runtime == "onnxruntime" and candidate.final
    assert candidate.model is model  # the float model stays for reference; it was not changed
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    facts = candidate.steps[-1].facts
    assert facts["nodes_quantized"] == 4 and facts["nodes_float"] == 0
    assert facts["calib_batches"] == 4 and facts["onnx_bytes"] == len(candidate.onnx)
    graph = onnx.load_from_string(candidate.onnx).graph
    for name in ("body.0.weight", "body.3.weight", "body.6.weight", "head.weight"):
        assert weight_is_dequantized(graph, name)
    weights = [t for t in graph.initializer if len(t.dims) >= 2]
    assert [t.data_type for t in weights] == [onnx.TensorProto.INT8] * 4  # signed weights
    scales = [t for t in graph.initializer if t.name.endswith("weight_scale")]
    assert sorted(int(t.dims[0]) for t in scales) == [4, 32, 64, 64]  # one per output channel
    activation_zero_points = [
        t for t in graph.initializer if t.name.endswith("zero_point") and not t.dims
    ]
    assert activation_zero_points  # unsigned activations: the fast int8 kernels here
    assert {t.data_type for t in activation_zero_points} == {onnx.TensorProto.UINT8}


def test_dynamic_int8_mlp_is_close_and_small():
    model = mlp()
    candidate = apply(QuantizeConfig(mode="int8-dynamic"), Candidate(model=model), context((32,)))
    sqnr, cosine = compare(model, candidate.onnx, (32,))
    assert sqnr > MIN_SQNR_DB and cosine > MIN_COSINE
    assert len(candidate.onnx) < 0.35 * float_bytes(model, (32,))
    ops = {n.op_type for n in onnx.load_from_string(candidate.onnx).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert candidate.steps[-1].facts["nodes_quantized"] == 3
    assert candidate.steps[-1].notes == ()


def test_dynamic_int8_leaves_convolutions_in_float_and_says_so():
    model = conv_net()
    candidate = apply(
        QuantizeConfig(mode="int8-dynamic"), Candidate(model=model), context((3, 8, 8))
    )
    ops = [n.op_type for n in onnx.load_from_string(candidate.onnx).graph.node]
    assert "ConvInteger" not in ops and ops.count("Conv") == 3 and "MatMulInteger" in ops
    step = candidate.steps[-1]
    assert step.facts["nodes_float"] == 3 and step.facts["float_ops"] == {"Conv": 3}
    assert any("3 convolution(s) left in float" in note for note in step.notes)


def test_fp16_halves_the_artifact_and_keeps_float32_interfaces():
    model = mlp()
    candidate = apply(QuantizeConfig(mode="fp16"), Candidate(model=model), context((32,)))
    x = structured((32,), 64, seed=1).tensors[0]
    with torch.no_grad():
        reference = model(x)
    approx = OnnxModel(candidate.onnx, threads=2)(x)
    assert approx.dtype == torch.float32
    assert (reference - approx).abs().max() < 1e-2 * reference.abs().max()
    assert 0.45 < len(candidate.onnx) / float_bytes(model, (32,)) < 0.6
    graph = onnx.load_from_string(candidate.onnx).graph
    half = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert len(half) == 3  # the three weight matrices; biases stay float32
    readers = [n for n in graph.node if set(n.input) & half]
    assert readers and all(n.op_type == "Cast" for n in readers)
    assert any("not faster" in note for note in candidate.steps[-1].notes)


def test_two_input_model_calibrates_on_tuple_batches():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 64), nn.Linear(16, 64)
            self.out = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.a(x) + self.b(z)))

    torch.manual_seed(0)
    model = Pair().eval()
    x, y = structured((16,), 64, seed=0).tensors
    z = structured((16,), 64, seed=3).tensors[0]
    batches = [((xb, zb), yb) for xb, zb, yb in DataLoader(TensorDataset(x, z, y), batch_size=16)]
    ctx = Context(task="multiclass", example_inputs=(x[:1], z[:1]), calib=batches, threads=2)
    candidate = apply(QuantizeConfig(calib_batches=2), Candidate(model=model), ctx)
    assert candidate.steps[-1].facts["calib_batches"] == 2
    # the same function with one input (x and z concatenated), calibrated on the same samples:
    # tuple batches must calibrate as well as plain ones
    single = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        single[0].weight.copy_(torch.cat([model.a.weight, model.b.weight], dim=1))
        single[0].bias.copy_(model.a.bias + model.b.bias)
        single[2].load_state_dict(model.out.state_dict())
    xz = torch.cat([x, z], dim=1)
    plain = [(xb, yb) for xb, yb in DataLoader(TensorDataset(xz, y), batch_size=16)]
    ctx_single = Context(task="multiclass", example_inputs=(xz[:1],), calib=plain, threads=2)
    reference_int8 = apply(QuantizeConfig(calib_batches=2), Candidate(model=single), ctx_single)
    with torch.no_grad():
        reference = model(x, z)
    cosine = nn.functional.cosine_similarity(
        reference, OnnxModel(candidate.onnx, threads=2)(x, z), dim=1
    ).mean()
    cosine_single = nn.functional.cosine_similarity(
        reference, OnnxModel(reference_int8.onnx, threads=2)(xz), dim=1
    ).mean()
    assert cosine > 0.95
    assert cosine > cosine_single - 0.01


def test_skipped_layers_stay_float():
    model = conv_net()
    # "body.3" is a conv that the exporter fuses with its BatchNorm "body.4": the fused node
    # carries the norm's scope, so it is found through the conv's weight name
    config = QuantizeConfig(skip=("body.3", "head"))
    candidate = apply(config, Candidate(model=model), context((3, 8, 8)))
    graph = onnx.load_from_string(candidate.onnx).graph
    assert not weight_is_dequantized(graph, "body.3.weight")
    assert not weight_is_dequantized(graph, "head.weight")
    assert weight_is_dequantized(graph, "body.0.weight")
    assert weight_is_dequantized(graph, "body.6.weight")
    step = candidate.steps[-1]
    assert step.facts["nodes_float"] == 2 and step.facts["nodes_quantized"] == 2
    assert any("body.3, head" in note for note in step.notes)
    fp16 = apply(
        QuantizeConfig(mode="fp16", skip=("head",)), Candidate(model=model), context((3, 8, 8))
    )
    floats = {
        t.name
        for t in onnx.load_from_string(fp16.onnx).graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    }
    assert "head.weight" in floats and "body.0.weight" not in floats


def test_quantization_prints_nothing(capfd):
    model = mlp()
    capfd.readouterr()
    apply(QuantizeConfig(calibration="percentile"), Candidate(model=model), context((32,)))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "int8-statc"}, "Did you mean 'int8-static'"),
        ({"mode": "int4"}, "must be one of"),
        ({"calibration": "kl"}, "'calibration' parameter"),
        ({"calib_batches": 0}, "'calib_batches' parameter"),
        ({"calib_batches": 10001}, "'calib_batches' parameter"),
        ({"calib_batches": 2.5}, "whole number"),
        ({"skip": "head"}, "tuple of layer names"),
    ],
)
def test_invalid_configs_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        QuantizeConfig(**values)
    assert "\n" not in str(error.value)


def test_bad_inputs_to_apply():
    model = mlp()
    with pytest.raises(ConfigError, match=r"needs calibration data.*quantize:int8-dynamic"):
        apply(QuantizeConfig(), Candidate(model=model), context((32,), calib=False))
    empty = Context(task="multiclass", example_inputs=(torch.zeros(1, 32),), calib=[])
    with pytest.raises(ConfigError, match="calibration split is empty"):
        apply(QuantizeConfig(), Candidate(model=model), empty)
    with pytest.raises(ConfigError, match="layer 'nope' is not in the model"):
        apply(QuantizeConfig(skip=("nope",)), Candidate(model=model), context((32,)))
    with_identity = nn.Sequential(nn.Linear(32, 8), nn.Identity(), nn.Linear(8, 4)).eval()
    with pytest.raises(ConfigError, match="'1' has no operation of its own"):
        apply(QuantizeConfig(skip=("1",)), Candidate(model=with_identity), context((32,)))
    with pytest.raises(ConfigError, match="int8-pt2e calibrates min/max per channel"):
        parse_recipe("quantize:int8-pt2e,calibration=entropy")  # refused when read
    quantized = Step(config={"type": "quantize", "mode": "int8-static"}, seconds=0.0)
    final = Candidate(model=model, onnx=b"graph", runtime="onnxruntime", steps=(quantized,))
    with pytest.raises(TechniqueError, match="must be the last step"):
        apply(QuantizeConfig(mode="int8-dynamic"), final, context((32,)))


def test_config_round_trips_and_space_gives_valid_configs():
    config = QuantizeConfig(mode="int8-static", calibration="percentile", skip=("head", "body.0"))
    assert parse_recipe(str(config)) == (config,)
    assert parse_recipe("quantize:int8-dynamic") == (QuantizeConfig(mode="int8-dynamic"),)
    assert QuantizeConfig(skip=["head"]) == QuantizeConfig(skip=("head",))  # type: ignore[arg-type]
    fixed = optuna.trial.FixedTrial(
        {
            "quantize.mode": "int8-static",
            "quantize.calibration": "percentile",
            "quantize.per_channel": False,
        }
    )
    assert space(fixed) == QuantizeConfig(calibration="percentile", per_channel=False)
    assert space(optuna.trial.FixedTrial({"quantize.mode": "fp16"})) == QuantizeConfig(mode="fp16")


def test_technique_contract():
    check_technique(TECHNIQUE)


@pytest.mark.parametrize("mode", ["int8-static", "int8-dynamic"])
def test_the_ort_presets_are_onnx_runtimes_defaults_per_tensor_or_per_channel(mode):
    """`preset=ort` is what ONNX Runtime's quantizer gives with its defaults (one scale per
    weight tensor); `preset=ort-per-channel` the same with per-channel weights (one scale per
    output channel): the runtime defaults every search measures beside its own candidates."""
    model = conv_net() if mode == "int8-static" else mlp()
    shape = (3, 8, 8) if mode == "int8-static" else (32,)

    def scale_sizes(preset: str) -> list[int]:
        config = QuantizeConfig(mode=mode, preset=preset)
        candidate = apply(config, Candidate(model=model), context(shape))
        assert compare(model, candidate.onnx, shape)[1] > MIN_COSINE
        graph = onnx.load_from_string(candidate.onnx).graph
        return sorted(
            max(1, int(t.dims[0]) if t.dims else 1)
            for t in graph.initializer
            if "scale" in t.name and any(w in t.name for w in ("weight", "W", "MatMul", "Gemm"))
        )

    per_tensor, per_channel = scale_sizes("ort"), scale_sizes("ort-per-channel")
    assert per_tensor and set(per_tensor) == {1}
    assert max(per_channel) > 1


def test_targets_running_different_modes_draw_them_under_names_of_their_own():
    """One study draws for several targets (ONNX Runtime's three modes, OpenVINO's static int8,
    torch-compile's int8-pt2e): TPE refuses a parameter whose choices change between trials,
    so each set of modes is its own parameter; the full ONNX set keeps the plain name."""
    from fulcrum.techniques import Scope
    from fulcrum.techniques.quantize import draw, mode_choice, warm

    scopes = [
        Scope(task="multiclass", runtime="onnxruntime"),
        Scope(task="multiclass", runtime="openvino", modes=("int8-static",)),
        Scope(task="multiclass", runtime="torch-compile", modes=("int8-pt2e",)),
    ]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(multivariate=True, seed=0))
    drawn = []
    for i in range(24):
        trial = study.ask()
        scope = scopes[i % 3]
        config = draw(trial, scope)
        assert config.mode in (scope.modes or ("int8-static", "int8-dynamic", "fp16"))
        drawn.append(config.mode)
        study.tell(trial, float(i))
    assert "int8-pt2e" in drawn and "int8-dynamic" in drawn
    assert mode_choice(("int8-static", "int8-dynamic", "fp16")) == "quantize.mode"
    assert mode_choice(("int8-pt2e",)) == "quantize.mode[int8-pt2e]"
    assert warm(scopes[2], "after") == {"quantize.mode[int8-pt2e]": "int8-pt2e"}
    assert warm(scopes[0], "after")["quantize.mode"] == "int8-static"
