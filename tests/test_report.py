"""The report renders in a real browser; exports are verified and tampering is refused."""

import json
import shutil
import subprocess

import pytest
import torch

from fulcrum.cli import main
from fulcrum.errors import CheckpointError, ConfigError, OnnxError
from fulcrum.export import METRIC_TOLERANCE, export, load


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small finished search on the test user workload, shared by the tests of this file."""
    from tests_support import write_user_workload

    folder = tmp_path_factory.mktemp("report")
    toml = write_user_workload(folder)
    code = main(
        [
            "search",
            str(toml),
            "--out",
            str(folder / "run"),
            "--trials",
            "6",
            "--sampler",
            "random",
            "--seed",
            "3",
            "--trial-seconds",
            "0.02",
            "--max-drop",
            "100",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    return folder / "run"


def test_report_files_are_written(run_dir):
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert (
        "<script src" not in html and "Plotly.newPlot" in html
    )  # self-contained: the library is inline
    assert (run_dir / "pareto.png").stat().st_size > 10_000
    card = (run_dir / "card.md").read_text()
    assert "## What was done" in card and "## Limits" in card


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)"
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    main(["report", str(run_dir)])
    url = (run_dir / "report.html").resolve().as_uri()
    base = [
        "chromium",
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-rendered="charts"' in dom, "the chart script did not finish"
    html_tag = dom[dom.find("<html") : dom.find(">", dom.find("<html")) + 1]
    assert "data-js-errors" not in html_tag, html_tag
    assert dom.count('class="main-svg"') >= 4  # both Pareto charts were drawn by Plotly
    assert "sweet spot" in dom and 'id="trials"' in dom
    shot = run_dir / "report.png"
    subprocess.run(
        [*base, "--window-size=1280,2400", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)"
)
def test_the_report_plots_the_layer_sensitivity_of_the_search(run_dir, tmp_path):
    """A search's sensitivity analysis (results.json "sensitivity") is drawn: a heat map of
    points lost per layer and ratio, and each layer's share of MACs and time."""
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    result = json.loads((folder / "results.json").read_text())
    layer = {"kind": "Linear", "params": 10, "macs": 10, "channels": 16, "saved": {}}
    result["sensitivity"] = {
        "workload": "w", "metric": "accuracy", "baseline": 0.9, "samples": 24,
        "ratios": [0.25, 0.5], "int8_metric": 0.8, "latency_other": 0.1, "seconds": 1.0,
        "layers": [
            {**layer, "name": "fc1", "mac_share": 0.7, "prune": {"0.25": 0.9, "0.5": 0.7},
             "prune_error": None, "float_metric": 0.85, "latency_share": 0.6},
            {**layer, "name": "fc2", "mac_share": 0.3, "prune": {"0.25": 0.88, "0.5": 0.8},
             "prune_error": None, "float_metric": 0.8, "latency_share": 0.3},
        ],
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(result))
    assert main(["report", str(folder)]) == 0
    url = (folder / "report.html").resolve().as_uri()
    dom = subprocess.run(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
         "--virtual-time-budget=8000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert 'data-rendered="charts"' in dom and "Layer sensitivity" in dom
    heat = dom[dom.find('id="chart-prune"') : dom.find('id="chart-cost"')]
    bars = dom[dom.find('id="chart-cost"') : dom.find("<h2>All trials")]
    assert 'class="main-svg"' in heat and "pruning one layer alone: points lost" in heat
    assert 'class="main-svg"' in bars and "time share %" in bars


def test_the_card_lists_every_metric_beside_the_baseline(run_dir, tmp_path):
    """A forecaster's sweet spot is judged on MAE against the seasonal-naive forecast: the card
    (also in report.html) shows every metric of the task, baseline beside sweet spot."""
    from fulcrum.report import card
    from fulcrum.runfolder import read

    result = read(run_dir)
    text = card(result, run_dir)
    assert "| every metric | baseline | sweet spot |" in text and "| accuracy |" in text
    assert result.pick.point is not None
    chosen = result.pick.point  # the card reads the pick, which carries its trial's metrics
    result.baseline.metrics = {
        "mae": 0.411,
        "r2": 0.9879,
        "naive_mae": 1.66,
        "mae_vs_naive": 0.2476,
    }
    chosen.metrics = {"mae": 0.478, "r2": 0.9845, "naive_mae": 1.66, "mae_vs_naive": 0.2879}
    text = card(result, run_dir)
    assert "| mae | 0.411 | 0.478 |" in text and "| naive_mae | 1.66 | 1.66 |" in text
    assert "| mae_vs_naive | 0.2476 | 0.2879 |" in text


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "pt2"])
def test_exports_match_the_model(run_dir, tmp_path, fmt):
    record = export(run_dir, fmt=fmt, out=tmp_path / fmt).model_dump()
    parity = record["parity"]
    assert parity["samples"] > 0
    if record["runtime"] == "onnxruntime" and fmt == "onnx":  # the int8 graph: judged by metric
        metric = parity["metric"]
        assert abs(metric["exported"] - metric["recorded"]) <= metric["tolerance"]
        assert parity["vs_float_max_abs"] > 0
    else:
        assert parity["max_abs"] <= 1e-4
    assert json.loads((tmp_path / fmt / "SHA256SUMS.json").read_text())


