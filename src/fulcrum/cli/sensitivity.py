"""``fulcrum sensitivity WORKLOAD``: what pruning or quantizing each layer alone costs."""

from __future__ import annotations

import argparse
from typing import Any

from fulcrum.cli.common import add_workload_arguments, check_writable, load_workload, write_json


def ratio_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 0.95 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected pruning ratios in (0, 0.95] separated by commas, e.g. 0.25,0.5,0.75; got {text!r}"
        )
    return sorted(set(values))


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "sensitivity",
        help="per layer: the metric after pruning it alone, after int8 without it, its latency share",
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--ratios",
        type=ratio_list,
        default=[0.25, 0.5, 0.75],
        metavar="R,R",
        help="pruning ratios tried on each layer (default: 0.25,0.5,0.75)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=512,
        help="validation samples each measurement is judged on (default: 512)",
    )
    parser.add_argument("--no-prune", action="store_true", help="skip the pruning curves")
    parser.add_argument("--no-quantize", action="store_true", help="skip the int8 measurements")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    from fulcrum import sensitivity
    from fulcrum.errors import ConfigError

    check_writable(args.json)
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1; got {args.samples}.")
    workload = load_workload(args)
    result = sensitivity.analyse(
        workload,
        ratios=args.ratios,
        samples=args.samples,
        prune=not args.no_prune,
        quantize=not args.no_quantize,
        threads=args.threads,
        progress=args.display.say,
    )
    render(result)
    write_json(args.json, {"workload": workload.name, "sensitivity": result.to_dict()})
    return 0


def render(s: Any, console: Any = None) -> None:
    """A table: one row per layer, drops in points of the main metric."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"{s.workload} — per-layer sensitivity ({s.metric} {s.baseline:.4f} on "
        f"{s.samples} samples; drops in points)",
        title_justify="left",
    )
    table.add_column("layer")
    table.add_column("type")
    for col in ("MACs", "latency"):
        table.add_column(col, justify="right")
    for ratio in s.ratios:
        table.add_column(f"prune {ratio:g}", justify="right")
    if s.int8_metric is not None:
        table.add_column("int8 gain if float", justify="right")
    for layer in s.layers:
        row = [
            layer.name,
            layer.kind,
            f"{layer.mac_share:.1%}",
            "-" if layer.latency_share is None else f"{layer.latency_share:.1%}",
        ]
        for ratio in s.ratios:
            value = layer.prune.get(str(ratio))
            row.append(
                f"{(s.baseline - value) * 100:.2f}"
                if value is not None
                else ("failed" if layer.prune_error else "-")
            )
        if s.int8_metric is not None:
            row.append(
                "-"
                if layer.float_metric is None
                else f"{(layer.float_metric - s.int8_metric) * 100:+.2f}"
            )
        table.add_row(*row)
    console.print(table)
    if s.int8_metric is not None:
        console.print(
            f"all layers int8: {s.metric} {s.int8_metric:.4f} "
            f"({(s.baseline - s.int8_metric) * 100:.2f} pt below float)"
        )
    if s.latency_other is not None:
        console.print(f"time in no listed layer (pooling, reshapes, ...): {s.latency_other:.1%}")
    console.print(f"measured in {s.seconds:.0f} s")
