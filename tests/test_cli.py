import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import module_of
from fulcrum.cli import main
from fulcrum.runtimes import export_onnx
from tests_support import fulcrum_env


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_workloads_lists_builtins(capsys):
    code, out, _ = run(capsys, "workloads")
    assert code == 0 and out.startswith("digits") and "breast-cancer" in out


def test_profile_and_evaluate_a_toml_workload_with_json(capsys, user_dir, tmp_path):
    toml = str(user_dir / "workload.toml")
    code, out, _ = run(
        capsys,
        "profile",
        toml,
        "--seconds",
        "0.1",
        "--batch-sizes",
        "1,8",
        "--threads",
        "1",
        "--json",
        str(tmp_path / "p.json"),
    )
    assert code == 0 and "Linear" in out and "latency" in out
    profile = json.loads((tmp_path / "p.json").read_text())["profile"]
    assert profile["params_total"] == 4 * 16 + 16 + 16 * 3 + 3
    assert profile["macs"] == 4 * 16 + 16 * 3
    assert {(lat["runtime"], lat["batch_size"]) for lat in profile["latency"]} == {
        ("torch", 1),
        ("torch", 8),
        ("onnxruntime", 1),
        ("onnxruntime", 8),
    }

    code, out, _ = run(capsys, "evaluate", toml, "--json", str(tmp_path / "e.json"))
    evaluation = json.loads((tmp_path / "e.json").read_text())["evaluation"]
    assert code == 0 and "f1_macro" in out and "confusion matrix" in out
    assert evaluation["n_samples"] == 20 and "hits" in evaluation["metrics"]


def test_profile_of_an_onnx_file(capsys, tmp_path):
    path = export_onnx(
        nn.Sequential(nn.Linear(4, 3)).eval(), (torch.zeros(1, 4),), tmp_path / "m.onnx"
    )
    code, out, _ = run(capsys, "profile", str(path), "--seconds", "0.1")
    assert code == 0 and "Gemm" in out and "onnxruntime" in out
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2 and "no validation data" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["profile", "digts"], "Did you mean 'digits'"),
        (["evaluate", "missing.toml"], "does not exist"),
        (["profile", "TOML", "--allow-pickle", "--json", "/proc/nope/x.json"], "cannot be written"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, user_dir, argv, needle):
    argv = [str(user_dir / "workload.toml") if a == "TOML" else a for a in argv]
    code, _, err = (
        run(capsys, *argv, "--seconds", "0.05") if argv[0] == "profile" else run(capsys, *argv)
    )
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_module_reference_from_the_console_script(user_dir):
    (user_dir / "bad.toml").write_text(
        f'task = "multiclass"\nmodel = "{module_of(user_dir)}:nope"\ndata = "{module_of(user_dir)}:splits"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fulcrum", "evaluate", str(user_dir / "bad.toml")],
        env=fulcrum_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("fulcrum evaluate: error: entry 'model'")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end(capsys, tmp_path):
    # 10 trials: the warm start tries int8 alone first, which keeps digits within budget
    code = main(["demo", "--trials", "10", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0 and "demo finished" in out
    assert (tmp_path / "demo" / "report.html").is_file() and (
        tmp_path / "demo" / "results.json"
    ).is_file()


def test_json_dash_prints_the_result_alone_on_stdout(capsys, user_dir):
    toml = str(user_dir / "workload.toml")
    code, out, err = run(capsys, "evaluate", toml, "--json", "-")
    assert code == 0 and json.loads(out)["evaluation"]["n_samples"] == 20
    assert "confusion matrix" in err  # the human-readable output moved to stderr
    code, out, _ = run(capsys, "env", "--json")  # no PATH: the same as -
    assert code == 0 and json.loads(out)["fulcrum"]


@pytest.mark.parametrize("loudness", [[], ["-q"], ["-v"]])
def test_quiet_shows_only_results_and_verbose_every_step(capsys, user_dir, loudness):
    toml = str(user_dir / "workload.toml")
    argv = ["sensitivity", toml, "--no-quantize", "--samples", "20", *loudness]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "per-layer sensitivity" in out  # the results, always
    assert ("pruning each of 1 layers alone" in err) == (loudness != ["-q"])  # what is done
    # every step of short work only under -v
    assert ("each layer pruned alone (layers): 1/1" in err) == (loudness == ["-v"])
