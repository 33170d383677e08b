"""Structural compression of `minilm` (real all-MiniLM-L6-v2): layer dropping, head and
feed-forward pruning and hidden-state distillation, timed against ONNX Runtime fp32 and the
int8-only recipe, every structural point beside the same student trained without the teacher.

The points are the structural ``--recipe``s given (default: ``STRUCTURAL_RECIPES``) and, with
``--trials N``, the frontier of a search of N trials whose space includes these techniques (its
warm start includes half-depth distilled students). The baseline (ONNX Runtime fp32), the
int8-only recipe (fused attention, dynamic int8, 4-bit embedding tables), every point and, for
each point that changed the structure (``layers``, ``heads``), the same recipe with its
``distill`` step replaced by ``finetune`` for as many epochs (SimCSE's contrastive loss: no
teacher) are timed side by side, interleaved in one process, at batch 1 with sequence 128 and at
the validation median length, and judged on the 600 validation sentences. Prints a table and
writes benchmarks/results/minilm-structure.json (minilm-structure-search.json with a search).

    .venv/bin/python benchmarks/minilm_structure.py [--recipe R ...] [--trials 0] [--max-drop 3]
    .venv/bin/python benchmarks/minilm_structure.py --trials 10 --max-epochs 1 --no-points
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from minilm import judge

from fulcrum.compression import compress, onnx_bytes
from fulcrum.measure import environment
from fulcrum.runtimes import default_threads
from fulcrum.search.run import search
from fulcrum.search.settings import SearchSettings
from fulcrum.techniques import Candidate
from fulcrum.workloads import load

INT8_ONLY = "fuse > quantize:int8-dynamic,embeddings=int4"
# the search's structural warm starts with 8-bit embedding tables, recovered for 8 epochs on
# all the training text (a search screens them on a holdout and may stop them early)
DISTILL = "distill:epochs=8,hidden=1,patience=0"
INT8 = "fuse > quantize:int8-dynamic,embeddings=int8"
STRUCTURAL_RECIPES = (
    f"layers:keep=3 > {DISTILL} > {INT8}",
    f"layers:keep=2 > heads:ratio=0.25,ffn=0.5 > {DISTILL} > {INT8}",
    f"layers:keep=2 > heads:ratio=0.5,ffn=0.75 > {DISTILL} > {INT8}",
)
STRUCTURAL = re.compile(r"\b(layers|heads)\b")


def without_teacher(recipe: str) -> str | None:
    """The recipe with its distill step replaced by finetune for as many epochs; None if it
    has no distill step."""
    steps = [s.strip() for s in recipe.split(">")]
    for i, step in enumerate(steps):
        if step.startswith("distill"):
            epochs = re.search(r"epochs=(\d+)", step)
            steps[i] = f"finetune:epochs={epochs.group(1) if epochs else 5}"
            return " > ".join(steps)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", help="a structural recipe (repeatable)")
    parser.add_argument(
        "--no-points", action="store_true", help="no structural recipes: the search's frontier only"
    )
    parser.add_argument("--trials", type=int, default=0)
    parser.add_argument("--max-drop", type=float, default=3.0)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = default_threads()
    workload = load("minilm")
    run_dir = Path(tempfile.mkdtemp(prefix="fulcrum-bench-structure-"))
    start = time.perf_counter()
    result: dict[str, Any] = {"frontier": [], "pick": None, "trials": []}
    if args.trials:
        settings = SearchSettings(
            trials=args.trials, max_drop=args.max_drop, max_epochs=args.max_epochs
        )
        result = search(
            workload, settings, run_dir, spec="minilm", progress=lambda m: print(m, flush=True)
        ).model_dump(mode="json")
    wall = time.perf_counter() - start

    base_bytes = onnx_bytes(Candidate(model=workload.model), workload.example_inputs)
    models: dict[str, bytes] = {"baseline (ORT fp32)": base_bytes}
    recipes: dict[str, str] = {"baseline (ORT fp32)": "(none)"}
    seconds: dict[str, float] = {}

    def add(label: str, recipe: str) -> None:
        print(f"{label}: {recipe}", flush=True)
        began = time.perf_counter()
        candidate = compress(workload.model, recipe, workload)
        seconds[label] = round(time.perf_counter() - began, 1)
        models[label], recipes[label] = onnx_bytes(candidate, workload.example_inputs), recipe

    add("int8 only", INT8_ONLY)
    given = [] if args.no_points else args.recipe or STRUCTURAL_RECIPES
    points = [(f"point {i}", r) for i, r in enumerate(given)]
    for label, recipe in points:
        add(label, recipe)
    for point in result["frontier"]:
        label = f"frontier trial {point['trial']}"
        models[label] = (run_dir / "trials" / point["trial"] / "model.onnx").read_bytes()
        recipes[label] = point["recipe"]
        points.append((label, point["recipe"]))
    for label, recipe in points:
        twin = without_teacher(recipe) if STRUCTURAL.search(recipe) else None
        if twin:
            add(f"{label}, no teacher", twin)

    median = int(workload.info["median_length"])
    rows = judge(workload, models, recipes, threads, args.seconds)
    for row in rows:
        row["structural"] = bool(STRUCTURAL.search(row["recipe"]))
        row["teacher"] = "no" if row["model"].endswith("no teacher") else "yes"
        row["compress_seconds"] = seconds.get(row["model"])
    states = [t["state"] for t in result["trials"]]
    payload = {
        "benchmark": "minilm-structure",
        "workload": "minilm",
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "max_drop_pt": args.max_drop,
        "wall_seconds": round(wall, 1),
        "states": {s: states.count(s) for s in set(states)},
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
        "environment": environment(threads),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.trials:
        print(f"search wall time {wall:.0f} s for {args.trials} trials")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"minilm-structure{'-search' if args.trials else ''}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
