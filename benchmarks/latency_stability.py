"""Are latency numbers stable enough to compare? Profile the same model twice in one process.

Issue #2 asks that two profiles of the same model, one after the other on an idle machine, give
medians within 10% of each other. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/latency_stability.py [--workload digits] [--repeats 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fulcrum import measure, workloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    workload = workloads.load(args.workload)
    profiles = [
        measure.profile(
            workload.model, workload.example_inputs, seconds=args.seconds, threads=args.threads
        )
        for _ in range(args.repeats)
    ]
    rows = []
    for first in profiles[0].latency:
        medians = [p.latency_of(first.runtime, first.batch_size).median_ms for p in profiles]  # type: ignore[union-attr]
        rows.append(
            {
                "runtime": first.runtime,
                "batch_size": first.batch_size,
                "medians_ms": medians,
                "max_over_min": round(max(medians) / min(medians), 4),
                "spread_pct": [
                    p.latency_of(first.runtime, first.batch_size).spread_pct for p in profiles
                ],  # type: ignore[union-attr]
            }
        )
        print(
            f"{first.runtime:<12} batch {first.batch_size:>3}: medians "
            + ", ".join(f"{m:.3f}" for m in medians)
            + f" ms  max/min {rows[-1]['max_over_min']:.3f}"
        )
    worst = max(r["max_over_min"] for r in rows)
    print(
        f"worst max/min ratio of medians: {worst:.3f} ({'within' if worst <= 1.10 else 'OUTSIDE'} 10%)"
    )
    result = {
        "benchmark": "latency_stability",
        "workload": args.workload,
        "repeats": args.repeats,
        "seconds_per_profile": args.seconds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "environment": profiles[0].environment,
        "rows": rows,
        "worst_max_over_min": worst,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency_stability-{args.workload}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
