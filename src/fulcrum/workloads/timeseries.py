"""``timeseries``: weekly Mauna Loa CO2 (statsmodels) and a small Transformer forecaster.

The series ships inside statsmodels (``pip install 'fulcrum[timeseries]'``): 2,284 weekly means
from March 1958 to December 2001, with a yearly cycle of about 6 ppm on a trend of about
1.5 ppm a year — enough points for a network, and a clear season for the seasonal-naive
baseline to exploit. The 59 missing weeks are filled by linear interpolation.

Each sample is a window of ``WINDOW`` weeks and the ``HORIZON`` weeks that follow. The series is
split in time: training windows forecast the first 80% of the weeks, validation windows only
the weeks after those, so no validation target was ever seen in training. The trend carries the
validation weeks above every level seen in training, so each window and its targets are taken
relative to the window's last week (as NLinear does) and divided by the training windows'
spread around it: the model forecasts changes and never meets a level it was not trained on.
Int8 calibration depends on this too: with the level inside the graph, static int8 clipped the
validation levels to the calibration windows' range (validation MAE 31 ppm, measured here).

Beside the model, the workload's ``metric`` reports the regression metrics in ppm and the
seasonal-naive forecast (the same week one year earlier, read from the window itself) on the
same targets: ``mae_vs_naive`` below 1 means the network earns its size.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from fulcrum.errors import ConfigError, DataError, require
from fulcrum.metrics import regression_metrics
from fulcrum.workloads.base import Workload
from fulcrum.workloads.builtin import loaders, trained

DESCRIPTION = (
    "weekly Mauna Loa CO2 1958-2001 (statsmodels): 64 weeks in, 8 weeks out; Transformer "
    "encoder forecaster (2 layers, d_model 64, 72k params), judged beside seasonal-naive"
)
WINDOW, HORIZON, SEASON = 64, 8, 52  # weeks; the window holds more than one season
VAL_FRACTION = 0.2
EPOCHS, BATCH, LR, SEED = 20, 64, 1e-3, 0


def co2_series() -> np.ndarray:
    """Weekly mean CO2 at Mauna Loa in ppm, missing weeks linearly interpolated."""
    require("statsmodels", "timeseries")
    from statsmodels.datasets import co2

    values = co2.load_pandas().data["co2"].to_numpy(dtype=np.float64)
    weeks = np.arange(len(values))
    known = np.isfinite(values)
    return np.interp(weeks, weeks[known], values[known])


def windows(series: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (inputs, targets) pair: ``window`` consecutive values and the ``horizon`` after them.

    >>> x, y = windows(np.arange(6.0), 3, 2)
    >>> x.tolist(), y.tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [[3.0, 4.0], [4.0, 5.0]])
    """
    if window < 1 or horizon < 1:
        raise ConfigError(f"window and horizon must be at least 1; got {window} and {horizon}.")
    if window + horizon > len(series):
        raise DataError(
            f"a window of {window} plus a horizon of {horizon} needs {window + horizon} points but "
            f"the series has {len(series)}; use a window and horizon of at most {len(series)} "
            "points together."
        )
    pairs = sliding_window_view(np.asarray(series), window + horizon)
    return pairs[:, :window].copy(), pairs[:, window:].copy()


