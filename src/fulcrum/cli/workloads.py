"""``fulcrum workloads``: the built-in workloads, one line each."""

from __future__ import annotations

import argparse
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, write_json


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("workloads", help="list the built-in workloads")
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.workloads import cache_dir, describe

    check_writable(args.json)
    items = describe()
    if args.json is not None:
        write_json(args.json, {"workloads": items, "cache": str(cache_dir())})
        return 0
    width = max(map(len, items))
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")
    print(f"\n(trained baselines are cached in {cache_dir()}; also: a .toml file or an .onnx file)")
    return 0
