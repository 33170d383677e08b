"""``fulcrum verify FOLDER``: check an export folder's files and score it again."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, positive_int, write_json


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "verify",
        help="check an export folder's checksums and re-evaluate it on the validation split",
    )
    parser.add_argument("folder", type=Path, help="a folder written by `fulcrum export`")
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="intra-op threads while scoring"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.export import verify  # (loads torch: `fulcrum --help` stays fast)

    check_writable(args.json)
    record, score = verify(args.folder, threads=args.threads)
    print(f"{args.folder}: every file matches SHA256SUMS.json ({len(record.files)} files)")
    if record.parity.metric is not None:
        print(
            f"{record.parity.metric.name} on the validation split: {score} "
            f"(when exported: {record.parity.metric.exported})"
        )
    write_json(args.json, {"export": record.model_dump(mode="json"), "metric_now": score})
    return 0
