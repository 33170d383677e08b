import json

import onnx
import pytest
import torch
import transformers  # a test dependency: make installs fulcrum[text]
from torch import nn

from fulcrum import measure, timing
from fulcrum.errors import ConfigError, ShapeError
from fulcrum.runtimes import OnnxModel, export_onnx


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


# hand-counted: conv1 8*3*9*(16*16), conv2 16*8*9*(8*8), linear 16*5
CNN_MACS = 8 * 3 * 9 * 256 + 16 * 8 * 9 * 64 + 16 * 5


def test_counts_params_and_macs_by_hand():
    p = measure.profile(small_cnn(), torch.zeros(1, 3, 16, 16), latency=False, runtimes_=("torch",))
    assert p.params_total == (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 5 + 5)
    assert p.params_trainable == p.params_total == p.params_nonzero
    assert p.macs == CNN_MACS and p.flops == 2 * CNN_MACS
    assert p.macs_by_op == {"convolution": CNN_MACS - 80, "addmm": 80}
    assert p.bytes_by_dtype == {"float32": 4 * p.params_total}
    assert sum(la.macs for la in p.layers) == p.macs
    assert pytest.approx(sum(la.share for la in p.layers)) == 1.0
    conv2 = next(la for la in p.layers if la.name == "2")
    assert conv2.output_shape == [1, 16, 8, 8] and conv2.kind == "Conv2d"


def test_nonzero_and_frozen_parameters_are_counted_apart():
    model = small_cnn()
    with torch.no_grad():
        model[0].weight[:4] = 0
    model[5].requires_grad_(False)
    total, trainable, nonzero = measure.parameter_counts(model)
    assert nonzero == total - 4 * 3 * 9
    assert trainable == total - (16 * 5 + 5)


def test_macs_of_modules_own_ops_are_attributed():
    class Attention(nn.Module):  # a matmul outside any leaf module
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.proj(x)
            return q @ q.transpose(-1, -2)

    p = measure.profile(Attention(), torch.zeros(1, 6, 8), latency=False, runtimes_=("torch",))
    assert p.macs == 6 * 8 * 8 + 6 * 6 * 8
    assert sum(la.macs for la in p.layers) == p.macs


def test_latency_and_memory_on_both_runtimes_and_json():
    p = measure.profile(
        small_cnn(), torch.zeros(1, 3, 16, 16), batch_sizes=(1, 4), seconds=0.2, threads=1
    )
    assert {(lat.runtime, lat.batch_size) for lat in p.latency} == {
        ("torch", 1),
        ("torch", 4),
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    }
    for lat in p.latency:
        assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms
        assert lat.runs >= 30 and lat.threads == 1
        assert lat.throughput_per_s == pytest.approx(
            lat.batch_size / lat.median_ms * 1e3, rel=1e-2
        )  # median is rounded
    assert p.artifact_bytes["onnx"] > 4 * p.params_total
    assert p.artifact_bytes["safetensors"] > 4 * p.params_total
    assert p.peak_memory_bytes["torch"] >= p.model_bytes
    assert json.loads(json.dumps(p.to_dict()))["macs"] == CNN_MACS
    assert p.environment["threads"] == "1" and p.environment["torch"] == torch.__version__


def test_onnx_profile_counts_the_same_macs_as_torch(tmp_path):
    path = export_onnx(small_cnn(), (torch.zeros(1, 3, 16, 16),), tmp_path / "cnn.onnx")
    p = measure.profile(OnnxModel(path, threads=1), torch.zeros(1, 3, 16, 16), seconds=0.2)
    assert p.macs == CNN_MACS
    assert p.params_total == measure.parameter_counts(small_cnn())[0]
    assert {lat.batch_size for lat in p.latency} == {1, 32}
    assert p.macs_by_op["Conv"] == CNN_MACS - 80


def test_wrong_example_inputs_and_options_are_one_line_errors():
    with pytest.raises(ShapeError, match=r"\[1, 4, 16, 16\]"):
        measure.profile(small_cnn(), torch.zeros(1, 4, 16, 16), latency=False)
    with pytest.raises(ConfigError, match="runtime 'tensorrt'"):
        measure.profile(small_cnn(), torch.zeros(1, 3, 16, 16), runtimes_=("tensorrt",))
    with pytest.raises(ConfigError, match="batch sizes"):
        measure.profile(small_cnn(), torch.zeros(1, 3, 16, 16), batch_sizes=(0,))


def test_interleaved_timing_gives_every_callable_the_same_runs():
    times = timing.time_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, seconds=0.01)
    assert len(times["a"]) == len(times["b"]) >= 30