@pytest.mark.parametrize(
    ("kind", "recipe"),
    [("fp32", "finetune:1"), ("pruned", "prune:0.5,round_to=1"), ("int8", "quantize:int8-static")],
)
def test_fp32_pruned_and_int8_exports_match(tmp_path, kind, recipe):
    from tests_support import write_user_workload

    toml = write_user_workload(tmp_path, name=f"exportcode_{kind}")
    run = tmp_path / "run"
    assert (
        main(
            [
                "compress",
                str(toml),
                "--recipe",
                recipe,
                "--out",
                str(run),
                "--seconds",
                "0.02",
                "--batch-sizes",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    records = {
        fmt: export(run, fmt=fmt, out=tmp_path / fmt).model_dump()
        for fmt in ("onnx", "safetensors", "pt2")
    }
    recorded = json.loads((run / "results.json").read_text())["pick"]["point"]
    for fmt, record in records.items():
        parity = record["parity"]
        if kind == "int8" and fmt == "onnx":  # int8 deviates from float by design: reported
            assert 0 < parity["vs_float_max_abs"] < 0.5
        else:  # the float model itself, or its int8 candidate's float weights
            assert parity["max_abs"] <= 1e-4, (kind, fmt, parity)
        if fmt == "onnx" or kind != "int8":  # the artifact is what was measured
            assert parity["metric"]["recorded"] == recorded["metric"]
            assert abs(parity["metric"]["exported"] - parity["metric"]["recorded"]) <= 0.005


@pytest.mark.parametrize("export_scores", ["higher", "lower"])
def test_an_export_that_does_not_reproduce_the_recorded_metric_is_refused(tmp_path, export_scores):
    from tests_support import write_user_workload

    toml = write_user_workload(tmp_path, name=f"exportcode_scores_{export_scores}")
    run = tmp_path / "run"
    args = ["compress", str(toml), "--recipe", "quantize:int8-static", "--out", str(run)]
    assert main([*args, "--seconds", "0.02", "--batch-sizes", "1", "--threads", "1"]) == 0
    results = json.loads((run / "results.json").read_text())
    # not what the file scores: three tolerances below it, or above it
    off_by = 3 * METRIC_TOLERANCE
    results["pick"]["point"]["metric"] += -off_by if export_scores == "higher" else off_by
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(OnnxError, match="but the run recorded"):
        export(run, fmt="onnx", out=tmp_path / "refused")
    assert not (tmp_path / "refused" / "model.onnx").exists()


def test_safetensors_export_reloads_and_refuses_tampering(run_dir, tmp_path):
    export(run_dir, fmt="safetensors", out=tmp_path / "st")
    model = load(tmp_path / "st")
    assert isinstance(model, torch.nn.Module)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "st" / "model.safetensors"
    original = path.read_bytes()
    state = load_file(str(path))
    name = next(iter(state))
    state[name] = torch.zeros(*[d + 1 for d in state[name].shape])  # a shape changed after export
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="changed after it was exported"):
        load(tmp_path / "st")
    path.write_bytes(original)
    data = (tmp_path / "st" / "model.safetensors").read_bytes()
    (tmp_path / "st" / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="changed after it was exported"):
        load(tmp_path / "st")
    (tmp_path / "st" / "SHA256SUMS.json").unlink()  # no checksums: refused unless asked
    with pytest.raises(CheckpointError, match=r"no SHA256SUMS\.json"):
        load(tmp_path / "st")
    with pytest.raises(CheckpointError, match="cannot be loaded"):  # the file itself fails
        load(tmp_path / "st", verify=False)


def test_load_refuses_an_export_whose_model_json_was_edited(run_dir, tmp_path):
    export(run_dir, fmt="safetensors", out=tmp_path / "st")
    manifest_path = tmp_path / "st" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "edited": True}))  # still a valid manifest
    with pytest.raises(CheckpointError, match=r"model\.json was changed after it was exported"):
        load(tmp_path / "st")


def test_export_errors_keep_the_run_folder(run_dir, tmp_path, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["export", str(run_dir), "--trial", "999"]) == 2
    assert "trial 999 has no saved model" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", "/proc/nope"]) == 2
    assert "not writable" in capsys.readouterr().err
    export(run_dir, fmt="onnx", out=tmp_path / "once")
    with pytest.raises(ConfigError, match="--force"):
        export(run_dir, fmt="onnx", out=tmp_path / "once")
    export(run_dir, fmt="onnx", out=tmp_path / "once", force=True)
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_the_report_reads_its_layer_table_and_never_reloads_the_workload(run_dir, monkeypatch):
    import fulcrum.workloads
    from fulcrum.report import write_report

    def refuse(*_args, **_kwargs):
        raise AssertionError("the report reloaded the workload")

    monkeypatch.setattr(fulcrum.workloads, "load", refuse)
    paths = write_report(run_dir)
    html = paths["report"].read_text()
    layers = json.loads((run_dir / "results.json").read_text())["layers"]
    assert layers["baseline"] and layers["baseline"][0]["name"] in html
    assert "cannot be listed" not in html
