"""``fulcrum profile WORKLOAD``: size, compute, latency and memory, layer by layer."""

from __future__ import annotations

import argparse
from typing import Any

from fulcrum.cli.common import add_workload_arguments, check_writable, int_list, write_json


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
    from fulcrum import measure, workloads

    check_writable(args.json)
    workload = workloads.load(
        args.workload, allow_pickle=args.allow_pickle, input_shapes=args.input_shape
    )
    result = measure.profile(
        workload.model,
        workload.example_inputs,
        runtimes_=args.runtime or ("torch", "onnxruntime"),
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        seconds=args.seconds,
    )
    measure.render(result, max_rows=args.max_rows)
    write_json(args.json, {"workload": workload.name, "profile": result.to_dict()})
    return 0
