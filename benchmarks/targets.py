"""A search over several deployment targets: each target's baseline, sweet spot and the runtime
defaults, all timed on one scale in one process.

Every trial draws a target; the baselines of all targets are timed together in the set-up
(their latencies compare), and each target's pick is among its own candidates. Prints a table
and writes JSON to benchmarks/results/targets-<workload>.json.

    .venv/bin/python benchmarks/targets.py [--workload digits] [--trials 24]
        [--runtime onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fulcrum.runtimes import unavailable
from fulcrum.search.run import search
from fulcrum.search.settings import SearchSettings
from fulcrum.workloads import load


def _row(label: str, point: dict[str, Any] | None, base: dict[str, Any]) -> dict[str, Any]:
    if point is None:
        return {"model": label, "found": False}
    return {
        "model": label,
        "recipe": point.get("recipe") or "(none)",
        "runtime": point.get("runtime"),
        "metric": round(point["metric"], 4),
        "drop_pt": round((base["metric"] - point["metric"]) * 100, 2),
        "latency_ms": round(point["latency_ms"], 4),
        "speedup_vs_reference_fp32": round(base["latency_ms"] / point["latency_ms"], 2),
        "size_ratio": round(base["size_bytes"] / point["size_bytes"], 2),
        "threads": point.get("threads"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--runtime", default="onnxruntime,openvino")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    workload = load(args.workload)
    run_dir = Path(tempfile.mkdtemp(prefix="fulcrum-bench-targets-"))
    settings = SearchSettings(
        trials=args.trials,
        max_drop=args.max_drop,
        max_epochs=args.max_epochs,
        runtime=args.runtime,
    )
    start = time.perf_counter()
    run = search(workload, settings, run_dir, spec=args.workload, progress=print)
    wall = time.perf_counter() - start
    result = run.model_dump(mode="json")
    base = result["baseline"]  # the first target's: every figure is on its scale
    rows = [
        _row(f"{t} fp32 (baseline)", {**f, "runtime": t}, base)
        for t, f in result["targets"].items()
    ]
    rows += [_row(f"default {d['trial']}", d, base) for d in result["defaults"]]
    rows += [
        _row(f"sweet spot on {t}", p["point"], base) for t, p in result["target_picks"].items()
    ]
    rows.append(_row("sweet spot overall", result["pick"]["point"], base))
    for r in rows:
        print(
            f"{r['model']:40} {r.get('runtime', ''):12} metric {r.get('metric', '-')} "
            f"drop {r.get('drop_pt', '-')} pt  {r.get('speedup_vs_reference_fp32', '-')}x faster "
            f"{r.get('size_ratio', '-')}x smaller  {r.get('recipe', '')[:70]}"
        )
    payload = {
        "benchmark": "targets",
        "workload": args.workload,
        "targets": settings.targets,
        "reference": f"{settings.primary} fp32, batch {settings.batch_size}",
        # a target's precision is in its name (openvino:bf16); where one is not offered, why
        "not_offered": {
            t: why for t in ("openvino:bf16", "torch-compile:bf16") if (why := unavailable(t))
        },
        "trials": args.trials,
        "wall_seconds": round(wall, 1),
        "max_drop_pt": args.max_drop,
        "rows": rows,
        "trials_per_target": {
            t: sum(1 for x in result["trials"] if x.get("runtime") == t) for t in settings.targets
        },
        "environment": result["environment"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"targets-{args.workload}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"search wall time {wall:.0f} s; wrote {path}")
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
