"""Deployment targets beside ONNX Runtime: OpenVINO runs the same candidates, int8 included, and a
search over several targets keeps each one's candidates apart."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fulcrum.cli import main
from fulcrum.compression import compress
from fulcrum.runtimes import OnnxModel, exported_bytes, get
from fulcrum.techniques import Candidate
from fulcrum.workloads import load


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_openvino_computes_what_onnx_runtime_computes_from_the_same_graph():
    model, x = _cnn(), torch.randn(3, 1, 8, 8)
    session = get("openvino").deploy(Candidate.of(model), (x,), threads=1)
    expected = OnnxModel(exported_bytes(model, (x,)), 1)(x)
    assert session.runtime == "openvino" and session.precision in ("f32", "bf16")
    tolerance = 1e-4 if session.precision == "f32" else 3e-2
    assert torch.allclose(session(x), expected, atol=tolerance)
    assert torch.allclose(session.with_threads(2)(x), expected, atol=tolerance)
    assert session.artifact_bytes() == len(exported_bytes(model, (x,)))
    with pytest.raises(Exception, match="has no output 'nope'"):
        get("openvino").deploy(Candidate.of(model), (x,), threads=1, output="nope")


def _precisions(session) -> set[str]:
    """The precisions OpenVINO's compiled graph computes its layers in."""
    runtime_model = session.compiled.get_runtime_model()
    found = set()
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["layerType"].astype(str) in (
            "FullyConnected",
            "Convolution",
            "MatMul",
        ):
            found.add(info["runtimePrecision"].astype(str))
    return found


def test_openvino_runs_the_static_int8_graph_in_int8(search_dir):
    """The recipe's int8 QDQ graph is not dequantized back to float: OpenVINO computes its
    matrix products in 8-bit integers, with outputs close to ONNX Runtime's int8 ones."""
    workload = load(str(search_dir / "fast.toml"))
    int8 = compress(workload.model, "quantize:int8-static", workload)
    inputs = workload.example_inputs
    session = get("openvino").deploy(int8, inputs, threads=1)
    assert _precisions(session) & {"i8", "u8"}
    float_session = get("openvino").deploy(Candidate.of(workload.model), inputs, threads=1)
    assert not _precisions(float_session) & {"i8", "u8"}
    ours, theirs = session(*inputs), get("onnxruntime").deploy(int8, inputs, threads=1)(*inputs)
    assert np.allclose(ours.numpy(), theirs.numpy(), atol=0.05 * float(theirs.abs().max()))


def test_a_search_over_onnx_runtime_and_openvino_measures_each_on_its_own(search_dir):
    out = search_dir / "targets"
    args = [
        str(search_dir / "fast.toml"),
        *("--out", str(out), "--sampler", "random", "--trial-seconds", "0.02"),
        *("--max-drop", "100", "--threads", "1", "--trials", "8"),
        *("--runtime", "onnxruntime,openvino"),
    ]
    assert main(["search", *args]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["targets"]) == {"onnxruntime", "openvino"}
    done = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    assert {t["runtime"] for t in done} <= {"onnxruntime", "openvino"}
    for t in done:
        if t["runtime"] == "openvino" and "quantize" in t["recipe"]:
            assert "int8-dynamic" not in t["recipe"] and "fp16" not in t["recipe"]
    for target, pick in result["target_picks"].items():
        assert pick["point"]["runtime"] == target
    assert {d["trial"] for d in result["defaults"]} >= {"openvino-baseline"}


def test_a_target_not_installed_is_refused_naming_the_extra(search_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = [str(search_dir / "fast.toml"), "--out", str(search_dir / "o"), "--runtime", "openvino"]
    assert main(["search", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'fulcrum[openvino]'" in err
    assert not (search_dir / "o").exists()


def test_an_openvino_export_is_ir_that_openvino_alone_loads_and_fulcrum_verifies(search_dir):
    run_dir, export_dir = search_dir / "int8", search_dir / "int8" / "export" / "openvino"
    argv = ["compress", str(search_dir / "fast.toml"), "--recipe", "quantize:int8-static"]
    assert main([*argv, "--seconds", "0.05", "--out", str(run_dir), "-q"]) == 0
    assert main(["export", str(run_dir), "--format", "openvino", "-q"]) == 0
    record = json.loads((export_dir / "export.json").read_text())
    assert {"model.xml", "model.bin"} <= set(record["files"]) and "IR" in record["contains"]
    assert record["parity"]["metric"]["checked"] is True
    import openvino

    workload = load(str(search_dir / "fast.toml"))
    x = workload.example_inputs[0]
    compiled = openvino.Core().compile_model(str(export_dir / "model.xml"), "CPU")
    ir_out = compiled([x.numpy()])[compiled.outputs[0]]
    deployed = OnnxModel((run_dir / "model.onnx").read_bytes(), 1)(x)
    assert np.allclose(ir_out, deployed.numpy(), atol=0.05 * float(deployed.abs().max()))
    assert main(["verify", str(export_dir), "-q"]) == 0
