import json

import numpy as np
import pytest
import torch

from fulcrum import workloads
from fulcrum.cli import main
from fulcrum.compression import (
    compress,
    load_candidate,
    parse_recipe,
    rebuild,
    recipe_from,
    save_candidate,
)
from fulcrum.errors import ConfigError
from fulcrum.runtimes import OnnxModel
from fulcrum.techniques.distill import DistillConfig
from fulcrum.techniques.prune import PruneConfig


def test_recipe_text_parses_into_validated_configs():
    recipe = parse_recipe("prune:ratio=0.4,importance=taylor,skip=0+3 > distill:3 ")
    assert recipe == (
        PruneConfig(ratio=0.4, importance="taylor", skip=("0", "3")),
        DistillConfig(epochs=3),
    )
    assert parse_recipe(" > ".join(str(c) for c in recipe)) == recipe


def test_toml_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[[step]]\ntechnique = "prune"\nratio = 0.3\nskip = ["0"]\n\n'
        '[[step]]\ntechnique = "finetune"\nepochs = 2\n'
    )
    recipe = recipe_from(str(path))
    assert recipe[0] == PruneConfig(ratio=0.3, skip=("0",)) and recipe[1].epochs == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prun:0.5", "unknown technique 'prun'.*Did you mean 'prune'"),
        (
            "prune:ratio=1.5",
            r"'ratio' parameter of prune must be a number in the range \[0.0, 0.95\]. Got 1.5",
        ),
        ("prune:ration=0.5", "prune has no parameter 'ration'.*Did you mean 'ratio'"),
        ("prune:ratio=half", "'ratio' parameter of prune cannot be 'half'"),
        ("prune > > finetune", "empty step"),
        ("sparsify:0.5 > quantize:int8-static > prune", "nothing can follow quantize"),
    ],
)
def test_bad_recipes_are_refused_with_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_recipe(text)
    assert "\n" not in str(info.value)


def test_compress_leaves_the_workload_model_untouched(user_dir):
    w = workloads.load(str(user_dir / "workload.toml"))
    before = {k: v.clone() for k, v in w.model.state_dict().items()}
    candidate = compress(w.model, "prune:0.5,round_to=1 > finetune:2", w)
    assert [s.config["type"] for s in candidate.steps] == ["prune", "finetune"]
    assert all(torch.equal(before[k], v) for k, v in w.model.state_dict().items())
    assert candidate.model[0].out_features == 8


def test_pruned_and_factorised_model_reloads_from_its_folder(user_dir, tmp_path):
    w = workloads.load(str(user_dir / "workload.toml"))
    candidate = compress(
        w.model, "prune:0.5,round_to=1 > lowrank:rank_ratio=0.25,factor_head=true", w
    )
    save_candidate(candidate, tmp_path / "run", w.example_inputs, str(user_dir / "workload.toml"))
    x = torch.randn(7, 4)
    with torch.no_grad():
        expected = candidate.model(x)
        again = rebuild(w.model, tmp_path / "run")
        assert torch.allclose(again(x), expected, atol=1e-6)
    # the ONNX file runs from the folder alone; ORT and PyTorch agree within float32 rounding
    onnx_out = OnnxModel(tmp_path / "run" / "model.onnx", threads=1)(x)
    np.testing.assert_allclose(onnx_out.numpy(), expected.numpy(), atol=1e-5, rtol=1e-4)
    torch_model, onnx_model = load_candidate(tmp_path / "run")
    assert torch_model is not None and torch.allclose(torch_model(x), expected, atol=1e-6)
    assert torch.allclose(onnx_model(x), onnx_out)


def test_compress_command_writes_a_run_folder(capsys, user_dir, tmp_path):
    code = main(
        [
            "compress",
            str(user_dir / "workload.toml"),
            "--recipe",
            "prune:0.5,round_to=1 > finetune:1",
            "--out",
            str(tmp_path / "run"),
            "--seconds",
            "0.05",
            "--batch-sizes",
            "1,4",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "parameters" in out and "faster" in out
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["command"] == "compress" and result["pick"]["point"]["recipe"]  # one schema
    result = result["comparison"]  # and the before/after figures of a compress run
    assert result["candidate"]["params"] < result["baseline"]["params"]
    assert {(r["model"], r["runtime"], r["batch_size"]) for r in result["latency"]} == {
        (m, rt, b)
        for m in ("baseline", "candidate")
        for rt in ("torch", "onnxruntime")
        for b in (1, 4)
    }
    assert "hits" in result["candidate"]["metrics"]  # the workload's own metric
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 0
    report = (tmp_path / "run" / "report.html").read_text()  # compress runs get a report too
    assert "fulcrum compress" in report and (tmp_path / "run" / "card.md").is_file()


def test_compress_command_refuses_a_bad_recipe_before_any_work(capsys, user_dir):
    out = user_dir / "run"
    argv = ["compress", str(user_dir / "workload.toml"), "--recipe", "prune:ratio=2"]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ratio" in err
    assert not out.exists()  # refused before the run folder was made
