"""Batch-1 latency of ONNX models at each intra-op thread count, interleaved in one process.

A search runs each candidate (and the baseline) with the thread count it is fastest with
(``timing.compare_tuned``). This checks its figures from outside: every model at every count of
``runtimes.thread_choices``, timed side by side, and each one's speed-up over the baseline three
ways — both on the same count (for each count), and each on its own fastest count here. The
models are files, for example the baseline and sweet spots that ``benchmarks/seeds.py
--peers-dir DIR`` leaves in DIR. Writes benchmarks/results/threads-<name>.json.

    .venv/bin/python benchmarks/threads.py /tmp/peers-digits/baseline.onnx \\
        /tmp/peers-digits/s0.onnx ... --name digits [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fulcrum.measure import environment
from fulcrum.runtimes import OnnxModel, default_threads, thread_choices
from fulcrum.timing import compare_latency


def example_input(model: OnnxModel) -> tuple[torch.Tensor, ...]:
    """One batch-1 input of the shape the graph declares (its symbolic dimensions set to 1)."""
    spec = model.session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    return (torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32)),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--name", required=True)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3, help="timing runs; medians of each")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    counts = thread_choices(default_threads())
    paths = {"baseline": args.baseline, **{p.stem: p for p in args.models}}
    runners = {
        f"{name}@{count}": OnnxModel(path, threads=count)
        for name, path in paths.items()
        for count in counts
    }
    inputs = example_input(runners[f"baseline@{counts[0]}"])
    medians: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(args.rounds):  # each round: every model at every count, interleaved
        times = compare_latency(
            runners, inputs, batch_sizes=(1,), threads=max(counts), seconds=args.seconds
        )
        for (label, _), latency in times.items():
            medians[label].append(latency.median_ms)
    ms = {label: statistics.median(values) for label, values in medians.items()}
    base = {c: ms[f"baseline@{c}"] for c in counts}
    rows = []
    for name in paths:
        own = {c: ms[f"{name}@{c}"] for c in counts}
        fastest = min(own, key=lambda c: own[c])
        rows.append(
            {
                "model": name,
                "median_ms": own,
                "fastest_threads": fastest,
                "speedup_same_threads": {c: round(base[c] / own[c], 2) for c in counts},
                "speedup_each_at_fastest": round(min(base.values()) / own[fastest], 2),
            }
        )
        print(
            f"{name:<10} "
            + " ".join(f"{c}t {own[c]:.4f} ms" for c in counts)
            + " | x same threads "
            + " ".join(f"{c}t {rows[-1]['speedup_same_threads'][c]}" for c in counts)
            + f" | each at its fastest x{rows[-1]['speedup_each_at_fastest']}"
        )
    payload = {
        "benchmark": "threads",
        "name": args.name,
        "batch_size": 1,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "rows": rows,
        "environment": environment(max(counts)),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"threads-{args.name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
