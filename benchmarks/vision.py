"""The vision built-ins' baselines: accuracy, size, compute, ONNX Runtime latency, training time.

For each of `resnet18` and `mobilenet`: the workload is loaded (its baseline trained on first use
and cached), then its validation accuracy, parameters and MACs, and ONNX Runtime fp32 latency at
batch 1 and 32 (``fulcrum.measure.profile``: warm-up, interleaved timed runs, median and p90) are
measured. The first load is timed; to time training, point the cache at an empty folder. Prints
a line per workload and writes JSON to benchmarks/results/vision-<workload>.json.

    FULCRUM_CACHE_DIR=$(mktemp -d) .venv/bin/python benchmarks/vision.py [--workload resnet18]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from fulcrum import evaluate, measure
from fulcrum.workloads import cache_dir, load

WORKLOADS = ("resnet18", "mobilenet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    for name in args.workload or WORKLOADS:
        cached = set(cache_dir().glob(f"{name}-*.safetensors"))
        start = time.perf_counter()
        workload = load(name)
        load_seconds = round(time.perf_counter() - start, 1)
        trained = Path(workload.source) not in cached
        model = workload.pytorch_model("benchmarks/vision.py")
        accuracy = evaluate(model, workload.val, workload.task).metrics["accuracy"]
        profile = measure.profile(
            model,
            workload.example_inputs,
            runtimes_=("onnxruntime",),
            batch_sizes=(1, 32),
            threads=args.threads,
            seconds=args.seconds,
        )
        latency = {f"onnxruntime_b{lat.batch_size}": asdict(lat) for lat in profile.latency}
        payload = {
            "benchmark": "vision",
            "workload": name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "description": workload.description,
            "val_accuracy": accuracy,
            "val_samples": len(workload.val.dataset),  # type: ignore[union-attr, arg-type]
            "params": profile.params_total,
            "macs": profile.macs,
            "flop_convention": profile.flop_convention,
            "input_shape": profile.input_shapes[0],
            # the first load: data, training and caching when not cached yet, else loading
            "trained_here": trained,
            "first_use_training_seconds": load_seconds if trained else None,
            "latency": latency,
            "environment": profile.environment,
        }
        print(
            f"{name:<10} val accuracy {accuracy:.4f}  params {profile.params_total / 1e6:.2f} M  "
            f"MACs {profile.macs / 1e9:.3f} G  onnxruntime b1 "
            f"{latency['onnxruntime_b1']['median_ms']:.2f} ms, b32 "
            f"{latency['onnxruntime_b32']['median_ms']:.2f} ms  "
            + (f"trained in {load_seconds:.0f} s" if trained else "baseline was cached"),
            flush=True,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"vision-{name}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
