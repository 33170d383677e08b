"""The time-series workload: windows, the chronological split, seasonal-naive, the forecaster."""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fulcrum import evaluate
from fulcrum.cli import main
from fulcrum.compression import onnx_bytes
from fulcrum.errors import DataError, MissingDependencyError
from fulcrum.evaluation import evaluate_workload
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runtimes import OnnxModel
from fulcrum.techniques import Candidate
from fulcrum.workloads import load, timeseries
from fulcrum.workloads.timeseries import (
    Forecaster,
    VersusNaive,
    chronological_split,
    seasonal_naive,
    windows,
)

TINY = {"d_model": 16, "heads": 2, "layers": 1, "ffn": 32}


def test_windows_pair_each_window_with_the_values_after_it():
    inputs, targets = windows(np.arange(10.0), 4, 2)
    assert inputs.shape == (5, 4) and targets.shape == (5, 2)
    assert inputs[3].tolist() == [3, 4, 5, 6] and targets[3].tolist() == [7, 8]


def test_split_keeps_every_validation_target_after_every_training_target():
    length, window, horizon = 100, 10, 3
    train, val = chronological_split(length, window, horizon, val_fraction=0.2)
    train_targets = train[:, None] + window + np.arange(horizon)
    val_targets = val[:, None] + window + np.arange(horizon)
    assert train_targets.max() == 79 and val_targets.min() == 80  # the cut, nothing straddles it
    assert val_targets.max() == length - 1 and train[0] == 0  # and no window is wasted


def test_a_window_longer_than_the_series_is_a_one_line_data_error():
    with pytest.raises(DataError) as caught:
        windows(np.zeros(20), 30, 5)
    message = str(caught.value)
    assert "window of 30" in message and "has 20" in message and "at most 20 points" in message
    assert "\n" not in message


def test_a_too_long_window_in_a_user_workload_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "short_series.py").write_text(
        "import numpy as np\n"
        "from fulcrum.workloads.timeseries import Forecaster, windows\n\n"
        "def model():\n"
        "    return Forecaster(window=48, horizon=8, d_model=8, heads=2, layers=1, ffn=8)\n\n"
        "def splits():\n"
        "    x, y = windows(np.arange(20.0), 48, 8)\n"
        "    return {'val': (x, y)}\n"
    )
    (tmp_path / "forecast.toml").write_text(
        'task = "regression"\nmodel = "short_series:model"\ndata = "short_series:splits"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["evaluate", str(tmp_path / "forecast.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "window of 48" in err and "has 20" in err


def test_seasonal_naive_repeats_last_season_or_else_the_last_value():
    series = np.tile([1.0, 5.0, 2.0, 7.0], 5)  # period 4
    inputs, targets = windows(series, 8, 6)
    assert np.array_equal(seasonal_naive(inputs, 6, season=4), targets)
    short = seasonal_naive(inputs[:, -3:], 2, season=4)  # window shorter than a season
    assert np.array_equal(short, np.repeat(inputs[:, -1:], 2, axis=1))


def test_metric_is_in_series_units_beside_the_naive_forecast():
    last, scale = np.array([[10.0], [12.0]]), 2.0
    y = np.array([[0.0, 1.0], [0.0, -1.0]], dtype=np.float32)  # 10, 12 / 12, 10 in series units
    naive = np.full((2, 2), 11.0)  # off by 1 everywhere
    outputs = np.array([[0.0, 0.5], [-0.5, -1.0]])  # 10, 11 / 11, 10: off by 0, 1, 1, 0
    scores = VersusNaive(y, last, naive, scale)(y, outputs)
    assert scores["mae"] == pytest.approx(0.5) and scores["rmse"] == pytest.approx(0.5**0.5)
    assert scores["naive_mae"] == pytest.approx(1.0)
    assert scores["mae_vs_naive"] == pytest.approx(0.5)
    assert scores[MAIN_METRIC["regression"]] == pytest.approx(0.5)  # each horizon: 1 - 1/2
    perfect = VersusNaive(y, last, y * scale + last, scale)(y, outputs)
    assert perfect["naive_mae"] == 0.0 and np.isnan(perfect["mae_vs_naive"])  # undefined, not inf


def test_metric_refuses_a_shuffled_validation_loader():
    torch.manual_seed(0)
    x, y = torch.randn(40, 16), torch.randn(40, 4)
    model = Forecaster(window=16, horizon=4, **TINY).eval()
    metric = VersusNaive(y.numpy(), np.zeros((40, 1)), np.zeros((40, 4)), 1.0)
    ordered = DataLoader(TensorDataset(x, y), batch_size=8)
    assert evaluate(model, ordered, "regression", metric=metric).metrics["naive_mae"] is not None
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with pytest.raises(DataError, match=r"must not shuffle \(shuffle=False\)"):
        evaluate(model, shuffled, "regression", metric=metric)


def test_forecaster_gives_the_horizon_and_exports_to_onnx():
    torch.manual_seed(0)
    model = Forecaster(window=16, horizon=4, **TINY).eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5, 4)
    exported = OnnxModel(onnx_bytes(Candidate(model=model), (x[:1],)), threads=1)(x)
    assert torch.allclose(exported, out, atol=1e-4)


def test_pruning_keeps_the_fused_qkv_projection_whole_heads():
    from fulcrum.techniques import get
    from fulcrum.techniques.prune import PruneConfig
    from fulcrum.testing import tiny_context

    torch.manual_seed(0)
    model = Forecaster(window=16, horizon=4, d_model=32, heads=4, layers=1, ffn=32).eval()
    ctx = dataclasses.replace(tiny_context("mlp", model), example_inputs=(torch.randn(1, 16),))
    pruned = (
        get("prune").apply(PruneConfig(ratio=0.3, round_to=1), Candidate(model=model), ctx).model
    )
    layer = pruned.encoder[0]
    assert layer.qkv.out_features < 3 * 32  # head dimensions were removed ...
    assert layer.qkv.out_features % (3 * layer.heads) == 0  # ... alike in q, k, v and each head
    with torch.no_grad():
        assert pruned(torch.randn(3, 16)).shape == (3, 4)


def test_without_statsmodels_the_workload_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulcrum\[timeseries\]'"):
        load("timeseries")


def test_workload_is_chronological_and_judged_beside_seasonal_naive(monkeypatch):
    monkeypatch.setattr(timeseries, "Forecaster", functools.partial(Forecaster, **TINY))
    monkeypatch.setattr(timeseries, "EPOCHS", 1)
    workload = load("timeseries")
    assert workload.task == "regression" and workload.example_inputs[0].shape == (1, 64)
    assert workload.info["windows"] == {"train": 1756, "val": 450}
    for split in (workload.train, workload.val, workload.calib):  # no level, trend or not
        assert all(torch.all(x[:, -1] == 0) for x, _ in split)
    scores = evaluate_workload(workload).metrics
    assert {"mae", "rmse", "mape", "r2", "naive_mae", "mae_vs_naive"} <= set(scores)
    # seasonal-naive from the series itself: each validation target against the week 52 before
    series = timeseries.co2_series()
    starts = range(len(series) - 64 - 8 + 1 - 450, len(series) - 64 - 8 + 1)  # the last 450
    errors = [abs(series[t] - series[t - 52]) for i in starts for t in range(i + 64, i + 72)]
    assert scores["naive_mae"] == pytest.approx(np.mean(errors), rel=1e-6)
