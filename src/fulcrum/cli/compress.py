"""``fulcrum compress WORKLOAD --recipe ...``: apply a recipe and compare before with after."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fulcrum.cli.common import (
    add_workload_arguments,
    check_run_folder,
    check_writable,
    int_list,
    seed_value,
    write_json,
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("compress", help="apply a compression recipe and compare before/after")
    add_workload_arguments(parser)
    parser.add_argument(
        "--recipe",
        required=True,
        help='steps joined by ">", e.g. "prune:ratio=0.5 > distill:epochs=5 > '
        'quantize:int8-static", or a TOML file (see `fulcrum techniques`)',
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<workload>-<time>)"
    )
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seed of every random choice (default: 0)"
    )
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 32], metavar="B,B")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per batch size")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fulcrum import workloads
    from fulcrum.compression import recipe_from, timestamp

    console = Console(stderr=True)
    recipe = recipe_from(args.recipe)  # a bad recipe fails before anything is computed
    check_writable(args.json)
    workload = workloads.load(
        args.workload, allow_pickle=args.allow_pickle, input_shapes=args.input_shape
    )
    out = args.out or Path("runs") / f"{workload.name}-{timestamp()}"
    check_writable(out, "--out", folder=True)
    check_run_folder(out, "compress")
    result = compress_and_compare(
        workload,
        recipe,
        seed=args.seed,
        threads=args.threads,
        batch_sizes=args.batch_sizes,
        seconds=args.seconds,
        progress=lambda m: console.print(f"[dim]{m}[/dim]"),
        out=out,
    )
    render(result)
    from fulcrum.report import write_report

    paths = write_report(out)
    write_json(args.json, result)
    print(f"report: {paths['report']}")
    print(f"\nwrote {out}/results.json, {out}/model.onnx, {out}/model.safetensors")
    return 0


def compress_and_compare(
    workload: Any,
    recipe: Any,
    *,
    seed: int = 0,
    threads: int | None = None,
    batch_sizes: list[int] | tuple[int, ...] = (1, 32),
    seconds: float = 2.0,
    progress: Any = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Compress, evaluate both models on their runtimes, and time them side by side."""
    import onnx

    from fulcrum import measure, timing
    from fulcrum.compression import (
        compress,
        deployed,
        onnx_bytes,
        recipe_from,
        recipe_text,
        save_candidate,
    )
    from fulcrum.evaluation import evaluate_workload
    from fulcrum.metrics import MAIN_METRIC
    from fulcrum.runtimes import OnnxModel, default_threads
    from fulcrum.techniques import Candidate

    threads = threads or default_threads()
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    say("evaluating the baseline")
    base_eval = evaluate_workload(workload, threads=threads)
    steps = recipe_from(recipe) if isinstance(recipe, str) else tuple(recipe)
    candidate = compress(workload.model, steps, workload, seed=seed, threads=threads, progress=say)
    compress_seconds = time.perf_counter() - start
    say("evaluating the candidate on its runtime")
    runner = deployed(candidate, threads)
    cand_eval = evaluate_workload(workload, runner, threads=threads)
    say("measuring size and compute")
    base_profile = measure.profile(
        workload.model, workload.example_inputs, latency=False, runtimes_=("torch",)
    )
    cand_profile = measure.profile(
        candidate.model, workload.example_inputs, latency=False, runtimes_=("torch",)
    )
    base_onnx = onnx_bytes(Candidate(model=workload.model), workload.example_inputs)
    cand_onnx = onnx_bytes(candidate, workload.example_inputs)
    runners: dict[str, Any] = {
        "baseline/torch": workload.model,
        "baseline/onnxruntime": OnnxModel(base_onnx, threads),
    }
    if candidate.onnx is None:
        runners["candidate/torch"] = candidate.model
    runners["candidate/onnxruntime"] = OnnxModel(cand_onnx, threads)
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
    result: dict[str, Any] = {
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
            "bytes": {
                "safetensors": base_profile.artifact_bytes["safetensors"],
                "onnx": len(base_onnx),
            },
        },
        "candidate": {
            "evaluation": cand_eval.to_dict(),
            "params": cand_profile.params_total,
            "params_nonzero": cand_nonzero,
            "macs": cand_profile.macs,
            "bytes": {
                "safetensors": cand_profile.artifact_bytes["safetensors"],
                "onnx": len(cand_onnx),
            },
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
        "environment": base_profile.environment,
        "layers": {
            "baseline": measure.layer_rows(workload.model, workload.example_inputs),
            "sweet spot": measure.layer_rows(candidate.model, workload.example_inputs),
        },
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


def _source(workload: Any) -> str:
    from fulcrum.workloads import source_of

    return source_of(workload)


def render(result: dict[str, Any]) -> None:
    """The before/after table: metrics, size, compute, latency, and the ratios."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fulcrum.cli.common import human, human_bytes

    console = Console()
    base, cand = result["baseline"], result["candidate"]
    table = Table(
        title=f"{result['workload']}: {escape(result['recipe'])}  (runs on {result['runtime']})",
        title_justify="left",
    )
    for col in ("", "baseline", "compressed", "ratio"):
        table.add_column(col, justify="left" if not col else "right")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.3f}x" if a and b is not None else "-"

    for name, value in base["evaluation"]["metrics"].items():
        after = cand["evaluation"]["metrics"].get(name)
        if name == "threshold":
            continue
        delta = (
            f"{(after - value) * 100:+.2f} pt" if value is not None and after is not None else "-"
        )
        table.add_row(name, _num(value), _num(after), delta)
    table.add_row(
        "parameters",
        f"{base['params']:,}",
        f"{cand['params']:,}",
        ratio(base["params"], cand["params"]),
    )
    table.add_row(
        "non-zero parameters",
        f"{base['params_nonzero']:,}",
        f"{cand['params_nonzero']:,}",
        ratio(base["params_nonzero"], cand["params_nonzero"]),
    )
    table.add_row(
        "MACs", human(base["macs"]), human(cand["macs"]), ratio(base["macs"], cand["macs"])
    )
    for fmt in ("onnx", "safetensors"):
        table.add_row(
            f"bytes on disk ({fmt})",
            human_bytes(base["bytes"][fmt]),
            human_bytes(cand["bytes"][fmt]),
            ratio(base["bytes"][fmt], cand["bytes"][fmt]),
        )
    rows = {(r["model"], r["runtime"], r["batch_size"]): r for r in result["latency"]}
    for (model, runtime, batch), row in rows.items():
        if model != "baseline":
            continue
        after = rows.get(("candidate", runtime, batch))
        for stat in ("median_ms", "p90_ms"):
            table.add_row(
                f"{runtime} batch {batch} {stat.replace('_ms', '')} (ms)",
                f"{row[stat]:.3f}",
                f"{after[stat]:.3f}" if after else "-",
                f"{row[stat] / after[stat]:.2f}x faster" if after else "n/a (int8 graph)",
            )
    console.print(table)
    for step in result["steps"]:
        for note in step["notes"]:
            console.print(f"note ({step['config']['type']}): {escape(note)}")


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
