"""What the README promises, through the CLI: policies, --relative, the torch runtime, binary and
regression tasks end to end, and the env and techniques commands."""

import json
import textwrap

import pytest

from fulcrum.cli import main
from fulcrum.techniques import TECHNIQUES

TASKS_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def model(outputs=1):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, outputs))


    def _x(n, seed):
        return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


    def binary():
        x, v = _x(64, 0), _x(32, 1)
        return {"train": (x, (x[:, 0] > 0).float()), "val": (v, (v[:, 0] > 0).float())}


    def regression():
        x, v = _x(64, 0), _x(32, 1)
        return {"train": (x, x[:, :1] * 2 + 1), "val": (v, v[:, :1] * 2 + 1)}
    """
)


@pytest.fixture
def tasks_dir(tmp_path):
    (tmp_path / "taskcode.py").write_text(TASKS_CODE)
    for task in ("binary", "regression"):
        (tmp_path / f"{task}.toml").write_text(
            f'task = "{task}"\nmodel = "taskcode:model"\ndata = "taskcode:{task}"\n'
        )
    return tmp_path


def search(tasks_dir, task, out, *extra):
    argv = [str(tasks_dir / f"{task}.toml"), "--out", str(out), "--sampler", "random"]
    argv += ["--trial-seconds", "0.02", "--threads", "1", "--trials", "3", *extra]
    return main(["search", *argv])


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_binary_and_regression_compress_and_search_end_to_end(tasks_dir, task, capsys):
    run = tasks_dir / f"{task}-compress"
    recipe = "prune:0.3,round_to=1 > finetune:2 > quantize:int8-static"
    argv = ["compress", str(tasks_dir / f"{task}.toml"), "--recipe", recipe, "--out", str(run)]
    assert main([*argv, "--seconds", "0.02", "--batch-sizes", "1", "--threads", "1"]) == 0
    metrics = json.loads((run / "results.json").read_text())["trials"][0]["metrics"]
    assert {"binary": "roc_auc", "regression": "r2"}[task] in metrics
    out = tasks_dir / f"{task}-search"
    assert search(tasks_dir, task, out, "--max-drop", "100") == 0
    result = json.loads((out / "results.json").read_text())
    assert result["pick"]["point"] and result["baseline"]["metric"] is not None


@pytest.mark.parametrize(("policy", "words"), [("knee", "the knee"), ("weighted", "MnasNet")])
def test_knee_and_weighted_policies_through_the_cli(tasks_dir, policy, words):
    out = tasks_dir / policy
    assert search(tasks_dir, "binary", out, "--max-drop", "100", "--policy", policy) == 0
    pick = json.loads((out / "results.json").read_text())["pick"]
    assert pick["policy"] == policy and words in pick["reason"]


def test_relative_drop_is_a_percentage_of_the_baseline(tasks_dir):
    out = tasks_dir / "relative"
    assert search(tasks_dir, "binary", out, "--max-drop", "50", "--relative") == 0
    result = json.loads((out / "results.json").read_text())
    base = result["baseline"]["metric"]
    for trial in result["trials"]:
        if trial["state"] == "COMPLETE":  # the constraint is the drop beyond half the baseline
            assert trial["constraints"][0] == pytest.approx(
                base - trial["metric"] - base * 0.5, abs=1e-6
            )


def test_a_torch_runtime_search_deploys_pytorch_models(tasks_dir):
    out = tasks_dir / "torch"
    assert search(tasks_dir, "regression", out, "--max-drop", "100", "--runtime", "torch") == 0
    result = json.loads((out / "results.json").read_text())
    recipes = [t["recipe"] for t in result["trials"] if t["state"] == "COMPLETE"]
    assert recipes and not any("quantize" in r or "fuse" in r for r in recipes)
    manifest = json.loads((out / "sweetspot" / "model.json").read_text())
    assert manifest["runtime"] == "torch"


def test_env_and_techniques_commands(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "onnxruntime" in out
    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TECHNIQUES)
