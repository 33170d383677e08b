"""A compress run: apply a recipe, compare before with after, write the run folder.

``fulcrum compress`` is this function and a table; its results.json has the schema a search
writes (``fulcrum.sweetspot``), a search of one trial with the before/after ``comparison``
added, so that the report and the export read one schema.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from fulcrum import distributed
from fulcrum.workloads import Workload


def compress_run(
    workload: Workload,
    recipe: Any,
    *,
    seed: int = 0,
    threads: int | None = None,
    batch_sizes: list[int] | tuple[int, ...] = (1, 32),
    seconds: float = 2.0,
    progress: Any = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Compress, evaluate both models on their runtimes, time them side by side, and write the
    run folder (``out``): results.json in the schema a search writes (a search of one trial,
    with the before/after ``comparison`` added), the candidate's files.
    """
    import onnx

    from fulcrum import measure, timing
    from fulcrum.compression import (
        compress,
        deployed,
        onnx_bytes,
        output_of,
        recipe_from,
        recipe_text,
        save_candidate,
    )
    from fulcrum.evaluation import evaluate_workload
    from fulcrum.metrics import MAIN_METRIC
    from fulcrum.runtimes import OnnxModel, default_threads
    from fulcrum.techniques import Candidate

    model = workload.model  # a PyTorch module, or an ONNX workload's graph
    threads = threads or default_threads()
    output = output_of(workload)
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    say("evaluating the baseline")
    base_eval = evaluate_workload(workload, threads=threads)
    steps = recipe_from(recipe) if isinstance(recipe, str) else tuple(recipe)
    candidate = compress(model, steps, workload, seed=seed, threads=threads, progress=say)
    compress_seconds = time.perf_counter() - start
    if distributed.rank() > 0:  # a torchrun peer has trained its share; rank 0 measures, writes
        return {}
    say("evaluating the candidate on its runtime")
    runner = deployed(candidate, threads, output)
    cand_eval = evaluate_workload(workload, runner, threads=threads)
    say("measuring size and compute")
    base_onnx = onnx_bytes(Candidate.of(model), workload.example_inputs)
    cand_onnx = onnx_bytes(candidate, workload.example_inputs)
    base_profile = measure.profile(
        model, workload.example_inputs, latency=False, runtimes_=("torch",)
    )
    cand_profile = measure.profile(
        candidate.model if candidate.model is not None else OnnxModel(cand_onnx, threads),
        workload.example_inputs,
        latency=False,
        runtimes_=("torch",),
    )
    runners: dict[str, Any] = {"baseline/onnxruntime": OnnxModel(base_onnx, threads, output)}
    if isinstance(model, torch.nn.Module):
        runners["baseline/torch"] = model
    if candidate.onnx is None:
        runners["candidate/torch"] = candidate.model
    runners["candidate/onnxruntime"] = OnnxModel(cand_onnx, threads, output)
    say("timing baseline and candidate side by side")
    latency = timing.compare_latency(
        runners, workload.example_inputs, batch_sizes=batch_sizes, threads=threads, seconds=seconds
    )
    if isinstance(runner, OnnxModel):
        cand_nonzero = sum(
            int((t != 0).sum()) for t in _initializers(onnx.load_from_string(cand_onnx))
        )
    else:
        cand_nonzero = cand_profile.params_nonzero
    main = MAIN_METRIC[workload.task]
    comparison: dict[str, Any] = {
        "workload": workload.name,
        "workload_source": _source(workload),
        "task": workload.task,
        "recipe": recipe_text(steps),
        "steps": [
            {"config": s.config, "seconds": s.seconds, "notes": list(s.notes), "facts": s.facts}
            for s in candidate.steps
        ],
        "runtime": candidate.runtime,
        "seed": seed,
        "threads": threads,
        "compress_seconds": round(compress_seconds, 2),
        "main_metric": main,
        "baseline": {
            "evaluation": base_eval.to_dict(),
            "params": base_profile.params_total,
            "params_nonzero": base_profile.params_nonzero,
            "macs": base_profile.macs,
            "bytes": {**base_profile.artifact_bytes, "onnx": len(base_onnx)},
        },
        "candidate": {
            "evaluation": cand_eval.to_dict(),
            "params": cand_profile.params_total,
            "params_nonzero": cand_nonzero,
            "macs": cand_profile.macs,
            "bytes": {**cand_profile.artifact_bytes, "onnx": len(cand_onnx)},
        },
        "latency": [
            {
                "model": k[0].split("/")[0],
                "runtime": k[0].split("/")[1],
                "batch_size": k[1],
                "median_ms": v.median_ms,
                "p90_ms": v.p90_ms,
                "runs": v.runs,
            }
            for k, v in latency.items()
        ],
    }
    result = as_run(comparison)
    result["environment"] = base_profile.environment
    if isinstance(model, torch.nn.Module) and candidate.model is not None:
        result["layers"] = {
            "baseline": measure.layer_rows(model, workload.example_inputs),
            "sweet spot": measure.layer_rows(candidate.model, workload.example_inputs),
        }
    if out is not None:
        save_candidate(candidate, out, workload.example_inputs, _source(workload))
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _initializers(proto: Any) -> list[Any]:
    from onnx import numpy_helper

    return [
        numpy_helper.to_array(i)
        for i in proto.graph.initializer
        if i.data_type in (1, 2, 3, 10, 11, 16)
    ]


def _source(workload: Workload) -> str:
    from fulcrum.workloads import source_of

    return source_of(workload)


def as_run(result: dict[str, Any]) -> dict[str, Any]:
    """A compress run in the schema of a search (of one trial): one results.json schema, one
    report, one export check, for both commands."""
    from fulcrum.metrics import MAIN_METRIC

    main = MAIN_METRIC[result["task"]]
    runtime = result["runtime"] if result["runtime"] == "onnxruntime" else "torch"
    rows = {(r["model"], r["runtime"], r["batch_size"]): r["median_ms"] for r in result["latency"]}
    batch = min(r["batch_size"] for r in result["latency"])

    def figures(side: str) -> dict[str, Any]:
        data = result[side]
        return {
            "metric": data["evaluation"]["metrics"][main],
            "metrics": data["evaluation"]["metrics"],
            "latency_ms": rows.get((side, runtime, batch)) or rows[(side, "onnxruntime", batch)],
            "size_bytes": data["bytes"]["onnx"],
            "macs": data["macs"],
            "params": data["params"],
        }

    candidate = {**figures("candidate"), "trial": "0", "recipe": result["recipe"]}
    trial = {
        "number": 0,
        "state": "COMPLETE",
        **candidate,
        "constraints": [0.0],
        "seconds": result["compress_seconds"],
        "notes": [n for step in result["steps"] for n in step["notes"]],
    }
    return {
        "command": "compress",
        "workload": result["workload_source"],
        "task": result["task"],
        "baseline": figures("baseline"),
        "trials": [trial],
        "frontier": [candidate],
        "search_seconds": result["compress_seconds"],
        "pick": {
            "policy": "recipe",
            "reason": f"the result of the recipe {result['recipe']}",
            "point": candidate,
            "closest": [],
        },
        "settings": {
            "runtime": runtime,
            "batch_size": batch,
            "seed": result["seed"],
            "budgets": {},
            "max_drop": None,
            "relative": False,
            "objectives": ["metric", "latency_ms"],
            "trials": 1,
            "sampler": "-",
            "policy": "recipe",
            "recipe": result["recipe"],
        },
        "comparison": result,
    }
