"""The sweet-spot search on a built-in workload, against references measured in the same run.

A search (40 trials by default; on `digits` under 10 minutes on two cores), then the sweet spot
and the references are evaluated and timed side by side with the baseline, interleaved in one
process, on ONNX Runtime at batch 1 and 32:
- ONNX Runtime's own default static int8 quantization of the baseline (no Fulcrum settings),
  calibrated on the same calibration batches;
- the baseline in eager fp32 PyTorch (timed only: each row's ``speedup_b1_vs_eager_torch``);
- with ``--references full`` (the default on `digits`) also the best single-technique recipe
  (each technique alone, picked by the same policy) and uniform 50% pruning with fine-tuning.
Prints a table and writes JSON to benchmarks/results/search-<workload>-<sampler>.json.

    .venv/bin/python benchmarks/search.py [--workload digits] [--trials 40] [--max-drop 1.0]
    .venv/bin/python benchmarks/search.py --workload resnet18 --trials 24 --max-epochs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fulcrum import timing
from fulcrum.compression import compress, onnx_bytes
from fulcrum.evaluation import evaluate_workload
from fulcrum.measuring import output_of
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runtimes import OnnxModel, default_threads
from fulcrum.search.run import search
from fulcrum.search.settings import SearchSettings
from fulcrum.techniques import Candidate
from fulcrum.workloads import load

SINGLE = [
    "quantize:int8-static",
    "quantize:int8-dynamic",
    "quantize:fp16",
    "prune:0.3",
    "prune:0.5",
    "lowrank:0.25",
    "sparsify:0.5",
]


def ort_default_int8(model_bytes: bytes, calib: Any) -> bytes:
    """ONNX Runtime's quantize_static with its defaults, as a user would call it first."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from fulcrum.runtimes import as_inputs

    names = OnnxModel(model_bytes).input_names

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {n: t.numpy() for n, t in zip(names, as_inputs(x), strict=True)}
                    for i, (x, _) in enumerate(calib)
                    if i < 8
                ]
            )

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model_bytes)
        quantize_static(str(src), str(dst), Reader())
        return onnx.load(str(dst)).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--references", choices=["full", "ort"], default=None)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = default_threads()
    references = args.references or ("full" if args.workload == "digits" else "ort")
    workload = load(args.workload)
    main_metric = MAIN_METRIC[workload.task]
    run_dir = Path(tempfile.mkdtemp(prefix="fulcrum-bench-search-"))
    settings = SearchSettings(
        trials=args.trials,
        max_drop=args.max_drop,
        sampler=args.sampler,
        max_epochs=args.max_epochs,
        seed=args.seed,
    )
    start = time.perf_counter()
    result = search(
        workload, settings, run_dir, spec=args.workload, progress=lambda m: print(m, flush=True)
    ).model_dump(mode="json")
    wall = time.perf_counter() - start
    base_metric = result["baseline"]["metric"]

    # the references, built and evaluated here
    base_bytes = onnx_bytes(Candidate(model=workload.model), workload.example_inputs)
    models: dict[str, bytes] = {"baseline": base_bytes}
    recipes: dict[str, str] = {"baseline": "(none)"}
    singles = {}
    models["ort-default-int8"] = ort_default_int8(base_bytes, workload.calib)
    recipes["ort-default-int8"] = "onnxruntime.quantization.quantize_static(defaults)"
    if references == "full":
        for text in SINGLE:
            candidate = compress(workload.model, text, workload)
            data = onnx_bytes(candidate, workload.example_inputs)
            singles[text] = data
        pruned = compress(workload.model, "prune:0.5 > finetune:epochs=10", workload)
        models["prune50+finetune"] = onnx_bytes(pruned, workload.example_inputs)
        recipes["prune50+finetune"] = "prune:0.5 > finetune:epochs=10"
    if result["pick"]["point"]:
        models["sweet spot"] = (run_dir / "sweetspot" / "model.onnx").read_bytes()
        recipes["sweet spot"] = result["pick"]["point"]["recipe"]

    output = output_of(workload)  # an ONNX workload's judged output; else each graph's first
    evaluations = {}

    def metric_of(data: bytes) -> float:
        model = OnnxModel(data, threads, output)
        evaluation = evaluate_workload(workload, model, threads=threads).metrics
        evaluations[data] = evaluation
        return float(evaluation[main_metric])

    floor = base_metric - args.max_drop / 100
    scored = {k: metric_of(v) for k, v in singles.items()}
    if singles:
        timings = timing.compare_latency(
            {k: OnnxModel(v, threads) for k, v in singles.items()}
            | {"baseline": OnnxModel(base_bytes, threads)},
            workload.example_inputs,
            batch_sizes=(1,),
            threads=threads,
            seconds=args.seconds,
        )
        feasible = [k for k in singles if scored[k] >= floor - 1e-9]
        best = (
            min(feasible, key=lambda k: timings[(k, 1)].median_ms)
            if feasible
            else max(scored, key=lambda k: scored[k])
        )
        models["best single technique"] = singles[best]
        recipes["best single technique"] = best

    # eager fp32 PyTorch (the model as trained, before any runtime) timed in the same loop
    eager = (
        {"eager torch fp32": workload.model.eval()}
        if isinstance(workload.model, torch.nn.Module)
        else {}
    )
    times = timing.compare_latency(
        {k: OnnxModel(v, threads, output) for k, v in models.items()} | eager,
        workload.example_inputs,
        batch_sizes=(1, 32),
        threads=threads,
        seconds=args.seconds,
    )
    rows = []
    for name, data in models.items():
        metric = metric_of(data)
        rows.append(
            {
                "model": name,
                "recipe": recipes[name],
                main_metric: round(metric, 4),
                "metrics": {
                    k: v for k, v in evaluations[data].items() if isinstance(v, int | float)
                },
                "drop_pt": round((base_metric - metric) * 100, 2),
                "within_budget": metric >= floor - 1e-9,
                "onnx_bytes": len(data),
                "size_ratio": round(len(base_bytes) / len(data), 2),
                "latency_b1_ms": times[(name, 1)].median_ms,
                "latency_b32_ms": times[(name, 32)].median_ms,
                "speedup_b1": round(
                    times[("baseline", 1)].median_ms / times[(name, 1)].median_ms, 2
                ),
                "speedup_b32": round(
                    times[("baseline", 32)].median_ms / times[(name, 32)].median_ms, 2
                ),
            }
        )
        r = rows[-1]
        print(
            f"{name:<22} {main_metric} {r[main_metric]:.4f} ({-r['drop_pt']:+.2f} pt) size x{r['size_ratio']:<5} "
            f"b1 {r['latency_b1_ms']:.3f} ms (x{r['speedup_b1']}) b32 {r['latency_b32_ms']:.3f} ms "
            f"(x{r['speedup_b32']})  {r['recipe']}"
        )
    eager_torch = {
        f"latency_b{b}_ms": times[("eager torch fp32", b)].median_ms for b in (1, 32) if eager
    }
    if eager:
        print(
            f"{'eager torch fp32':<22} (the baseline in PyTorch) b1 {eager_torch['latency_b1_ms']:.3f} ms "
            f"b32 {eager_torch['latency_b32_ms']:.3f} ms"
        )
        for r in rows:
            r["speedup_b1_vs_eager_torch"] = round(
                eager_torch["latency_b1_ms"] / r["latency_b1_ms"], 2
            )
    sweet = next((r for r in rows if r["model"] == "sweet spot"), None)
    verdicts = {}
    for r in rows:
        if sweet is None or r["model"] in ("baseline", "sweet spot"):
            continue
        verdicts[r["model"]] = bool(
            sweet["within_budget"]
            and (
                not r["within_budget"] or sweet[main_metric] >= r[main_metric] - args.max_drop / 100
            )
            and (
                sweet["latency_b1_ms"] < r["latency_b1_ms"] or sweet["onnx_bytes"] < r["onnx_bytes"]
            )
        )
    states = [t["state"] for t in result["trials"]]
    payload = {
        "benchmark": "search",
        "workload": args.workload,
        "main_metric": main_metric,
        "baseline": {k: v for k, v in result["baseline"].items() if k != "settings"},
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "seed": args.seed,
        "sampler": args.sampler,
        "wall_seconds": round(wall, 1),
        "states": {s: states.count(s) for s in set(states)},
        "max_drop_pt": args.max_drop,
        "pick": result["pick"],
        "rows": rows,
        "eager_torch_fp32": eager_torch,
        "sweet_spot_beats": verdicts,
        "environment": result["environment"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"search wall time {wall:.0f} s for {args.trials} trials; sweet spot beats: {verdicts}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"search-{args.workload}-{args.sampler}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
