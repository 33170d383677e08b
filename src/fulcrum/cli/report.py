"""``fulcrum report RUN_DIR``: re-render report.html, pareto.png and card.md of a search run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("report", help="re-render the HTML report of a search run")
    parser.add_argument("run_dir", type=Path, help="a folder written by `fulcrum search`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.report import write_report

    paths = write_report(args.run_dir)
    print(f"wrote {paths['report']}, {paths['png']} and {paths['card']}")
    return 0
