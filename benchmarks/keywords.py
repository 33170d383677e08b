"""The `keywords` baseline: accuracy on unheard voices, size, compute, latency, first-use cost.

Builds the workload in a fresh, temporary cache: first the speech is synthesised with espeak-ng
(timed), then the baseline is trained (timed: the first load, less a second load from the
cache). Then its validation accuracy, parameters and MACs, and ONNX Runtime fp32 latency at
batch 1 and 32 (``fulcrum.measure.profile``: warm-up, interleaved timed runs, median and p90)
are measured. Everything runs on ``--threads`` threads (default: every core this process may
use). Prints the figures and writes benchmarks/results/keywords.json.

    .venv/bin/python benchmarks/keywords.py [--threads 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from fulcrum import measure
from fulcrum.evaluation import evaluate_workload
from fulcrum.runtimes import default_threads, torch_threads
from fulcrum.workloads import keywords, load


def seconds_of(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="fulcrum-bench-keywords-") as cache,
        torch_threads(args.threads),
    ):
        os.environ["FULCRUM_CACHE_DIR"] = cache
        synthesis = seconds_of(keywords.clips)
        first_load = seconds_of(lambda: load("keywords"))  # features and training
        start = time.perf_counter()
        workload = load("keywords")  # from the cache: what the first load spent besides training
        cached_load = time.perf_counter() - start
    metrics = evaluate_workload(workload, threads=args.threads).metrics
    profile = measure.profile(
        workload.pytorch_model("benchmarks/keywords.py"),
        workload.example_inputs,
        runtimes_=("onnxruntime",),
        batch_sizes=(1, 32),
        threads=args.threads,
        seconds=args.seconds,
    )
    latency = {f"onnxruntime_b{lat.batch_size}": asdict(lat) for lat in profile.latency}
    synthesis, training = round(synthesis, 1), round(first_load - cached_load, 1)
    payload = {
        "benchmark": "keywords",
        "workload": "keywords",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "description": workload.description,
        "clips": workload.info["clips"],
        "voices": workload.info["voices"],
        "val_accuracy": metrics["accuracy"],
        "val_macro_f1": metrics.get("f1_macro"),
        "params": profile.params_total,
        "macs": profile.macs,
        "flop_convention": profile.flop_convention,
        "input_shape": profile.input_shapes[0],
        "threads": args.threads,
        "synthesis_seconds": synthesis,
        "first_use_training_seconds": training,  # the first load less a load from the cache
        "cached_load_seconds": round(cached_load, 1),
        "epochs": keywords.EPOCHS,
        "latency": latency,
        "environment": profile.environment,
    }
    print(
        f"keywords  val accuracy {metrics['accuracy']:.4f} on {workload.info['clips']['val']} "
        f"clips of unheard voices  params {profile.params_total:,}  MACs {profile.macs / 1e6:.2f} M"
        f"  onnxruntime b1 {latency['onnxruntime_b1']['median_ms']:.3f} ms, b32 "
        f"{latency['onnxruntime_b32']['median_ms']:.2f} ms  synthesis {synthesis:.0f} s, "
        f"training {training:.0f} s ({keywords.EPOCHS} epochs, {args.threads} threads)",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "keywords.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
