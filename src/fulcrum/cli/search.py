"""``fulcrum search WORKLOAD``: the Pareto frontier of quality against cost, and the sweet spot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fulcrum.cli.common import (
    add_workload_arguments,
    check_run_folder,
    check_writable,
    positive_int,
    seed_value,
    write_json,
)
from fulcrum.errors import ConfigError


def budget(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected KEY=NUMBER like latency_ms=2; got {text!r}"
        ) from None


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "search", help="search recipes for the Pareto frontier and the sweet spot"
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--trials", type=positive_int, default=40, help="finished trials to reach (default: 40)"
    )
    parser.add_argument(
        "--objective",
        action="append",
        dest="objectives",
        metavar="NAME",
        help="metric, latency_ms, size_bytes, macs, params (repeat; default: metric, latency_ms, size_bytes)",
    )
    parser.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=["onnxruntime", "torch"],
        help="where candidates are deployed and timed (default: onnxruntime)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="batch size of the latency objective"
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="allowed drop of the main metric in points (default: 1.0)",
    )
    parser.add_argument(
        "--relative", action="store_true", help="--max-drop is a percentage of the baseline"
    )
    parser.add_argument(
        "--budget",
        action="append",
        type=budget,
        default=[],
        metavar="KEY=VALUE",
        help="hard limit: latency_ms, size_mb, size_bytes, macs, params (repeat)",
    )
    parser.add_argument(
        "--policy", default="tolerance", help="tolerance (default), knee or weighted"
    )
    parser.add_argument("--sampler", default="tpe", help="tpe (default), nsga2 or random")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="local processes sharing the study"
    )
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: SQLite in the run folder)"
    )
    parser.add_argument(
        "--study", default=None, help="study name in the storage (default: fulcrum)"
    )
    parser.add_argument(
        "--artifacts",
        default=None,
        metavar="PATH",
        help="artifact store for the trials' files, reached by every machine of the study: a "
        "shared folder or s3://bucket/prefix (needs boto3); default: the run folder only",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder; run the same command with the same --out to resume",
    )
    parser.add_argument("--trial-seconds", type=float, default=0.5, help="timing budget per trial")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fulcrum import workloads
    from fulcrum.artifacts import open_store
    from fulcrum.compression import timestamp
    from fulcrum.study import SearchSettings, check_storage_url
    from fulcrum.sweetspot import check_policy, search

    budgets = dict(args.budget)
    if len(budgets) != len(args.budget):
        raise ConfigError("each --budget key may be given once.")
    settings = SearchSettings(
        trials=args.trials,
        objectives=tuple(args.objectives or ("metric", "latency_ms", "size_bytes")),
        runtime=args.runtime,
        batch_size=args.batch_size,
        max_drop=args.max_drop,
        relative=args.relative,
        budgets=budgets,
        policy=args.policy,
        sampler=args.sampler,
        seed=args.seed,
        workers=args.workers,
        trial_seconds=args.trial_seconds,
    )
    check_writable(args.json)
    check_policy(settings)
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
        check_run_folder(args.out, "search")
    if args.storage:
        check_storage_url(args.storage)
    if args.artifacts:
        open_store(args.artifacts)  # writable, before any work
    workload = workloads.load(
        args.workload, allow_pickle=args.allow_pickle, input_shapes=args.input_shape
    )
    out = args.out or Path("runs") / f"{workload.name}-search-{timestamp()}"
    check_writable(out, "--out", folder=True)
    check_run_folder(out, "search")
    console = Console(stderr=True)
    try:
        result = search(
            workload,
            settings,
            out,
            spec=args.workload,
            storage=args.storage,
            study_name=args.study,
            threads=args.threads,
            progress=lambda m: console.print(f"[dim]{m}[/dim]"),
            artifacts=args.artifacts,
        )
    except KeyboardInterrupt:  # the running trials were failed and queued again
        again = "the same command again" if args.out else f"the same command with --out {out}"
        print(f"fulcrum search: interrupted (run {again} to resume it)", file=sys.stderr)
        return 130
    render(result)
    from fulcrum.report import write_report

    paths = write_report(out)
    write_json(args.json, result)
    print(f"report: {paths['report']}")
    print(
        f"\nwrote {out}/results.json"
        + (f" and {out}/sweetspot/" if result["pick"]["point"] else "")
    )
    return 0 if result["pick"]["point"] else 1


def render(result: dict[str, Any]) -> None:
    """Baseline, sweet spot and frontier, with ratios to the baseline."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fulcrum.cli.common import human_bytes

    console = Console(width=None if Console().is_terminal else 120)
    base = result["baseline"]
    pick = result["pick"]
    name = Path(str(result["workload"])).name
    table = Table(
        title=f"{name}: {len(result['trials'])} trials in {result['search_seconds']:.0f} s",
        title_justify="left",
    )
    for col in ("", "trial", "metric", "drop", "latency ms", "size", "recipe"):
        table.add_column(
            col, justify="left" if col in ("", "recipe") else "right", no_wrap=col != "recipe"
        )
    table.add_row(
        "baseline",
        "-",
        f"{base['metric']:.4f}",
        "-",
        f"{base['latency_ms']:.3f}",
        human_bytes(base["size_bytes"]),
        "",
    )

    def row(label: str, p: dict[str, Any]) -> None:
        table.add_row(
            label,
            p["trial"],
            f"{p['metric']:.4f}",
            f"{(base['metric'] - p['metric']) * 100:.2f} pt",
            f"{p['latency_ms']:.3f} ({base['latency_ms'] / p['latency_ms']:.2f}x)",
            f"{human_bytes(p['size_bytes'])} ({base['size_bytes'] / p['size_bytes']:.1f}x)",
            escape(p.get("recipe", "")) or "(none)",
        )

    if pick["point"]:
        row("sweet spot", pick["point"])
    settings = result["settings"]
    allowed = None
    if settings.get("max_drop") is not None:
        scale = base["metric"] if settings.get("relative") else 1.0
        allowed = scale * settings["max_drop"] / 100
    within = [
        p for p in result["frontier"] if allowed is None or base["metric"] - p["metric"] <= allowed
    ]
    for p in within:  # the frontier within the metric budget: collapsed candidates are not news
        row("frontier", p)
    console.print(table)
    if len(within) < len(result["frontier"]):
        console.print(
            f"{len(result['frontier']) - len(within)} more frontier point(s) lose more than the "
            "allowed drop: in results.json and the report."
        )
    console.print(escape(pick["reason"]))
    if not pick["point"]:
        for p in pick["closest"]:
            console.print(
                f"closest: trial {p['trial']}: metric {p['metric']:.4f}, latency {p['latency_ms']:.3f} ms, "
                f"size {human_bytes(p['size_bytes'])}: {escape(p.get('recipe', '')) or '(none)'}"
            )
