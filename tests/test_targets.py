"""Deployment targets beside ONNX Runtime: OpenVINO runs the same candidates, int8 included, and a
search over several targets keeps each one's candidates apart."""

import io
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


def test_the_torch_compile_target_compiles_once_per_shape_and_reloads_its_program(tmp_path):
    """A float candidate deploys as a torch.export program compiled by Inductor: outputs equal to
    eager PyTorch's, compile seconds kept apart per input shape (a thread change compiles
    nothing), the artifact is the program, and the saved program reloads to the same outputs."""
    model, x = _cnn(), torch.randn(3, 1, 8, 8)
    session = get("torch-compile").deploy(Candidate.of(model), (x,), threads=1)
    with torch.no_grad():
        expected = model(x)
    assert session.runtime == "torch-compile"
    assert torch.allclose(session(x), expected, atol=1e-5)
    assert torch.allclose(session(x[:1]), expected[:1], atol=1e-5)
    assert set(session.compile_seconds) == {((3, 1, 8, 8),), ((1, 1, 8, 8),)}
    two = session.with_threads(2)
    assert torch.allclose(two(x), expected, atol=1e-5) and two.compiled is session.compiled
    assert len(session.compile_seconds) == 2  # the thread change compiled nothing
    assert session.artifact_bytes() == len(session.program)
    session.save(tmp_path)
    reloaded = torch.export.load(str(tmp_path / "model.pt2")).module()  # PyTorch alone
    assert torch.allclose(reloaded(x), expected, atol=1e-5)


def test_int8_pt2e_is_a_step_whose_program_runs_compiled_close_to_float():
    """quantize:int8-pt2e calibrates the model with torchao's x86 quantizer and leaves PyTorch's
    float model for an int8 program: compiled on the torch-compile target its outputs stay close
    to the float model's, and the ONNX targets refuse it, naming the target that runs it."""
    from fulcrum.runtimes.torch_compile import CompiledSession
    from fulcrum.techniques import Context
    from fulcrum.techniques.quantize import QuantizeConfig, apply

    model, x = _cnn(), torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    calib = [(x[i : i + 8], torch.zeros(8)) for i in range(0, 32, 8)]
    ctx = Context(task="multiclass", example_inputs=(x[:1],), calib=calib)
    int8 = apply(QuantizeConfig(mode="int8-pt2e"), Candidate.of(model), ctx)
    assert int8.program is not None and int8.final and int8.runtime == "torch-compile"
    session = get("torch-compile").deploy(int8, (x[:1],), threads=1)
    with torch.no_grad():
        expected = model(x)
    out = session(x)
    assert (out - expected).abs().max() < 0.05 * float(expected.abs().max())
    program = torch.export.load(io.BytesIO(int8.program))  # int8, not the float model again
    assert any("quantize_per" in str(node.target) for node in program.graph.nodes)
    assert isinstance(session, CompiledSession) and session.program == int8.program
    for target in ("onnxruntime", "openvino", "torch"):
        with pytest.raises(Exception, match="runs on the torch-compile target"):
            get(target).deploy(int8, (x[:1],), threads=1)
    with pytest.raises(Exception, match="already turned into an int8 program"):
        int8.require_float("finetune")


