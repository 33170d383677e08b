"""The ``fulcrum`` command: parse, call the Python API, print. One module per command."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from fulcrum._version import describe
from fulcrum.cli.common import JSON_STDOUT
from fulcrum.errors import EXIT_BUG, FulcrumError, disk_full, first_line

if TYPE_CHECKING:
    from rich.console import Console

COMMANDS = (
    "workloads",
    "profile",
    "evaluate",
    "sensitivity",
    "techniques",
    "compress",
    "search",
    "report",
    "export",
    "verify",
    "env",
    "demo",
)


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line that names the argument (not the whole usage), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = OneLineParser(
        prog="fulcrum", description="Find the sweet spot between a model's size and its efficiency."
    )
    parser.add_argument("--version", action="version", version=f"fulcrum {describe()}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fulcrum.cli.{name}").add_parser(sub)
    for name, command in sub.choices.items():  # each command's help ends with its examples
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
        loudness = command.add_mutually_exclusive_group()
        loudness.add_argument(
            "-q", "--quiet", action="store_true", help="show only warnings, errors and results"
        )
        loudness.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show every step, and the libraries' own warnings",
        )
    return parser


EXAMPLES = {
    "profile": [
        "fulcrum profile digits",
        "fulcrum profile model.onnx --input-shape 1,3,224,224 --batch-sizes 1,8",
        "fulcrum profile my.toml --json profile.json",
    ],
    "evaluate": [
        "fulcrum evaluate digits",
        "fulcrum evaluate my.toml --json scores.json",
    ],
    "sensitivity": [
        "fulcrum sensitivity digits",
        "fulcrum sensitivity my.toml --no-quantize",
    ],
    "techniques": ["fulcrum techniques"],
    "compress": [
        'fulcrum compress digits --recipe "prune:0.5 > finetune:5 > quantize" --out runs/p50',
        'fulcrum compress minilm --recipe "fuse > quantize:int8-dynamic,embeddings=int4"',
        "fulcrum compress my.toml --recipe quantize:int8-static --batch-sizes 1",
    ],
    "search": [
        "fulcrum search digits --trials 40 --max-drop 1 --out runs/digits",
        "fulcrum search my.toml --runtime onnxruntime,openvino --policy knee",
        "fulcrum search my.toml --storage postgresql://host/db --study mine  # on each machine",
    ],
    "report": ["fulcrum report runs/digits", "fulcrum report runs/p50"],
    "export": [
        "fulcrum export runs/digits",
        "fulcrum export runs/digits --format safetensors --out shipped/",
        "fulcrum export runs/digits --trial 12 --format pt2",
    ],
    "verify": ["fulcrum verify runs/digits/export/onnx", "fulcrum verify shipped/"],
    "env": ["fulcrum env", "fulcrum env --json"],
    "demo": ["fulcrum demo", "fulcrum demo --trials 10 --out runs/quick"],
    "workloads": ["fulcrum workloads"],
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests swap it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Fulcrum's log lines on stderr (INFO; WARNING under -q, DEBUG under -v), the libraries'
    own chatter hidden unless -v."""
    logger = logging.getLogger("fulcrum")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("fulcrum: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    for noisy in ("torch", "torchao", "onnxscript", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit 0 done, 1 a finding (no candidate met the budget), 2 bad input
    (the user's own code failing included), 3 a bug in Fulcrum, 130 Ctrl-C."""
    _configure_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None) is not None:
            args = _with_config(parser, args, argv)
    except SystemExit as exc:  # --help, --version, or an argument error (printed already)
        return int(exc.code or 0)
    except FulcrumError as exc:  # a bad run config
        return _refused(args, exc)
    _configure_logging(args.quiet, args.verbose)
    try:
        _join_torchrun(args.command)
        return _run(args)
    except FulcrumError as exc:
        return _refused(args, exc)
    except KeyboardInterrupt:
        resume = " (run the same command again to resume it)" if args.command == "search" else ""
        print(f"fulcrum {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk is the user's to fix; anything else is a bug
        full = disk_full(exc)
        if full is not None:
            return _refused(args, full)
        if args.debug:
            traceback.print_exc()
            return EXIT_BUG
        print(
            f"fulcrum {args.command}: internal error: {type(exc).__name__}: {first_line(exc, 200)} "
            "-- this is a bug in Fulcrum; rerun with --debug for the traceback and report it "
            "with the output of `fulcrum env`.",
            file=sys.stderr,
        )
        return EXIT_BUG


def _with_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None
) -> argparse.Namespace:
    """The command line again, with the run config's values as the defaults of its options
    (so that an option given on the command line wins)."""
    from fulcrum import runconfig

    config = runconfig.read(args.config)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices[args.command].set_defaults(**runconfig.as_defaults(config))
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> int:
    """The command within its live display; under ``--json -`` its human-readable output goes
    to stderr, and stdout holds the JSON alone (for a pipe)."""
    from fulcrum.cli.progress import Display

    with _stderr_console() as console:
        args.display = Display(console, quiet=args.quiet)
        if getattr(args, "json", None) != JSON_STDOUT:
            with args.display:
                return int(args.run(args))
        args.json = sys.stdout
        with args.display, contextlib.redirect_stdout(sys.stderr):
            return int(args.run(args))


@contextlib.contextmanager
def _stderr_console() -> Iterator[Console]:
    """The console of the bars: on a terminal, its own copy of stderr's descriptor, which ONNX
    Runtime's quantizer cannot mute while it calibrates (``runtimes.quiet`` points descriptor
    2 at /dev/null meanwhile); elsewhere stderr as it is at each write (tests swap it)."""
    from rich.console import Console

    try:
        terminal = sys.stderr.isatty()
        fd = os.dup(sys.stderr.fileno()) if terminal else None
    except (OSError, ValueError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        yield Console(stderr=True)
        return
    with os.fdopen(fd, "w", buffering=1) as stream:
        yield Console(file=stream)


# a message longer than this is cut (a 100,000-character recipe value, echoed back)
MESSAGE_LIMIT = 600


def _refused(args: argparse.Namespace, exc: FulcrumError) -> int:
    """The one-line error of a refusal (with the traceback under --debug), and its exit code."""
    if args.debug:
        traceback.print_exc()
    text = " ".join(str(exc).split())
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 25] + " ... (message shortened)"
    print(f"fulcrum {args.command}: error: {text}", file=sys.stderr)
    return exc.exit_code


def _join_torchrun(command: str) -> None:
    """Under torchrun, join its process group; only ``compress`` trains across processes."""
    from fulcrum import distributed
    from fulcrum.errors import ConfigError

    if not distributed.launched():
        return
    if command != "compress":
        raise ConfigError(
            f"fulcrum {command} runs in one process; only fulcrum compress trains under torchrun "
            "(a search scales out with --workers and --storage instead)."
        )
    distributed.init_from_env()
