"""A catalogue of bad inputs through the CLI: each exits 2 with one line naming the input, no
traceback, and leaves nothing half-written behind."""

from pathlib import Path

import pytest

from conftest import module_of
from fulcrum.cli import main

# each case: argv (TOML = the user's workload file, OUT = a run folder that must not appear,
# FILE = an existing plain file), a text the error must contain, and files to write first
CASES = {
    "unknown workload": (["profile", "digts"], "Did you mean 'digits'", {}),
    "missing toml": (["evaluate", "missing.toml"], "does not exist", {}),
    "unknown toml key": (
        ["evaluate", "bad.toml"],
        "unknown entry 'modle'",
        {"bad.toml": 'task = "multiclass"\nmodle = "x:y"\ndata = "MOD:splits"\n'},
    ),
    "toml without task": (
        ["evaluate", "bad.toml"],
        "no 'task' entry",
        {"bad.toml": 'model = "MOD:make_model"\ndata = "MOD:splits"\n'},
    ),
    "unknown task": (
        ["evaluate", "bad.toml"],
        "task 'classify' is not known",
        {"bad.toml": 'task = "classify"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\n'},
    ),
    "bad module reference": (
        ["evaluate", "bad.toml"],
        "must look like 'module:callable'",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD.make_model"\ndata = "MOD:splits"\n'},
    ),
    "missing callable": (
        ["evaluate", "bad.toml"],
        "has no attribute 'nope'",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:nope"\ndata = "MOD:splits"\n'},
    ),
    "split named calibration": (
        ["evaluate", "bad.toml"],
        "split named 'calibration'",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:with_calibration"\n'
        },
    ),
    "empty split": (
        ["evaluate", "bad.toml"],
        "zero samples",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:empty"\n'},
    ),
    "empty train split": (
        ["compress", "bad.toml", "--recipe", "finetune:1", "--out", "OUT"],
        "split 'train' has zero samples",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:empty_train"\n'},
    ),
    "unknown model argument": (
        ["evaluate", "bad.toml"],
        "[model_args] in bad.toml do not fit",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\n[model_args]\nhiden = 4\n'
        },
    ),
    "missing checkpoint": (
        ["evaluate", "bad.toml"],
        "nowhere.safetensors",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\ncheckpoint = "nowhere.safetensors"\n'
        },
    ),
    "num_classes 0": (
        ["evaluate", "bad.toml"],
        "bad.toml: num_classes must be a positive whole number; got 0",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\nnum_classes = 0\n'
        },
    ),
    "model and onnx": (
        ["evaluate", "bad.toml"],
        "exactly one of 'model'",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\nonnx = "m.onnx"\ndata = "MOD:splits"\n'
        },
    ),
    "unknown technique": (
        ["compress", "TOML", "--recipe", "prun:0.5", "--out", "OUT"],
        "Did you mean 'prune'",
        {},
    ),
    "duplicate recipe key": (
        ["compress", "TOML", "--recipe", "prune:ratio=0.3,ratio=0.9", "--out", "OUT"],
        "sets 'ratio' twice",
        {},
    ),
    "recipe value out of range": (
        ["compress", "TOML", "--recipe", "prune:ratio=2", "--out", "OUT"],
        "range",
        {},
    ),
    "quantize not last": (
        ["compress", "TOML", "--recipe", "quantize > prune", "--out", "OUT"],
        "must be the last",
        {},
    ),
    "torch step after a graph step": (
        ["compress", "TOML", "--recipe", "fuse > finetune:2", "--out", "OUT"],
        "move 'finetune' before it",
        {},
    ),
    "empty recipe step": (
        ["compress", "TOML", "--recipe", "prune >", "--out", "OUT"],
        "empty step",
        {},
    ),
    "compress seed -1": (
        ["compress", "TOML", "--recipe", "prune", "--seed", "-1", "--out", "OUT"],
        "argument --seed",
        {},
    ),
    "search seed -1": (["search", "TOML", "--seed", "-1", "--out", "OUT"], "argument --seed", {}),
    "max-drop nan": (
        ["search", "TOML", "--max-drop", "nan", "--out", "OUT"],
        "--max-drop must be a finite",
        {},
    ),
    "budget without a value": (
        ["search", "TOML", "--budget", "foo", "--out", "OUT"],
        "argument --budget",
        {},
    ),
    "unknown budget": (
        ["search", "TOML", "--budget", "latency=2", "--out", "OUT"],
        "unknown budget 'latency'",
        {},
    ),
    "unknown policy": (
        ["search", "TOML", "--policy", "nope", "--out", "OUT"],
        "unknown policy 'nope'",
        {},
    ),
    "bogus storage": (
        ["search", "TOML", "--storage", "bogus://x", "--out", "OUT"],
        "--storage 'bogus://x'",
        {},
    ),
    "trials 0": (["search", "TOML", "--trials", "0", "--out", "OUT"], "--trials", {}),
    "unknown objective": (["search", "TOML", "--objective", "speed", "--out", "OUT"], "speed", {}),
    "out is a file": (["search", "TOML", "--out", "FILE"], "--out", {}),
    "threads 0": (["profile", "TOML", "--threads", "0"], "argument --threads", {}),
    "json into a folder": (["profile", "TOML", "--json", "FOLDER"], "--json", {}),
    "export of a folder that is no run": (["export", "FOLDER"], "is not a run folder", {}),
    "report of a folder that is no run": (["report", "FOLDER"], "FOLDER", {}),
    # issue #27: each of these exited 3 ("a bug in Fulcrum") or ran unbounded work first
    "input_shape of words": (
        ["evaluate", "bad.toml"],
        "input_shape must list positive whole numbers",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\ninput_shape = ["a", 4]\n'
        },
    ),
    "input_shape negative": (
        ["evaluate", "bad.toml"],
        "got [-1, 4]",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\ninput_shape = [-1, 4]\n'
        },
    ),
    "npz data file missing": (
        ["evaluate", "bad.toml"],
        "missing.npz' does not exist",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "missing.npz"\n'},
    ),
    "text file named npz": (
        ["evaluate", "bad.toml"],
        "fake.npz is not a .npz file",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "fake.npz"\n',
            "fake.npz": "text",
        },
    ),
    "model factory raises": (
        ["evaluate", "bad.toml"],
        "your model callable 'MOD:broken' raised ValueError: my factory broke at MOD.py",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:broken"\ndata = "MOD:splits"\n'},
    ),
    "data callable raises": (
        ["evaluate", "bad.toml"],
        "your data callable 'MOD:broken_data' raised KeyError",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:broken_data"\n'},
    ),
    "nan in the inputs": (
        ["evaluate", "bad.toml"],
        "data split 'val' has NaN or infinite inputs (sample 3 first)",
        {"bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:with_nan"\n'},
    ),
    "checkpoint is a folder": (
        ["evaluate", "bad.toml"],
        "is a folder; name the weights file in it",
        {
            "bad.toml": 'task = "multiclass"\nmodel = "MOD:make_model"\ndata = "MOD:splits"\ncheckpoint = "afolder"\n'
        },
    ),
    "recipe of 3001 steps": (
        ["compress", "TOML", "--recipe", " > ".join(["prune"] * 3001), "--out", "OUT"],
        "characters long; a recipe is at most",
        {},
    ),
    "recipe of 17 steps": (
        ["compress", "TOML", "--recipe", " > ".join(["finetune:1"] * 17), "--out", "OUT"],
        "the recipe has 17 steps; a recipe has at most 16",
        {},
    ),
    "skip of 100,000 characters": (
        ["compress", "TOML", "--recipe", "prune:skip=" + "x" * 3900, "--out", "OUT"],
        "(3,900 characters)' is not in the model",
        {},
    ),
    "recipe toml with an unknown table": (
        ["compress", "TOML", "--recipe", "recipe.toml", "--out", "OUT"],
        "'extra', which a recipe does not know",
        {"recipe.toml": '[[step]]\ntechnique = "prune"\n[extra]\nx = 1\n'},
    ),
    "trial seconds negative": (
        ["search", "TOML", "--trial-seconds", "-1", "--out", "OUT"],
        "--trial-seconds must be a positive number of seconds",
        {},
    ),
    "a refused storage server leaves no folder": (
        ["search", "TOML", "--storage", "postgresql://nobody@127.0.0.1:9/none", "--out", "OUT"],
        "no postgresql server answers at 127.0.0.1:9",
        {},
    ),
}

