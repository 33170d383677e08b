"""``fulcrum demo``: the embedded default, end to end on the ``digits`` workload.

Profiles the baseline, searches recipes for the sweet spot within 1 point of its accuracy,
writes the report and exports the sweet spot (ONNX and safetensors, verified), then prints a
short summary and the path of report.html.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, positive_int, write_json


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="the embedded default: search the digits workload end to end"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/demo-<time>)"
    )
    parser.add_argument(
        "--trials", type=positive_int, default=30, help="search trials (default: 30)"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fulcrum import measure, workloads
    from fulcrum.cli.search import render
    from fulcrum.compression import timestamp
    from fulcrum.export import export
    from fulcrum.report import write_report
    from fulcrum.search.run import search
    from fulcrum.search.settings import SearchSettings

    check_writable(args.json)
    start = time.perf_counter()
    console = Console(stderr=True)
    out = args.out or Path("runs") / f"demo-{timestamp()}"
    workload = workloads.load("digits")
    console.print(f"[bold]1/4 profiling the digits baseline[/bold] ({workload.description})")
    from fulcrum.cli.profile import render as render_profile

    render_profile(measure.profile(workload.model, workload.example_inputs), max_rows=12)
    console.print(
        f"[bold]2/4 searching {args.trials} recipes[/bold] (within 1.0 pt of the baseline's accuracy)"
    )
    settings = SearchSettings(trials=args.trials, max_drop=1.0)
    # a bar with an ETA on a terminal
    result = search(workload, settings, out, spec="digits", progress=args.display.search)
    render(result)
    console.print("[bold]3/4 writing the report[/bold]")
    paths = write_report(out)
    pick = result.pick.point
    if pick is not None:
        console.print("[bold]4/4 exporting the sweet spot[/bold] (verified against the model)")
        for fmt in ("onnx", "safetensors"):
            export(out, fmt=fmt, force=True)
        paths = write_report(out)  # the card now records the export checks
        base = result.baseline
        print(
            f"\nsweet spot: {pick.recipe or '(none)'}\n"
            f"  accuracy {base.metric:.4f} -> {pick.metric:.4f} ({(pick.metric - base.metric) * 100:+.2f} pt), "
            f"{base.size_bytes / pick.size_bytes:.1f}x smaller, "
            f"{base.latency_ms / pick.latency_ms:.2f}x faster at batch 1 on onnxruntime"
        )
    write_json(args.json, result.model_dump(mode="json"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; open {paths['report'].resolve()}")
    return 0 if pick is not None else 1