def chronological_split(
    length: int, window: int, horizon: int, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Start indices of the training and validation windows of a series of ``length`` values.

    Training windows' targets lie in the first ``1 - val_fraction`` of the series, validation
    windows' targets after it; validation inputs may reach back into the training part, as a
    forecast made at that time would. The windows whose targets straddle the cut are dropped.
    """
    cut = round(length * (1 - val_fraction))
    train = np.arange(cut - window - horizon + 1)
    val = np.arange(cut - window, length - window - horizon + 1)
    if len(train) < 1 or len(val) < 1:
        raise DataError(
            f"a series of {length} values split at {cut} leaves {len(train)} training and "
            f"{len(val)} validation windows of {window}+{horizon}; use a longer series or "
            "a shorter window."
        )
    return train, val


def seasonal_naive(inputs: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Each window's forecast of the ``horizon`` values after it by the value one season earlier.

    A window shorter than a season falls back to plain naive: its last value, repeated.
    """
    width = inputs.shape[1]
    if width < season:
        return np.repeat(inputs[:, -1:], horizon, axis=1)
    return inputs[:, width - season + np.arange(horizon) % season]


@dataclass(frozen=True, eq=False)
class VersusNaive:
    """The workload's ``metric``: regression metrics in the series' units, and seasonal-naive's MAE.

    Called as ``metric(y_true, outputs)`` with the scaled validation targets and forecasts in the
    validation loader's order; ``targets`` are those targets as built, to check that order (each
    window's last value and seasonal-naive forecast are lined up with it).
    """

    targets: np.ndarray  # scaled changes, (windows, horizon)
    last: np.ndarray  # each window's last value in the series' units, (windows, 1)
    naive: np.ndarray  # in the series' units, (windows, horizon)
    scale: float

    def __call__(self, y_true: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        y = np.asarray(y_true)
        if y.shape != self.targets.shape or not np.allclose(y, self.targets):
            raise DataError(
                f"the forecast metric got {y.shape} validation targets that are not the "
                f"{self.targets.shape} it was built for, in order; evaluate on the workload's own "
                "validation loader, which must not shuffle (shuffle=False)."
            )
        actual = y.astype(np.float64) * self.scale + self.last
        forecast = np.asarray(outputs, dtype=np.float64) * self.scale + self.last
        scores = {
            k: v for k, v in regression_metrics(actual, forecast).metrics.items() if v is not None
        }
        naive_mae = float(np.mean(np.abs(self.naive - actual)))
        ratio = scores["mae"] / naive_mae if naive_mae > 0 else math.nan
        return {**scores, "naive_mae": naive_mae, "mae_vs_naive": ratio}


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward blocks, written with plain Linear layers.

    Hand-written rather than ``nn.TransformerEncoderLayer``: its attention keeps fused projection
    tensors that low-rank factorisation and pruning cannot see as Linear layers.
    """

    def __init__(self, d_model: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, steps, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, steps, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(n, steps, -1)
        x = x + self.out(attended)
        return x + self.ffn(self.norm2(x))


class Forecaster(nn.Module):
    """A Transformer encoder over the window's steps; the last step's state gives the forecast.

    Takes ``(n, window)`` scaled values, each relative to its window's last one, and returns
    the ``(n, horizon)`` changes that follow, in the same units.
    """

    def __init__(
        self,
        window: int = WINDOW,
        horizon: int = HORIZON,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ffn: int = 128,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(1, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(1, window, d_model))
        self.encoder = nn.Sequential(*(EncoderLayer(d_model, heads, ffn) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.encoder(self.embed(x.unsqueeze(-1)) + self.position)
        return self.head(self.norm(steps[:, -1]))


def build() -> Workload:
    series = co2_series()
    inputs, targets = windows(series, WINDOW, HORIZON)
    train_at, val_at = chronological_split(len(series), WINDOW, HORIZON)
    last = inputs[:, -1:]
    scale = float((inputs[train_at] - last[train_at]).std())

    def relative(values: np.ndarray, at: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((values[at] - last[at]) / scale).astype(np.float32))

    x_val, y_val = relative(inputs, val_at), relative(targets, val_at)
    train, val, calib = loaders(
        relative(inputs, train_at),
        relative(targets, train_at),
        x_val,
        y_val,
        batch_size=BATCH,
        seed=SEED,
    )
    model, path = trained(
        "timeseries",
        sys.modules[__name__],
        Forecaster,
        train,
        "regression",
        epochs=EPOCHS,
        lr=LR,
        seed=SEED,
    )
    naive = seasonal_naive(inputs[val_at], HORIZON, SEASON)
    metric = VersusNaive(y_val.numpy(), last[val_at], naive, scale)
    return Workload(
        name="timeseries",
        task="regression",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(x_val[:1],),
        metric=metric,
        source=str(path),
        description=DESCRIPTION,
        info={
            "series": "statsmodels.datasets.co2, weekly ppm, 1958-03-29 to 2001-12-29",
            "window": WINDOW,
            "horizon": HORIZON,
            "season": SEASON,
            "windows": {"train": len(train_at), "val": len(val_at)},
            "scale": scale,
        },
    )
