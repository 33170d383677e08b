"""Attacks and faults (issue #27): nothing in a run folder runs code, nothing is overwritten by
another run, a full disk loses nothing, and an export proves its files."""

import errno
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from fulcrum.cli import main
from tests_support import write_user_workload

QUICK = ["--seconds", "0.02", "--batch-sizes", "1", "--threads", "1"]
SEARCH = ["--sampler", "random", "--trial-seconds", "0.02", "--max-drop", "100", "--threads", "1"]


class Planted:
    """A pickle that, when loaded, leaves a marker file: what an attacker plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_planted_in_a_search_cache_never_runs_on_resume(tmp_path):
    """Finding 1: a search's cache/ held torch.load(weights_only=False) files; one planted
    there ran when the same command was run again. The cache is safetensors and JSON now."""
    from fulcrum import workloads
    from fulcrum.compression import PrefixCache, compress

    toml = write_user_workload(tmp_path, name="cachecode")
    workload = workloads.load(str(toml))
    marker = tmp_path / "pwned"
    cache = PrefixCache(tmp_path / "run" / "cache", workload.model, costly=0.0)
    key = "0|prune"
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    (tmp_path / "run" / "cache").mkdir(parents=True)
    payload = pickle.dumps({"key": key, "candidate": Planted(marker)})
    (tmp_path / "run" / "cache" / f"{digest}.pt").write_bytes(payload)  # the old layout
    planted = tmp_path / "run" / "cache" / digest
    planted.mkdir()
    (planted / "candidate.json").write_text(
        json.dumps({"key": key, "runtime": "torch", "steps": []})
    )
    (planted / "model.safetensors").write_bytes(payload)  # a pickle where tensors belong
    (planted / "model.json").write_text("{}")
    assert key not in cache  # damaged: a miss, never code
    compress(workload.model, "prune > finetune:1", workload, cache=cache)
    assert not marker.exists()


def test_hostile_strings_in_a_run_do_not_run_as_script_in_its_report(tmp_path):
    """Finding 2: a metric name or a recipe like ``</script><script>...`` was written raw inside
    the report's inline script. The report is opened in headless Chromium: nothing injected
    runs, and the strings show as text."""
    from fulcrum.report import write_report

    toml = write_user_workload(tmp_path, name="xsscode")
    run = tmp_path / "run"
    argv = ["compress", str(toml), "--recipe", "prune:0.5", "--out", str(run), *QUICK]
    assert main(argv) == 0
    attack = "</script><script>document.title='PWNED';window.PWN=1</script>"
    result = json.loads((run / "results.json").read_text())
    result["trials"][0]["recipe"] = attack
    result["pick"]["point"]["recipe"] = attack
    result["frontier"][0]["recipe"] = attack
    result["baseline"]["metrics"][f"m{attack}"] = 0.5
    result["trials"][0]["metrics"][f"m{attack}"] = 0.4
    (run / "results.json").write_text(json.dumps(result))
    write_report(run)
    html = (run / "report.html").read_text()
    assert attack not in html  # escaped in the HTML and as JSON inside the script
    if shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it) to run the page")
    dom = subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=8000",
            "--dump-dom",
            (run / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-rendered="charts"' in dom  # the page's own script ran to its end
    assert "PWNED" not in dom.split("</title>")[0]  # the injected one did not
    assert "&lt;/script&gt;&lt;script&gt;" in dom  # shown as text


def test_a_compress_into_another_workloads_compress_folder_is_refused(tmp_path, capsys):
    """Finding 3: a compress run into a folder of another workload's compress run overwrote it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_user_workload(tmp_path / "a", name="firstcode")
    second = write_user_workload(tmp_path / "b", name="secondcode")
    run = tmp_path / "run"
    assert main(["compress", str(first), "--recipe", "prune:0.5", "--out", str(run), *QUICK]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code = main(["compress", str(second), "--recipe", "prune:0.5", "--out", str(run), *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "holds a `fulcrum compress` run of" in err and "firstcode" not in err
    assert str(first.resolve()) in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    other_recipe = ["--recipe", "prune:0.3", "--out", str(run), *QUICK]
    assert main(["compress", str(first), *other_recipe]) == 2  # another recipe: another run
    assert "recipe='prune'" in capsys.readouterr().err
    assert main(["compress", str(first), "--recipe", "prune:0.5", "--out", str(run), *QUICK]) == 0


def test_an_emptied_study_database_is_refused_instead_of_starting_over(tmp_path, capsys):
    """Finding 4: a zero-byte study.db silently started a new study over a finished search and
    overwrote trials/N with other recipes."""
    toml = write_user_workload(tmp_path, name="studycode")
    run = tmp_path / "run"
    assert main(["search", str(toml), "--out", str(run), "--trials", "2", *SEARCH]) == 0
    trials = {p.name: (p / "model.onnx").read_bytes() for p in (run / "trials").iterdir()}
    capsys.readouterr()
    (run / "study.db").write_bytes(b"")
    code = main(["search", str(toml), "--out", str(run), "--trials", "3", *SEARCH])
    err = capsys.readouterr().err
    assert code == 2 and "holds no study" in err and len(err.strip().splitlines()) == 1
    assert {p.name: (p / "model.onnx").read_bytes() for p in (run / "trials").iterdir()} == trials


@pytest.fixture
def exported(tmp_path):
    toml = write_user_workload(tmp_path, name="exportedcode")
    run = tmp_path / "run"
    assert main(["search", str(toml), "--out", str(run), "--trials", "3", *SEARCH]) == 0
    return run


def test_an_export_proves_every_file_and_refuses_what_it_cannot_check(exported, tmp_path, capsys):
    """Finding 5: a trial without a recorded metric was exported unchecked without a word; an
    empty sums file verified nothing; an edited ONNX file was detected by no command."""
    from fulcrum.errors import CheckpointError
    from fulcrum.export import export, load, verify

    result = json.loads((exported / "results.json").read_text())
    trial = result["trials"][0]
    del trial["metric"]
    (exported / "results.json").write_text(json.dumps(result))
    out = tmp_path / "unchecked"
    argv = ["export", str(exported), "--trial", str(trial["number"]), "--out", str(out)]
    assert main(argv) == 2 and "pass --no-check" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--no-check"]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["parity"]["metric"]["checked"] is False
    sums = json.loads((out / "SHA256SUMS.json").read_text())
    assert set(sums) == {"model.onnx", "export.json"}  # every other file of the folder
    assert main(["verify", str(out)]) == 0
    model = out / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # an edited graph
    assert (
        main(["verify", str(out)]) == 2
        and "changed after it was exported" in capsys.readouterr().err
    )
    st = tmp_path / "st"
    export(exported, fmt="safetensors", out=st)
    (st / "SHA256SUMS.json").write_text("{}")  # empty: verifies nothing, so refused
    with pytest.raises(CheckpointError, match="does not list every file"):
        load(st)
    with pytest.raises(CheckpointError, match="does not list every file"):
        verify(st)


def test_an_export_that_crashes_leaves_nothing_in_its_folder(exported, tmp_path, monkeypatch):
    from fulcrum import export as exporting

    def crash(*_args, **_kwargs):
        raise RuntimeError("the exporter fell over")

    monkeypatch.setattr(exporting, "_parity", crash)
    out = tmp_path / "crashed"
    assert main(["export", str(exported), "--out", str(out)]) == 3
    assert not out.exists() and not list(tmp_path.glob(".crashed*"))


def full_disk(after: int):
    """A write function that fails with ENOSPC after ``after`` successful calls."""
    calls = {"n": 0}

    def write(*_args, **_kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_full_disk_during_compress_export_or_search_is_exit_2_and_loses_nothing(
    exported, tmp_path, monkeypatch, capsys
):
    """Disk full: one line saying so, exit 2, the previous state intact; with room again, the
    same command finishes (a search resumes)."""
    from fulcrum import runfolder
    from fulcrum.search import trial

    toml = write_user_workload(tmp_path, name="fullcode")
    run = tmp_path / "crun"
    real = runfolder.write_bytes
    monkeypatch.setattr(runfolder, "write_bytes", lambda *a, **k: full_disk(0)())
    code = main(["compress", str(toml), "--recipe", "prune:0.5", "--out", str(run), *QUICK])
    assert code == 2 and "no space left" in capsys.readouterr().err
    assert not run.exists()  # nothing half-written
    monkeypatch.setattr(runfolder, "write_bytes", real)
    out = tmp_path / "ex"
    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: full_disk(0)())
    assert main(["export", str(exported), "--out", str(out)]) == 2
    assert "no space left" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(shutil, "copyfile", real_copy)

    searched = tmp_path / "srun"
    saving = trial.save_candidate
    fail = full_disk(2)

    def save(*args, **kwargs):
        fail()
        return saving(*args, **kwargs)

    monkeypatch.setattr(trial, "save_candidate", save)
    args = ["search", str(toml), "--out", str(searched), "--trials", "5", *SEARCH]
    assert main(args) == 2 and "no space left" in capsys.readouterr().err
    assert (
        len(list((searched / "trials").iterdir())) == 2
    )  # the trials measured before the disk filled are kept
    monkeypatch.setattr(trial, "save_candidate", saving)
    assert main(args) == 0  # room again: the search resumes to the trials asked for
    result = json.loads((searched / "results.json").read_text())
    assert sum(t["state"] == "COMPLETE" for t in result["trials"]) == 5
    assert any("retry_of" in t for t in result["trials"])  # the interrupted trial, again


@pytest.mark.damages_results
def test_an_edited_run_folder_is_refused_before_anything_is_rewritten(exported, tmp_path, capsys):
    """Finding 6: a results.json whose pick names a trial that does not exist failed with
    StopIteration after pareto.png was rewritten; an export of a sweet spot whose model.onnx
    is missing exited 3 and left an empty --out."""
    png = (exported / "pareto.png").read_bytes()
    saved = (exported / "results.json").read_text()
    result = json.loads(saved)
    result["pick"]["point"]["trial"] = "999"
    (exported / "results.json").write_text(json.dumps(result))
    assert main(["report", str(exported)]) == 2
    err = capsys.readouterr().err
    assert "names trial 999" in err and len(err.strip().splitlines()) == 1
    assert (exported / "pareto.png").read_bytes() == png
    (exported / "results.json").write_text(saved)
    (exported / "sweetspot" / "model.onnx").unlink()
    out = tmp_path / "nothing"
    assert main(["export", str(exported), "--out", str(out)]) == 2
    assert "model.onnx is missing" in capsys.readouterr().err and not out.exists()
