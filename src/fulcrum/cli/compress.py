"""``fulcrum compress WORKLOAD --recipe ...``: apply a recipe and compare before with after."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.cli.common import (
    add_workload_arguments,
    check_writable,
    int_list,
    load_workload,
    seed_value,
    write_config,
    write_json,
)
from fulcrum.errors import ConfigError

if TYPE_CHECKING:
    from fulcrum.runfolder import Run


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("compress", help="apply a compression recipe and compare before/after")
    add_workload_arguments(parser)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a run config (TOML) holding these options; those given here win. Every "
        "compression writes its own to RUN/config.toml, which runs it again",
    )
    parser.add_argument(
        "--recipe",
        help='steps joined by ">", e.g. "prune:ratio=0.5 > distill:epochs=5 > '
        'quantize:int8-static", or a TOML file (see `fulcrum techniques`); required',
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<workload>-<time>)"
    )
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seed of every random choice (default: 0)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default=[1, 32],
        metavar="B,B",
        help="batch sizes the candidate is timed at (default: 1,32)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per batch size")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # (the library loads torch: `fulcrum --help` stays fast without it)

    from fulcrum import distributed
    from fulcrum.compression import recipe_from, timestamp
    from fulcrum.report import write_report
    from fulcrum.runs import compress_run

    if args.recipe is None:
        raise ConfigError("--recipe is required (or a --config whose [compress] names one).")
    recipe = recipe_from(args.recipe)  # a bad recipe fails before anything is computed
    check_writable(args.json)
    workload = load_workload(args)
    peer = distributed.rank() > 0  # under torchrun, a process other than rank 0: trains only
    out = args.out or Path("runs") / f"{workload.name}-{timestamp()}"
    if not peer:
        check_writable(out, "--out", folder=True)
    result = compress_run(
        workload,
        recipe,
        seed=args.seed,
        threads=args.threads,
        batch_sizes=args.batch_sizes,
        seconds=args.seconds,
        progress=(lambda _m: None) if peer else args.display.say,
        out=out,
    )
    if result is None:
        return 0
    from fulcrum.compression import recipe_text
    from fulcrum.runconfig import CompressConfig

    section = CompressConfig(
        recipe=recipe_text(recipe),
        seed=args.seed,
        batch_sizes=args.batch_sizes,
        seconds=args.seconds,
    )
    write_config(args, workload, out, compress=section)
    render(result)
    paths = write_report(out)
    write_json(args.json, result.model_dump(mode="json"))
    print(f"report: {paths['report']}")
    written = ["results.json", "model.onnx", "model.safetensors"]
    print("\nwrote " + ", ".join(f"{out}/{name}" for name in written if (out / name).is_file()))
    return 0


def render(run: Run) -> None:
    """The before/after table: metrics, size, compute, latency, and the ratios."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fulcrum.cli.common import human, human_bytes

    console = Console()
    result = run.comparison  # the before/after figures of a compress run
    assert result is not None
    base, cand = result.baseline, result.candidate
    table = Table(
        title=f"{run.workload}: {escape(result.recipe)}  (runs on {result.runtime})",
        title_justify="left",
    )
    for col in ("", "baseline", "compressed", "ratio"):
        table.add_column(col, justify="left" if not col else "right")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.3f}x" if a and b is not None else "-"

    for name, value in base.metrics.items():
        after = cand.metrics.get(name)
        if name == "threshold":
            continue
        if value is None or after is None:
            delta = "-"
        elif run.task == "regression":  # errors in the target's units, not fractions
            delta = f"{after - value:+.4g}"
        else:
            delta = f"{(after - value) * 100:+.2f} pt"
        table.add_row(name, _num(value), _num(after), delta)
    table.add_row(
        "parameters", f"{base.params:,}", f"{cand.params:,}", ratio(base.params, cand.params)
    )
    table.add_row(
        "non-zero parameters",
        f"{base.params_nonzero:,}",
        f"{cand.params_nonzero:,}",
        ratio(base.params_nonzero, cand.params_nonzero),
    )
    table.add_row("MACs", human(base.macs), human(cand.macs), ratio(base.macs, cand.macs))
    for fmt in ("onnx", "pt2", "safetensors"):
        if fmt not in base.bytes or fmt not in cand.bytes:
            continue  # an ONNX workload has no PyTorch weights; an int8 graph none either
        table.add_row(
            f"bytes on disk ({fmt})",
            human_bytes(base.bytes[fmt]),
            human_bytes(cand.bytes[fmt]),
            ratio(base.bytes[fmt], cand.bytes[fmt]),
        )
    rows = {(r.model, r.runtime, r.batch_size): r for r in result.latency}
    for (model, runtime, batch), row in rows.items():
        if model != "baseline":
            continue
        paired = rows.get(("candidate", runtime, batch))
        for stat in ("median_ms", "p90_ms"):
            before_ms = getattr(row, stat)
            after_ms = getattr(paired, stat) if paired else None
            table.add_row(
                f"{runtime} batch {batch} {stat.replace('_ms', '')} (ms)",
                f"{before_ms:.3f}",
                f"{after_ms:.3f}" if after_ms else "-",
                f"{before_ms / after_ms:.2f}x faster"
                if after_ms
                else f"n/a (runs on {result.runtime} only)",
            )
    console.print(table)
    for step in result.steps:
        for note in step.notes:
            console.print(f"note ({step.config['type']}): {escape(note)}")


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
