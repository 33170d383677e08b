"""Trial files in an artifact store shared by the machines of a study (``--artifacts``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from fulcrum.cli import main
from fulcrum.errors import ConfigError
from fulcrum.frontier import Budget
from fulcrum.runfolder import Figures, Reference
from fulcrum.search.settings import SearchSettings
from fulcrum.search.storage import check_same_search
from test_search import search_args


def machine(search_dir: Path, out: Path, url: str, *extra: str, trials: int = 3) -> list[str]:
    """One machine's `fulcrum search` command on the shared study ``url``."""
    args = search_args(search_dir, "fast", out, "--trials", str(trials), "--storage", url)
    return ["search", *args, "--study", "shared", *extra]


def test_a_trial_measured_on_one_machine_is_picked_and_exported_from_the_others_folder(
    search_dir, capsys
):
    """Machine A runs every trial; machine B joins the finished study with its own run folder,
    picks among A's trials (their files fetched from the shared store) and exports them."""
    url, store = f"sqlite:///{search_dir / 'shared.db'}", str(search_dir / "store")
    a, b = search_dir / "a", search_dir / "b"
    assert main(machine(search_dir, a, url, "--artifacts", store)) == 0
    trials = json.loads((a / "results.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3  # B finds the count reached
    assert main(machine(search_dir, b, url, "--artifacts", store)) == 0
    result = json.loads((b / "results.json").read_text())
    pick = result["pick"]["point"]["trial"]
    where = "trials" if pick.isdigit() else "defaults"  # a runtime default can be the pick
    assert (b / "sweetspot" / "model.onnx").read_bytes() == (
        a / where / pick / "model.onnx"
    ).read_bytes()
    assert "measured on other machines" not in result["pick"]["reason"]
    capsys.readouterr()
    assert main(["export", str(b)]) == 0  # the sweet spot, A's files
    assert "as recorded" in capsys.readouterr().out  # its parity check passed
    # a trial whose files B never fetched: export fetches them from the store
    shutil.rmtree(b / "trials")
    assert main(["export", str(b), "--trial", "1", "--out", str(b / "one")]) == 0
    assert "as recorded" in capsys.readouterr().out
    assert (b / "trials" / "1" / "model.onnx").read_bytes() == (
        a / "trials" / "1" / "model.onnx"
    ).read_bytes()


def test_an_unwritable_store_is_refused_before_any_trial(search_dir, capsys, monkeypatch):
    (search_dir / "file").write_text("")
    out = search_dir / "run"
    store = str(search_dir / "file" / "store")  # its parent is a file (root writes anywhere else)
    code = main(["search", *search_args(search_dir, "fast", out, "--artifacts", store)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--artifacts {store!r} is not writable" in err and "give a folder" in err
    assert not (out / "study.db").exists()
    monkeypatch.setitem(sys.modules, "boto3", None)  # not installed
    s3 = ["--artifacts", "s3://bucket/runs"]
    assert main(["search", *search_args(search_dir, "fast", out, *s3)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install boto3" in err


def test_a_machine_joining_with_another_kind_of_store_is_refused(search_dir, capsys):
    url = f"sqlite:///{search_dir / 'shared.db'}"
    store = str(search_dir / "store")
    assert main(machine(search_dir, search_dir / "a", url, "--artifacts", store, trials=1)) == 0
    capsys.readouterr()
    assert main(machine(search_dir, search_dir / "b", url)) == 2  # no --artifacts
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "keeps its trials' files in an artifact store (folder); pass --artifacts" in err
    base = Figures(metric=1.0, latency_ms=1.0, size_bytes=1, macs=1, params=1)
    plain = Reference(  # a study started without a store
        baseline=base,
        budget=Budget("metric", 1.0),
        workload="w",
        settings=SearchSettings(),
        artifacts=None,
    )
    with pytest.raises(ConfigError, match="was started without --artifacts"):
        check_same_search(plain, "w", SearchSettings(), "s", artifacts=store)
    on_s3 = plain.model_copy(update={"artifacts": "s3"})
    with pytest.raises(ConfigError, match=r"in an artifact store \(s3\)"):
        check_same_search(on_s3, "w", SearchSettings(), "s", artifacts=store)
