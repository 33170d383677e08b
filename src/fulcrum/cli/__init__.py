"""The ``fulcrum`` command: parse, call the Python API, print. One module per command."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from fulcrum._version import __version__
from fulcrum.errors import FulcrumError

COMMANDS = (
    "workloads",
    "profile",
    "evaluate",
    "techniques",
    "compress",
    "search",
    "report",
    "export",
    "env",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="fulcrum", description="Find the sweet spot between a model's size and its efficiency."
    )
    parser.add_argument("--version", action="version", version=f"fulcrum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fulcrum.cli.{name}").add_parser(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests swap it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _configure_logging() -> None:
    logger = logging.getLogger("fulcrum")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("fulcrum: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    for noisy in ("torch", "torchao", "onnxscript", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except FulcrumError as exc:
        print(f"fulcrum {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fulcrum {args.command}: interrupted", file=sys.stderr)
        return 130