def test_bf16_is_offered_only_where_the_cpu_computes_in_bf16(search_dir, monkeypatch, capsys):
    """Without AVX-512 BF16 or AMX the bf16 targets are refused with one line naming why (exit
    2, nothing written); with them they are offered."""
    from fulcrum import runtimes
    from fulcrum.runtimes import base

    monkeypatch.setattr(base, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    for target in ("openvino:bf16", "torch-compile:bf16"):
        assert "no native bf16" in (runtimes.unavailable(target) or "")
    assert (
        runtimes.unavailable("openvino") is None and runtimes.unavailable("torch-compile") is None
    )
    out = search_dir / "o"
    args = [str(search_dir / "fast.toml"), "--out", str(out), "--runtime", "torch-compile:bf16"]
    assert main(["search", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no native bf16" in err and not out.exists()
    monkeypatch.setattr(base, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert runtimes.unavailable("openvino:bf16") is None
    assert runtimes.unavailable("torch-compile:bf16") is None


def test_an_int8_pt2e_run_exports_its_program_and_verifies(search_dir, capsys):
    """compress with quantize:int8-pt2e measures on torch-compile; the pt2 export is the int8
    program the run measured (metric re-checked), verify passes, and an ONNX export is refused
    naming --format pt2."""
    run_dir = search_dir / "pt2e"
    argv = ["compress", str(search_dir / "fast.toml"), "--recipe", "quantize:int8-pt2e"]
    assert (
        main([*argv, "--seconds", "0.05", "--batch-sizes", "1", "--out", str(run_dir), "-q"]) == 0
    )
    result = json.loads((run_dir / "results.json").read_text())
    assert result["comparison"]["runtime"] == "torch-compile"
    assert result["trials"][0]["compile_seconds"] > 0
    assert (run_dir / "model.pt2").is_file() and not (run_dir / "model.onnx").exists()
    assert main(["export", str(run_dir), "--format", "pt2", "-q"]) == 0
    record = json.loads((run_dir / "export" / "pt2" / "export.json").read_text())
    assert "int8 program" in record["contains"] and record["parity"]["metric"]["checked"]
    exported = (run_dir / "export" / "pt2" / "model.pt2").read_bytes()
    assert exported == (run_dir / "model.pt2").read_bytes()  # what the run measured
    assert main(["verify", str(run_dir / "export" / "pt2"), "-q"]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "onnx", "--force", "-q"]) == 2
    assert "--format pt2" in capsys.readouterr().err


def test_a_torch_compile_search_draws_pytorch_int8_and_keeps_compile_time_apart(search_dir):
    """On torch-compile every trial is compiled there, its compile seconds recorded apart from
    its latency; the one quantization drawn is int8-pt2e, whose program is the trial's file."""
    out = search_dir / "compiled"
    args = [
        str(search_dir / "fast.toml"),
        *("--out", str(out), "--sampler", "random", "--trial-seconds", "0.02"),
        *("--max-drop", "100", "--threads", "1", "--trials", "3"),
        *("--runtime", "torch-compile"),
    ]
    assert main(["search", *args, "-q"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert (
        result["baseline"]["runtime"] == "torch-compile" and result["baseline"]["compile_seconds"]
    )
    done = [t for t in result["trials"] if t["state"] == "COMPLETE" and "same_as" not in t]
    assert done and all(t["runtime"] == "torch-compile" and t["compile_seconds"] for t in done)
    quantized = [t for t in done if "quantize" in t["recipe"]]
    assert quantized and all("int8-pt2e" in t["recipe"] for t in quantized)
    for t in quantized:
        assert (out / "trials" / str(t["number"]) / "model.pt2").is_file()
        assert not (out / "trials" / str(t["number"]) / "model.onnx").exists()
    float_trial = next(t for t in done if "quantize" not in t["recipe"])  # a compiled float one
    assert (out / "trials" / str(float_trial["number"]) / "model.pt2").is_file()
    onnx = ["export", str(out), "--trial", str(float_trial["number"]), "--format", "onnx", "-q"]
    assert main(onnx) == 0  # its program does not make it an int8 one


def test_an_int8_program_stores_int8_weights_only():
    """The float weights int8 replaced are not exported beside them: about a quarter of the
    float program's bytes on a model of large layers."""
    from fulcrum.techniques import Context
    from fulcrum.techniques.quantize import QuantizeConfig, apply

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    x = torch.randn(16, 256)
    ctx = Context(task="multiclass", example_inputs=(x[:1],), calib=[(x, torch.zeros(16))])
    int8 = apply(QuantizeConfig(mode="int8-pt2e"), Candidate.of(model), ctx)
    float_bytes = get("torch-compile").deploy(Candidate.of(model), (x[:1],), threads=1)
    assert len(int8.program) < 0.35 * float_bytes.artifact_bytes()
