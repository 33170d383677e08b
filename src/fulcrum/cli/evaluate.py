"""``fulcrum evaluate WORKLOAD``: the metrics the workload's task calls for."""

from __future__ import annotations

import argparse
from typing import Any

from fulcrum.cli.common import add_workload_arguments, check_writable, load_workload, write_json


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
    from fulcrum import metrics
    from fulcrum.evaluation import evaluate_workload

    check_writable(args.json)
    workload = load_workload(args)
    result = evaluate_workload(workload, threshold=args.threshold, threads=args.threads)
    print(f"{workload.name}: {workload.task}, {result.n_samples} validation samples")
    metrics.render(result)
    write_json(args.json, {"workload": workload.name, "evaluation": result.to_dict()})
    return 0