EXTRA_CODE = """

def empty_train():
    data = splits()
    return {"val": data["val"], "train": (data["train"][0][:0], data["train"][1][:0])}


def with_calibration():
    data = splits()
    return {"val": data["val"], "calibration": data["train"]}


def broken():
    raise ValueError("my factory broke")


def broken_data():
    return splits()["nope"]


def with_nan():
    x, y = splits()["val"]
    x = x.clone()
    x[3, 1] = float("nan")
    return {"val": (x, y)}
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_in_one_line_and_writes_nothing(case, user_dir, capsys):
    argv, needle, files = CASES[case]
    module = module_of(user_dir)
    with (user_dir / f"{module}.py").open("a") as handle:
        handle.write(EXTRA_CODE)
    for name, text in files.items():
        (user_dir / name).write_text(text.replace("MOD", module))
    (user_dir / "plain.txt").write_text("not a folder")
    (user_dir / "afolder").mkdir()
    places = {
        "TOML": str(user_dir / "workload.toml"),
        "OUT": str(user_dir / "run"),
        "FILE": str(user_dir / "plain.txt"),
        "FOLDER": str(user_dir / "afolder"),
    }
    args = [places.get(a, str(user_dir / a) if a.endswith(".toml") else a) for a in argv]
    before = sorted(p.name for p in Path(user_dir).iterdir())
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    needle = places.get(needle, needle).replace("MOD", module)
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    after = sorted(p.name for p in Path(user_dir).iterdir() if p.name != "__pycache__")
    assert after == [b for b in before if b != "__pycache__"]  # no run folder left behind
    assert list((user_dir / "afolder").iterdir()) == []


def test_an_unexpected_error_is_reported_as_a_bug_with_exit_3(capsys, monkeypatch):
    import fulcrum.cli.workloads as command

    def broken(_args):
        raise KeyError("boom")

    monkeypatch.setattr(command, "run", broken)
    assert main(["workloads"]) == 3
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "fulcrum env" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["--debug", "workloads"]) == 3  # the same code, with the traceback
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'boom'" in err
