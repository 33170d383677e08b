"""``fulcrum techniques``: the registered compression techniques and their parameters."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, write_json


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "techniques", help="list the compression techniques and their parameters"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.techniques import TECHNIQUES

    check_writable(args.json)
    if args.json is not None:
        listed = {
            name: {
                "summary": t.summary,
                "speeds_up": t.speeds_up,
                "parameters": {f.name: _default(f) for f in dataclasses.fields(t.config)},
            }
            for name, t in sorted(TECHNIQUES.items())
        }
        write_json(args.json, {"techniques": listed})
        return 0
    for name, technique in sorted(TECHNIQUES.items()):
        faster = (
            f"faster on {technique.speeds_up}" if technique.speeds_up else "not faster by itself"
        )
        print(f"{name:<10} {technique.summary} ({faster})")
        params = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(technique.config))
        print(f"{'':<10} {params}")
    print('\nrecipe: "prune:ratio=0.5 > distill:epochs=5 > quantize:int8-static" (or a TOML file)')
    return 0


def _default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if isinstance(value, tuple):
        return "+".join(value) if value else "()"
    return str(value)
