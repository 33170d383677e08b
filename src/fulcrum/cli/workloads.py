"""``fulcrum workloads``: the built-in workloads, one line each."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("workloads", help="list the built-in workloads")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.workloads import cache_dir, describe

    items = describe()
    width = max(map(len, items))
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")
    print(f"\n(trained baselines are cached in {cache_dir()}; also: a .toml file or an .onnx file)")
    return 0
