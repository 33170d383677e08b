"""Does the search find the sweet spot every time? The same search with several seeds.

Runs ``fulcrum search`` (the library call, as the CLI does) on a built-in workload once per seed
and reports each sweet spot — its metric drop, how much smaller and how much faster at batch 1
on ONNX Runtime than the baseline (the search's final measurement, timed side by side with the
baseline), the search's wall time — and min / median / max over the seeds. Writes
benchmarks/results/seeds-<workload>.json.

With ``--peers-dir``, it also writes what ``../shared/tools/peers.py`` needs to put the sweet
spots beside the peers' int8 models in one timing run: the baseline graph, calibration and
evaluation arrays (the workload's calibration and validation splits), and each seed's sweet
spot; the command to run is printed.

    .venv/bin/python benchmarks/seeds.py [--workload digits] [--seeds 0,1,2,3,4] [--trials 40]
        [--max-drop 0.5] [--peers-dir /tmp/peers-digits]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fulcrum.compression import onnx_bytes
from fulcrum.runtimes import as_inputs
from fulcrum.search.run import search
from fulcrum.search.settings import SearchSettings
from fulcrum.techniques import Candidate
from fulcrum.workloads import load


def arrays(loader: object, limit: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in loader:  # type: ignore[attr-defined]
        xs.append(as_inputs(x)[0])
        ys.append(torch.as_tensor(y))
        if sum(len(t) for t in xs) >= limit:
            break
    return torch.cat(xs)[:limit].numpy(), torch.cat(ys)[:limit].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--peers-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    workload = load(args.workload)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = Path(tempfile.mkdtemp(prefix=f"fulcrum-seeds-{seed}-"))
        settings = SearchSettings(
            trials=args.trials, max_drop=args.max_drop, seed=seed, max_epochs=args.max_epochs
        )
        start = time.perf_counter()
        result = search(workload, settings, run_dir, spec=args.workload).model_dump(mode="json")
        wall = time.perf_counter() - start
        base, point = result["baseline"], result["pick"]["point"]
        states = [t["state"] for t in result["trials"]]
        row = {
            "seed": seed,
            "wall_seconds": round(wall, 1),
            "states": {s: states.count(s) for s in sorted(set(states))},
            "sweet_spot": None,
            # what the pick chose from: each frontier point's drop, speed-up and recipe
            "frontier": [
                {
                    "trial": f["trial"],
                    "drop_pt": round((base["metric"] - f["metric"]) * 100, 2),
                    "speedup_b1": round(1 / f["latency_ratio"], 2),
                    "threads": f.get("threads"),
                    "recipe": f["recipe"],
                }
                for f in result["frontier"]
            ],
        }
        if point:
            row["sweet_spot"] = {
                "trial": point["trial"],
                "recipe": point["recipe"],
                "metric": point["metric"],
                "drop_pt": round((base["metric"] - point["metric"]) * 100, 2),
                "size_ratio": round(base["size_bytes"] / point["size_bytes"], 2),
                "speedup_b1": round(1 / point["latency_ratio"], 2),
                "latency_ms": point["latency_ms"],
                # the intra-op thread counts each ran fastest with (``benchmarks/threads.py``
                # times the saved files at every count, in a process of its own)
                "threads": point.get("threads"),
                "baseline_threads": base.get("threads"),
            }
            if args.peers_dir:
                args.peers_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(run_dir / "sweetspot" / "model.onnx", args.peers_dir / f"s{seed}.onnx")
        runs.append(row)
        spot = row["sweet_spot"]
        print(
            f"seed {seed}: {wall:.0f} s; "
            + (
                f"{spot['drop_pt']:+.2f} pt drop, {spot['size_ratio']}x smaller, "
                f"{spot['speedup_b1']}x faster at batch 1: {spot['recipe']}"
                if spot
                else "no sweet spot within budget"
            ),
            flush=True,
        )
        shutil.rmtree(run_dir, ignore_errors=True)

    found = [r["sweet_spot"] for r in runs if r["sweet_spot"]]

    def spread(values: list[float]) -> dict[str, float]:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    summary = {
        key: spread([s[key] for s in found]) for key in ("drop_pt", "size_ratio", "speedup_b1")
    } | {"wall_seconds": spread([r["wall_seconds"] for r in runs])}
    goals = {
        "max_drop_pt": args.max_drop,
        "min_size_ratio": 15.0,
        "min_speedup_b1": 5.0,
        "max_wall_seconds": 300.0,
    }
    met = [
        bool(
            s
            and s["drop_pt"] <= args.max_drop + 1e-9
            and s["size_ratio"] >= goals["min_size_ratio"]
            and s["speedup_b1"] >= goals["min_speedup_b1"]
            and r["wall_seconds"] <= goals["max_wall_seconds"]
        )
        for r, s in ((r, r["sweet_spot"]) for r in runs)
    ]
    payload = {
        "benchmark": "seeds",
        "workload": args.workload,
        "trials": args.trials,
        "max_drop_pt": args.max_drop,
        "max_epochs": args.max_epochs,
        "runs": runs,
        "summary": summary,
        "goals": goals,
        "goals_met": met,
        "environment": result["environment"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(json.dumps(summary), f"goals met: {sum(met)}/{len(met)}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"seeds-{args.workload}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    if args.peers_dir:
        base_bytes = onnx_bytes(Candidate.of(workload.model), workload.example_inputs)
        (args.peers_dir / "baseline.onnx").write_bytes(base_bytes)
        x_cal, _ = arrays(workload.calib, 512)
        x_val, y_val = arrays(workload.val, 100_000)
        np.savez(args.peers_dir / "calib.npz", x=x_cal)
        np.savez(args.peers_dir / "eval.npz", x=x_val, y=y_val)
        extras = " ".join(
            f"--extra fulcrum-s{r['seed']}={args.peers_dir}/s{r['seed']}.onnx"
            for r in runs
            if r["sweet_spot"]
        )
        print(
            "peers: ../peers-venv/bin/python ../shared/tools/peers.py "
            f"{args.peers_dir / 'baseline.onnx'} --calib {args.peers_dir / 'calib.npz'} "
            f"--eval {args.peers_dir / 'eval.npz'} --out benchmarks/results/peers-{args.workload}.json "
            + extras
        )


if __name__ == "__main__":
    main()
