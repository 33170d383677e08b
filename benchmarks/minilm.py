"""The sweet-spot search on `minilm` (real all-MiniLM-L6-v2), against references timed in the same run.

A search of ``--trials`` trials on two cores, then the sweet spot and the references are timed
side by side with the baseline (ONNX Runtime fp32), interleaved in one process, at batch 1 with
sequence 128 and at the validation data's median length:
- ONNX Runtime's dynamic quantizer with its defaults on the exported graph (what a user tries
  first: per-tensor weights, embeddings left in float);
- Fulcrum's ``quantize:int8-dynamic`` (per-channel weights, int8 embedding tables) alone, and
  after ``fuse`` (fused attention), with int8 or 4-bit embedding tables.
Cosine (mean, 5th percentile) and top-10 retrieval agreement are measured on the 600
validation sentences. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/minilm.py [--trials 16] [--max-drop 1.0]
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
from fulcrum.runtimes import OnnxModel, default_threads
from fulcrum.search.run import search
from fulcrum.search.settings import SearchSettings
from fulcrum.techniques import Candidate
from fulcrum.workloads import Workload, load

REFERENCES = {
    "fulcrum int8-dynamic": "quantize:int8-dynamic",
    "fulcrum fuse + int8-dynamic": "fuse > quantize:int8-dynamic",
    "fulcrum fuse + int8-dynamic, int4 embeddings": "fuse > quantize:int8-dynamic,embeddings=int4",
}


def ort_default_dynamic(model_bytes: bytes, **options: Any) -> bytes:
    """onnxruntime.quantization.quantize_dynamic with its defaults (and ``options``), as a user
    would call it."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model_bytes)
        quantize_dynamic(str(src), str(dst), **options)
        return onnx.load(str(dst)).SerializeToString()


def at_length(inputs: tuple[torch.Tensor, ...], length: int) -> tuple[torch.Tensor, ...]:
    """The example sequence cut to ``length`` tokens (the last one kept: [SEP])."""
    return tuple(torch.cat([x[:, : length - 1], x[:, -1:]], dim=1) for x in inputs)


def judge(
    workload: Workload,
    models: dict[str, bytes],
    recipes: dict[str, str],
    threads: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Every ONNX model timed side by side with the first (the baseline), interleaved, at batch
    1 with sequence 128 and the validation median length, and judged on the validation split."""
    median = int(workload.info["median_length"])
    runners = {k: OnnxModel(v, threads) for k, v in models.items()}
    times = {
        length: timing.compare_latency(
            runners,
            at_length(workload.example_inputs, length),
            batch_sizes=(1,),
            threads=threads,
            seconds=seconds,
        )
        for length in (128, median)
    }
    base = next(iter(models))
    rows = []
    for name, data in models.items():
        metrics = evaluate_workload(workload, runners[name], threads=threads).metrics
        row: dict[str, Any] = {
            "model": name,
            "recipe": recipes[name],
            "cosine_mean": round(float(metrics["cosine_mean"] or 0), 5),
            "cosine_p5": round(float(metrics["cosine_p5"] or 0), 5),
            "retrieval_at_10": round(float(metrics["retrieval_at_10"] or 0), 4),
            "onnx_bytes": len(data),
            "size_ratio": round(len(models[base]) / len(data), 2),
        }
        for length in (128, median):
            ms = times[length][(name, 1)].median_ms
            row[f"latency_b1_L{length}_ms"] = ms
            row[f"speedup_b1_L{length}"] = round(times[length][(base, 1)].median_ms / ms, 2)
        rows.append(row)
        print(
            f"{name:<34} cos {row['cosine_mean']:.4f} (p5 {row['cosine_p5']:.4f}) "
            f"top10 {row['retrieval_at_10']:.3f} size x{row['size_ratio']:<5} "
            f"b1 L128 x{row['speedup_b1_L128']} L{median} x{row[f'speedup_b1_L{median}']}  "
            f"{row['recipe']}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="no new search: time the references and the last search's pick again (its recipe "
        "compressed anew; a pick without training is the same graph), keeping the search's "
        "record from the JSON",
    )
    args = parser.parse_args()
    threads = default_threads()
    workload = load("minilm")
    run_dir = Path(tempfile.mkdtemp(prefix="fulcrum-bench-minilm-"))
    settings = SearchSettings(
        trials=args.trials, max_drop=args.max_drop, max_epochs=args.max_epochs
    )
    start = time.perf_counter()
    path = args.out / "search-minilm.json"
    if args.retime:
        previous = json.loads(path.read_text())
        result = {k: previous[k] for k in ("pick", "environment")}
        result["trials"] = previous["trials_table"]
        args.trials, args.max_epochs = previous["trials"], previous["max_epochs"]
        wall = previous["wall_seconds"]
        pick = compress(workload.model, result["pick"]["point"]["recipe"], workload)
        (run_dir / "sweetspot").mkdir()
        (run_dir / "sweetspot" / "model.onnx").write_bytes(
            onnx_bytes(pick, workload.example_inputs)
        )
    else:
        result = search(
            workload, settings, run_dir, spec="minilm", progress=lambda m: print(m, flush=True)
        ).model_dump(mode="json")
        wall = time.perf_counter() - start

    base_bytes = onnx_bytes(Candidate(model=workload.model), workload.example_inputs)
    models: dict[str, bytes] = {"baseline (ORT fp32)": base_bytes}
    recipes: dict[str, str] = {"baseline (ORT fp32)": "(none)"}
    models["ORT quantize_dynamic defaults"] = ort_default_dynamic(base_bytes)
    recipes["ORT quantize_dynamic defaults"] = "onnxruntime.quantization.quantize_dynamic()"
    models["ORT quantize_dynamic per-channel"] = ort_default_dynamic(base_bytes, per_channel=True)
    recipes["ORT quantize_dynamic per-channel"] = "quantize_dynamic(per_channel=True)"
    for label, recipe in REFERENCES.items():
        candidate = compress(workload.model, recipe, workload)
        models[label] = onnx_bytes(candidate, workload.example_inputs)
        recipes[label] = recipe
    if result["pick"]["point"]:
        models["sweet spot"] = (run_dir / "sweetspot" / "model.onnx").read_bytes()
        recipes["sweet spot"] = result["pick"]["point"]["recipe"]

    median = int(workload.info["median_length"])
    rows = judge(workload, models, recipes, threads, args.seconds)
    states = [t["state"] for t in result["trials"]]
    payload = {
        "benchmark": "search",
        "workload": "minilm",
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "wall_seconds": round(wall, 1),
        "states": {s: states.count(s) for s in set(states)},
        "max_drop_pt": args.max_drop,
        "median_length": median,
        "pick": result["pick"],
        "rows": rows,
        "trials_table": [
            {
                k: t.get(k)
                for k in ("number", "state", "recipe", "metric", "latency_ms", "size_bytes")
            }
            for t in result["trials"]
        ],
        "environment": result["environment"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"search wall time {wall:.0f} s for {args.trials} trials")
    if args.retime:
        payload["retimed"] = "references and pick timed again on a quiet machine (--retime)"
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
