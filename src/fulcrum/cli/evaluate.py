"""``fulcrum evaluate WORKLOAD``: the metrics the workload's task calls for."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fulcrum.cli.common import add_workload_arguments, check_writable, load_workload, write_json

if TYPE_CHECKING:
    from fulcrum.metrics import Evaluation


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate", help="accuracy, precision, recall, F1, AUC, ... on the validation split"
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="decision threshold of binary tasks (default: 0.5)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.evaluation import evaluate_workload

    check_writable(args.json)
    workload = load_workload(args)
    result = evaluate_workload(workload, threshold=args.threshold, threads=args.threads)
    print(f"{workload.name}: {workload.task}, {result.n_samples} validation samples")
    render(result)
    write_json(args.json, {"workload": workload.name, "evaluation": result.to_dict()})
    return 0


def render(evaluation: Evaluation, console: Any = None) -> None:
    """Print the metrics, notes and confusion matrix as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{evaluation.task} metrics (n={evaluation.n_samples})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in evaluation.metrics.items():
        table.add_row(name, "undefined" if value is None else f"{value:.4f}")
    console.print(table)
    for note in evaluation.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    if evaluation.confusion_matrix is not None and evaluation.labels is not None:
        console.print("confusion matrix (rows: true label, columns: predicted label)")
        cm = Table()
        cm.add_column("true\\pred")
        for label in evaluation.labels:
            cm.add_column(str(label), justify="right")
        for label, row in zip(evaluation.labels, evaluation.confusion_matrix, strict=True):
            cm.add_row(str(label), *(str(v) for v in row))
        console.print(cm)
