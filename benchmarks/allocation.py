"""Sensitivity-driven pruning ratios against the uniform ratio, at the same recovery.

For each overall ratio R, two recipes are built from the workload's baseline and recovered the
same way (``finetune`` for E epochs, no early stopping): the uniform ``prune:R`` and ``prune``
with per-layer ratios from ``fulcrum.sensitivity.matched(R, strength)`` — as many MACs removed
as by the uniform ratio, taken from the layers that are costly and insensitive. Each recovery is
repeated with every seed of ``--seeds`` (one recovery varies by about a point on ``digits``),
and each model is judged on the full validation split by the mean over the seeds. Pruning is
deterministic, so one graph per recipe is timed on ONNX Runtime at batch 1, all side by side in
one process. Writes JSON and a chart of the two frontiers (metric against latency, the seeds'
spread as error bars) to benchmarks/results/.

    .venv/bin/python benchmarks/allocation.py [--workload digits] [--ratios 0.5,0.7,0.8,0.9]
        [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fulcrum import sensitivity, timing
from fulcrum.compression import compress, counts, onnx_bytes
from fulcrum.evaluation import evaluate_workload
from fulcrum.measure import environment
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runtimes import OnnxModel, default_threads
from fulcrum.techniques import Candidate
from fulcrum.workloads import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--ratios", default="0.4,0.5,0.6,0.7,0.8")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = default_threads()
    workload = load(args.workload)
    main_metric = MAIN_METRIC[workload.task]
    start = time.perf_counter()
    cache = Path(tempfile.gettempdir()) / f"fulcrum-allocation-{args.workload}"
    sens = sensitivity.cached(
        workload, cache, threads=threads, samples=args.samples, progress=print
    )
    sens_seconds = round(time.perf_counter() - start, 1)
    print(f"sensitivity in {sens_seconds} s (cached in {cache})")
    # the whole schedule on all the training data: early stopping on a small holdout adds a
    # point of noise between neighbouring ratios on `digits`
    recovery = f"finetune:epochs={args.epochs},patience=0"
    recipes = {"baseline": None}
    for ratio in (float(r) for r in args.ratios.split(",")):
        recipes[f"uniform {ratio:g}"] = f"prune:{ratio} > {recovery}"
        entries = "+".join(
            sensitivity.matched(workload, sens, ratio, args.strength, threads=threads)
        )
        recipes[f"allocated {ratio:g}"] = f"prune:ratio=0.0,layer_ratios={entries} > {recovery}"
    seeds = [int(s) for s in args.seeds.split(",")]
    graphs: dict[str, bytes] = {}
    metrics: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    macs: dict[str, int] = {}
    for name, recipe in recipes.items():
        metrics[name] = []
        for seed in seeds if recipe else seeds[:1]:
            began = time.perf_counter()
            candidate = (
                Candidate.of(workload.model)
                if recipe is None
                else compress(workload.model, recipe, workload, seed=seed, threads=threads)
            )
            seconds[name] = round(time.perf_counter() - began, 1)
            graph = onnx_bytes(candidate, workload.example_inputs)
            if name not in graphs:  # pruning is deterministic: one architecture per recipe
                graphs[name] = graph
                macs[name] = counts(candidate, workload.example_inputs)[1]
            score = evaluate_workload(workload, OnnxModel(graph, threads), threads=threads)
            metrics[name].append(float(score.metrics[main_metric]))
            print(
                f"{name:<16} seed {seed} {main_metric} {metrics[name][-1]:.4f} ({seconds[name]} s)",
                flush=True,
            )
    times = timing.compare_latency(
        {k: OnnxModel(v, threads) for k, v in graphs.items()},
        workload.example_inputs,
        batch_sizes=(1,),
        threads=threads,
        seconds=args.seconds,
    )
    base = times[("baseline", 1)].median_ms
    rows = []
    for name, recipe in recipes.items():
        latency = times[(name, 1)].median_ms
        mean = statistics.mean(metrics[name])
        rows.append(
            {
                "model": name,
                "recipe": recipe,
                main_metric: round(mean, 4),
                f"{main_metric}_by_seed": [round(m, 4) for m in metrics[name]],
                "drop_pt": round((metrics["baseline"][0] - mean) * 100, 2),
                "latency_b1_ms": latency,
                "speedup_b1": round(base / latency, 2),
                "onnx_bytes": len(graphs[name]),
                "macs": macs[name],
                "build_seconds": seconds[name],
            }
        )
        r = rows[-1]
        print(
            f"{name:<16} {main_metric} {r[main_metric]:.4f} ({-r['drop_pt']:+.2f} pt, "
            f"seeds {min(metrics[name]):.4f}-{max(metrics[name]):.4f})  "
            f"b1 {latency:.3f} ms (x{r['speedup_b1']})  MACs {macs[name]:,}"
        )
    payload = {
        "benchmark": "allocation",
        "workload": args.workload,
        "strength": args.strength,
        "recovery": recovery,
        "seeds": seeds,
        "sensitivity_seconds": sens_seconds,
        "sensitivity": sens.to_dict(),
        "rows": rows,
        "environment": environment(threads),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"allocation-{args.workload}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    chart(rows, main_metric, args.out / f"allocation-{args.workload}.svg", args.workload)
    print(f"wrote {path}")


def chart(rows: list[dict], metric: str, path: Path, workload: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("uniform", "o--"), ("allocated", "s-")):
        points = sorted(
            (r["latency_b1_ms"], r[metric], r[f"{metric}_by_seed"])
            for r in rows
            if r["model"].startswith(kind)
        )
        xs, ys, runs = zip(*points, strict=True)
        pairs = list(zip(ys, runs, strict=True))
        spread = [[y - min(r) for y, r in pairs], [max(r) - y for y, r in pairs]]
        ax.errorbar(xs, ys, yerr=spread, fmt=style, capsize=3, label=f"{kind} ratio")
    base = next(r for r in rows if r["model"] == "baseline")
    ax.axhline(base[metric], color="grey", lw=0.8, label="baseline")
    ax.set_xlabel("ONNX Runtime latency at batch 1 (ms)")
    ax.set_ylabel(f"{metric} (mean of the seeds; bars: min to max)")
    ax.set_title(f"{workload}: sensitivity-driven against uniform pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
