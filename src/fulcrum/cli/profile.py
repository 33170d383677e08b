"""``fulcrum profile WORKLOAD``: size, compute, latency and memory, layer by layer."""

from __future__ import annotations

import argparse
from typing import Any

from fulcrum.cli.common import (
    add_workload_arguments,
    check_writable,
    human,
    human_bytes,
    int_list,
    load_workload,
    write_json,
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("profile", help="how big and how slow a model is, layer by layer")
    add_workload_arguments(parser)
    parser.add_argument(
        "--runtime",
        action="append",
        choices=["torch", "onnxruntime"],
        help="runtime to time (repeat; default: both)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default=[1, 32],
        metavar="B,B",
        help="batch sizes to time (default: 1,32)",
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="timing budget in seconds (default: 2)"
    )
    parser.add_argument(
        "--max-rows", type=int, default=40, help="layers shown in the table (default: 40)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum import measure

    check_writable(args.json)
    workload = load_workload(args)
    result = measure.profile(
        workload.model,
        workload.example_inputs,
        runtimes_=args.runtime or ("torch", "onnxruntime"),
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        seconds=args.seconds,
    )
    render(result, max_rows=args.max_rows)
    write_json(args.json, {"workload": workload.name, "profile": result.to_dict()})
    return 0


def render(p: Any, console: Any = None, max_rows: int = 40) -> None:
    """Print a profile: a per-layer table, then totals, latency and memory."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    layers = Table(title=f"{p.model} — layers", title_justify="left")
    for col in ("layer", "type", "output shape", "params", "MACs", "share"):
        layers.add_column(col, justify="right" if col in ("params", "MACs", "share") else "left")
    shown = (
        p.layers
        if len(p.layers) <= max_rows
        else sorted(p.layers, key=lambda la: -la.macs - la.params)[:max_rows]
    )
    order = {id(la): i for i, la in enumerate(p.layers)}
    for la in sorted(shown, key=lambda la: order[id(la)]):
        layers.add_row(
            la.name,
            la.kind,
            "x".join(map(str, la.output_shape)) if la.output_shape else "-",
            f"{la.params:,}",
            human(la.macs),
            f"{la.share:.1%}",
        )
    console.print(layers)
    if len(shown) < len(p.layers):
        console.print(
            f"  ... {len(p.layers) - len(shown)} smaller layers not shown (all are in --json)"
        )
    summary = Table(title="totals", title_justify="left", show_header=False)
    summary.add_column(justify="left", no_wrap=True)
    summary.add_column(justify="right", no_wrap=True)
    summary.add_row("input shapes", ", ".join("x".join(map(str, s)) for s in p.input_shapes))
    summary.add_row(
        "parameters (total / trainable / non-zero)",
        f"{p.params_total:,} / {p.params_trainable:,} / {p.params_nonzero:,}",
    )
    summary.add_row(
        "bytes by dtype", ", ".join(f"{k}: {human_bytes(v)}" for k, v in p.bytes_by_dtype.items())
    )
    summary.add_row(
        "artifact on disk", ", ".join(f"{k}: {human_bytes(v)}" for k, v in p.artifact_bytes.items())
    )
    counted = {
        "meta": "on the meta device",
        "forward": "in one forward pass on the example inputs (the meta device could not run it)",
        "graph": "from the ONNX graph",
    }.get(p.counted_on, p.counted_on)
    summary.add_row(f"MACs ({p.flop_convention})", f"{human(p.macs)} MACs = {human(p.flops)} FLOPs")
    summary.add_row("MACs counted", counted)
    top_ops = sorted(p.macs_by_op.items(), key=lambda kv: -kv[1])[:6]
    summary.add_row("MACs by op", ", ".join(f"{k}: {human(v)}" for k, v in top_ops) or "-")
    blocks: dict[str, int] = {}  # by top-level module: a detector's backbone, neck and head
    for la in p.layers:
        blocks[la.name.split(".")[0]] = blocks.get(la.name.split(".")[0], 0) + la.macs
    if 1 < len(blocks) <= 8:
        summary.add_row("MACs by block", ", ".join(f"{k}: {human(v)}" for k, v in blocks.items()))
    summary.add_row(
        "peak memory of inference",
        ", ".join(f"{k}: {human_bytes(v)}" for k, v in p.peak_memory_bytes.items()) or "-",
    )
    console.print(summary)
    if p.latency:
        table = Table(title=f"latency ({p.threads} threads; ms)", title_justify="left")
        for col in ("runtime", "batch", "median", "p90", "p99", "spread", "runs", "items/s"):
            table.add_column(col, justify="left" if col == "runtime" else "right")
        for lat in p.latency:
            table.add_row(
                lat.runtime,
                str(lat.batch_size),
                f"{lat.median_ms:.3f}",
                f"{lat.p90_ms:.3f}",
                f"{lat.p99_ms:.3f}",
                f"{lat.spread_pct:.1f}%",
                str(lat.runs),
                f"{lat.throughput_per_s:,.0f}",
            )
        console.print(table)