def test_each_onnx_runtime_model_is_timed_at_its_fastest_thread_count(tmp_path, monkeypatch):
    """``compare_tuned`` times each tuned ONNX Runtime model with sessions of 1, 2 and 4 threads
    (up to 4) and keeps the fastest, unless it gains less than 5% over the model's own count; an
    untuned model is timed at its own count only. The medians are set, not measured."""
    import dataclasses

    from fulcrum.runtimes import thread_choices

    assert thread_choices(1) == (1,) and thread_choices(4) == (1, 2, 4)
    assert thread_choices(6) == (1, 2, 4, 6)
    path = export_onnx(small_cnn(), (torch.randn(1, 3, 16, 16),), tmp_path / "cnn.onnx")
    set_ms = {"fast@1": 1.0, "fast@2": 3.0, "fast@4": 2.0, "noise@1": 0.97, "noise@2": 1.0}
    set_ms |= {"noise@4": 1.5, "fixed@4": 5.0}
    real, seen = timing.compare_latency, {}

    def timed(runners, *args, **kwargs):
        seen.update({label: runner.threads for label, runner in runners.items()})
        times = real(runners, *args, **kwargs)
        return {k: dataclasses.replace(v, median_ms=set_ms[k[0]]) for k, v in times.items()}

    monkeypatch.setattr(timing, "compare_latency", timed)
    runners = {
        "fast": OnnxModel(path, threads=4),
        "noise": OnnxModel(path, threads=2),
        "fixed": OnnxModel(path, threads=4),
    }
    inputs = (torch.randn(1, 3, 16, 16),)
    times = timing.compare_tuned(
        runners, inputs, tune=["fast", "noise"], batch_sizes=(1,), threads=4, seconds=0.01
    )
    assert seen == {k: int(k.split("@")[1]) for k in set_ms}  # each session at its count
    assert {k: (v[0].median_ms, v[1]) for (k, _), v in times.items()} == {
        "fast": (1.0, 1),
        "noise": (1.0, 2),  # 3% faster on one thread: within noise, its own count stays
        "fixed": (5.0, 4),
    }


def test_onnx_compute_counts_matmul_and_gemm():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    proto_path = export_onnx(
        model,
        (torch.zeros(1, 6),),
        __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "mlp.onnx",
    )
    macs, by_op, layers = measure.onnx_compute(onnx.load(str(proto_path)), [[8, 6]])
    assert macs == 8 * (6 * 4 + 4 * 2)
    assert sum(la.macs for la in layers) == macs and by_op


def within(value: float, published: float, rel: float = 0.01) -> bool:
    return abs(value - published) <= rel * published


def test_bert_base_matches_published_figures():
    model = transformers.BertModel(transformers.BertConfig()).eval()
    ids = torch.zeros(1, 128, dtype=torch.long)
    macs, _, layers = measure.torch_compute(model, (ids,))
    total = measure.parameter_counts(model)[0]
    assert within(total, 109.48e6) and within(macs, 11.2e9)
    assert sum(la.macs for la in layers) == macs


def test_resnet18_matches_published_figures():
    config = transformers.ResNetConfig(
        depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], num_labels=1000
    )
    model = transformers.ResNetForImageClassification(config).eval()
    macs, by_op, _ = measure.torch_compute(model, (torch.zeros(1, 3, 224, 224),))
    assert within(measure.parameter_counts(model)[0], 11.69e6) and within(macs, 1.82e9)
    assert by_op["convolution"] > 0.99 * macs


@pytest.mark.slow
def test_mobilenet_v2_matches_published_figures():
    model = transformers.MobileNetV2ForImageClassification(
        transformers.MobileNetV2Config(num_labels=1000)
    ).eval()
    p = measure.profile(model, torch.zeros(1, 3, 224, 224), latency=False, runtimes_=("torch",))
    assert within(p.params_total, 3.50e6) and within(p.macs, 0.30e9, rel=0.02)


def test_a_model_is_exported_once_until_its_weights_change(monkeypatch):
    """``exported_bytes`` keeps the latest exports by model and weights: the same model again
    costs no export; an in-place change of a weight (as training makes) exports anew."""
    import copy

    from fulcrum import runtimes
    from fulcrum.runtimes import onnx_export

    model = small_cnn()
    inputs = (torch.randn(1, 3, 16, 16),)
    calls = []
    export = onnx_export.export_onnx
    monkeypatch.setattr(
        onnx_export, "export_onnx", lambda *a, **k: calls.append(1) or export(*a, **k)
    )
    first = runtimes.exported_bytes(model, inputs)
    assert runtimes.exported_bytes(model, inputs) == first and len(calls) == 1
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)
    changed = runtimes.exported_bytes(model, inputs)
    assert len(calls) == 2 and changed != first
    other = runtimes.exported_bytes(copy.deepcopy(model), inputs)  # another object
    assert len(calls) == 3 and other == changed


def test_each_export_gets_its_own_copy_of_the_reused_translation_table():
    from torch.onnx._internal.exporter import _registration

    from fulcrum.runtimes import onnx_export

    onnx_export._reuse_torchlib_registry()
    one, two = (
        _registration.ONNXRegistry.from_torchlib(),
        _registration.ONNXRegistry.from_torchlib(),
    )
    assert one is not two and one.functions.keys() == two.functions.keys() and one.functions
    target = next(iter(one.functions))
    one.functions[target].clear()  # as registering a custom translation would change it
    assert _registration.ONNXRegistry.from_torchlib().functions[target]
