"""The `timeseries` workload: forecast quality beside seasonal-naive, size, compute and latency.

Builds the workload in a fresh, temporary cache, so that its baseline is trained here and timed,
then once more from that cache (training time = the difference). Scores the forecaster on the
validation weeks in ppm beside the seasonal-naive forecast, and profiles it: parameters, MACs,
and latency on ONNX Runtime and PyTorch at batch 1 and 32, timed interleaved in one process.
Everything runs on ``--threads`` threads (default: every core this process may use); on a
machine shared with other work, one thread avoids PyTorch's threads waiting on each other.
Prints the figures and writes benchmarks/results/timeseries.json.

    .venv/bin/python benchmarks/timeseries.py [--threads 1] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path

from fulcrum import measure
from fulcrum.compression import onnx_bytes
from fulcrum.evaluation import evaluate_workload
from fulcrum.runtimes import default_threads, torch_threads
from fulcrum.techniques import Candidate
from fulcrum.workloads import Workload, load


def timed_build() -> tuple[Workload, float, float]:
    """The workload, and the wall and CPU seconds its build took."""
    wall, cpu = time.perf_counter(), time.process_time()
    workload = load("timeseries")
    return workload, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = args.threads
    with (
        tempfile.TemporaryDirectory(prefix="fulcrum-bench-timeseries-") as cache,
        torch_threads(threads),
    ):
        os.environ["FULCRUM_CACHE_DIR"] = cache
        _, first_wall, first_cpu = timed_build()  # trains the baseline
        workload, cached_wall, cached_cpu = timed_build()
    metrics = evaluate_workload(workload, threads=threads).metrics
    profile = measure.profile(
        workload.model, workload.example_inputs, threads=threads, seconds=args.seconds
    )
    latency = {
        f"{lat.runtime}_b{lat.batch_size}": {"median_ms": lat.median_ms, "p90_ms": lat.p90_ms}
        for lat in profile.latency
    }
    payload = {
        "benchmark": "timeseries",
        "workload": "timeseries",
        "data": workload.info,
        "val_metrics": {k: None if v is None else round(v, 5) for k, v in metrics.items()},
        "units": "mae, rmse, naive_mae in ppm; mape as a fraction; mae_vs_naive = mae / naive_mae",
        "params": profile.params_total,
        "macs": profile.macs,
        "onnx_bytes": len(onnx_bytes(Candidate(model=workload.model), workload.example_inputs)),
        "latency": latency,
        "train_seconds": round(first_wall - cached_wall, 1),
        "train_cpu_seconds": round(first_cpu - cached_cpu, 1),
        "first_build_seconds": round(first_wall, 1),
        "cached_build_seconds": round(cached_wall, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "environment": {
            **profile.environment,
            "statsmodels": metadata.version("statsmodels"),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(
        f"val: MAE {metrics['mae']:.3f} ppm, RMSE {metrics['rmse']:.3f} ppm, "
        f"MAPE {100 * (metrics['mape'] or 0):.3f}%, R2 {metrics['r2']:.4f}; "
        f"seasonal-naive MAE {metrics['naive_mae']:.3f} ppm (model/naive {metrics['mae_vs_naive']:.3f})"
    )
    print(f"{profile.params_total:,} params, {profile.macs / 1e6:.2f} M MACs per window")
    for key, value in latency.items():
        print(f"latency {key}: median {value['median_ms']:.3f} ms, p90 {value['p90_ms']:.3f} ms")
    print(
        f"training {payload['train_seconds']} s wall ({payload['train_cpu_seconds']} s CPU) on "
        f"{threads} threads, load average {payload['load_average_1min']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "timeseries.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
