"""``fulcrum search WORKLOAD``: the Pareto frontier of quality against cost, and the sweet spot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.cli.common import (
    add_workload_arguments,
    check_writable,
    load_workload,
    positive_int,
    seed_value,
    write_config,
    write_json,
)
from fulcrum.errors import ConfigError

if TYPE_CHECKING:
    from fulcrum.runfolder import Point, Run


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
        "--config",
        type=Path,
        metavar="FILE",
        help="a run config (TOML) holding these options; those given here win. Every search "
        "writes its own to RUN/config.toml, which runs it again",
    )
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
        metavar="TARGET[,TARGET...]|auto",
        help="where candidates are deployed and timed: onnxruntime (default), openvino, torch, "
        "torch-compile, and openvino:bf16 / torch-compile:bf16 where the CPU has bf16 "
        "(`fulcrum env` lists this machine's); several, comma-separated, or auto (every "
        "available one) searches the target too",
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
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seed of the sampler and training (default: 0)"
    )
    _add_scale_out_arguments(parser)
    _add_timing_arguments(parser)
    parser.set_defaults(run=run)


def _add_scale_out_arguments(parser: Any) -> None:
    """Where the study lives and who works on it."""
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


def _add_timing_arguments(parser: Any) -> None:
    """How long candidates are timed, and how long they may train."""
    parser.add_argument(
        "--trial-seconds",
        type=float,
        default=0.5,
        help="timing budget per trial, in seconds (default: 0.5)",
    )
    parser.add_argument(
        "--final-seconds",
        type=float,
        default=2.0,
        help="timing budget per finalist when the frontier is timed again (default: 2.0)",
    )
    parser.add_argument(
        "--finalists",
        type=positive_int,
        default=8,
        help="frontier points timed again, side by side with the baseline (default: 8)",
    )
    parser.add_argument(
        "--max-epochs",
        type=positive_int,
        default=10,
        help="the most epochs of recovery training a trial may draw (default: 10)",
    )


def run(args: argparse.Namespace) -> int:
    # (the library loads torch and optuna: `fulcrum --help` stays fast without them)

    from fulcrum.artifacts import open_store
    from fulcrum.compression import timestamp
    from fulcrum.report import write_report
    from fulcrum.runfolder import claim
    from fulcrum.search.run import search
    from fulcrum.search.settings import SearchSettings
    from fulcrum.search.storage import check_storage_url
    from fulcrum.workloads import source_of

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
        final_seconds=args.final_seconds,
        finalists=args.finalists,
        max_epochs=args.max_epochs,
    )
    check_writable(args.json)
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    if args.storage:
        check_storage_url(args.storage)
    if args.artifacts:
        open_store(args.artifacts)  # writable, before any work
    workload = load_workload(args)
    out = args.out or Path("runs") / f"{workload.name}-search-{timestamp()}"
    check_writable(out, "--out", folder=True)
    claim(out, "search", source_of(workload), {}, create=False)  # another run's: before work
    try:
        result = search(
            workload,
            settings,
            out,
            spec=args.workload,
            storage=args.storage,
            study_name=args.study,
            threads=args.threads,
            progress=args.display.search,  # a bar with an ETA on a terminal
            artifacts=args.artifacts,
        )
    except KeyboardInterrupt:  # the running trials were failed and queued again
        again = "the same command again" if args.out else f"the same command with --out {out}"
        print(f"fulcrum search: interrupted (run {again} to resume it)", file=sys.stderr)
        return 130
    write_config(args, workload, out, search=settings)
    render(result)
    paths = write_report(out)
    write_json(args.json, result.model_dump(mode="json"))
    print(f"report: {paths['report']}")
    print(f"\nwrote {out}/results.json" + (f" and {out}/sweetspot/" if result.pick.point else ""))
    return 0 if result.pick.point else 1


def render(result: Run) -> None:
    """Baseline, sweet spot and frontier, with ratios to the baseline."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fulcrum.cli.common import human_bytes

    console = Console(width=None if Console().is_terminal else 120)
    base, pick = result.baseline, result.pick
    name = Path(str(result.workload)).name
    table = Table(
        title=f"{name}: {len(result.trials)} trials in {result.seconds:.0f} s",
        title_justify="left",
    )
    for col in ("", "trial", "metric", "drop", "latency ms", "size", "recipe"):
        table.add_column(
            col, justify="left" if col in ("", "recipe") else "right", no_wrap=col != "recipe"
        )
    table.add_row(
        "baseline",
        "-",
        f"{base.metric:.4f}",
        "-",
        f"{base.latency_ms:.3f}",
        human_bytes(base.size_bytes),
        "",
    )

    def row(label: str, p: Point) -> None:
        table.add_row(
            label,
            p.trial.removesuffix("-default"),
            f"{p.metric:.4f}",
            f"{(base.metric - p.metric) * 100:.2f} pt",
            f"{p.latency_ms:.3f} ({base.latency_ms / p.latency_ms:.2f}x)",
            f"{human_bytes(p.size_bytes)} ({base.size_bytes / p.size_bytes:.1f}x)",
            escape(p.recipe) or "(none)",
        )

    if pick.point:
        row("sweet spot", pick.point)
    floor = result.budget.floor
    # the frontier within the metric budget: collapsed candidates are not news
    within = [p for p in result.frontier if floor is None or result.budget.allows(_point(p))]
    for p in within:
        row("frontier", p)
    for p in result.defaults:  # what the runtime gives for free, timed beside the pick
        row("as it is" if p.trial.endswith("-baseline") else "runtime default", p)
    for target, figures in result.targets.items():  # a search of several targets
        picked = result.target_picks.get(target)
        table.add_row(f"{target} baseline", "-", f"{figures.metric:.4f}", "-",
                      f"{figures.latency_ms:.3f}", human_bytes(figures.size_bytes), "")  # fmt: skip
        if picked is not None and picked.point is not None:
            row(f"{target} pick", picked.point)
    console.print(table)
    if len(within) < len(result.frontier):
        console.print(
            f"{len(result.frontier) - len(within)} more frontier point(s) lose more than the "
            "allowed drop or break a limit: in results.json and the report."
        )
    console.print(escape(pick.reason))
    if not pick.point:
        for p in pick.closest:
            console.print(
                f"closest: trial {p.trial}: metric {p.metric:.4f}, latency {p.latency_ms:.3f} ms, "
                f"size {human_bytes(p.size_bytes)}: {escape(p.recipe) or '(none)'}"
            )


def _point(p: Point) -> Any:
    from fulcrum import frontier
    from fulcrum.sweetspot import FIGURES

    return frontier.Point(p.trial, p.model_dump(include=set(FIGURES)))
