"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fulcrum.errors import ConfigError

if TYPE_CHECKING:
    from fulcrum.workloads import Workload


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workload",
        nargs="?",
        help="a built-in name (see `fulcrum workloads`), a .toml file or an .onnx file "
        "(or --model instead)",
    )
    hub = parser.add_argument_group("a Hugging Face model instead of WORKLOAD")
    hub.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="a transformers model folder, or a hub id already in the local Hugging Face cache",
    )
    hub.add_argument(
        "--task",
        choices=["feature-extraction", "text-classification", "image-classification"],
        help="what the model does: sentence embeddings (judged against the model itself), "
        "text or image classification (judged on the labels)",
    )
    hub.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="the texts: .txt (one per line), .csv, .tsv, .jsonl, .json or .parquet; or a folder "
        "with a subfolder of images per class; a quarter validates, a tenth calibrates, the "
        "rest trains",
    )
    hub.add_argument(
        "--text-column", default="text", help="the data's column of texts (default: text)"
    )
    hub.add_argument(
        "--label-column",
        default="label",
        help="the data's column of class numbers or label names (default: label)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow checkpoints that need arbitrary pickle (runs code: only for files you trust)",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        type=shape,
        metavar="D,D,...",
        help="input shape of an ONNX model with symbolic dimensions (repeat per input)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="intra-op threads for every runtime (default: the cores available)",
    )
    add_json_argument(parser)


JSON_STDOUT = "-"


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json PATH`` writes the command's result as JSON to PATH; ``--json`` or ``--json -``
    prints it to stdout, alone (the rest of the output goes to stderr)."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=JSON_STDOUT,
        type=lambda text: text if text == JSON_STDOUT else Path(text),
        metavar="PATH|-",
        help="write the result as JSON to PATH, or alone to stdout with - (or no PATH)",
    )


def load_workload(args: argparse.Namespace) -> Workload:
    """The workload the command line names: WORKLOAD, or --model with --task and --data (which
    become the TOML file a user would have written; ``args.workload`` is then its path)."""
    from fulcrum import workloads
    from fulcrum.workloads.hub import workload_file

    if args.model is not None:
        if args.workload is not None:
            raise ConfigError(f"give a WORKLOAD ({args.workload!r}) or --model, not both.")
        missing = [o for o, v in (("--task", args.task), ("--data", args.data)) if v is None]
        if missing:
            raise ConfigError(
                f"--model needs {' and '.join(missing)}: --task feature-extraction, "
                "text-classification or image-classification, and --data: the texts (a file) "
                "or images (a folder) to judge it on."
            )
        args.workload = str(
            workload_file(
                args.model,
                args.task,
                args.data,
                text_column=args.text_column,
                label_column=args.label_column,
            )
        )
    elif args.workload is None:
        raise ConfigError(
            "name a workload: a built-in (fulcrum workloads), a .toml or .onnx file, or "
            "--model PATH_OR_ID --task TASK --data FILE."
        )
    elif args.task is not None or args.data is not None:
        raise ConfigError("--task and --data go with --model; a WORKLOAD names its own.")
    return workloads.load(
        args.workload, allow_pickle=args.allow_pickle, input_shapes=args.input_shape
    )


def write_config(args: argparse.Namespace, workload: Workload, out: Path, **section: Any) -> None:
    """RUN/config.toml: this run as a run config, with its ``search`` or ``compress`` section
    (``--config RUN/config.toml`` runs it again)."""
    from fulcrum import runconfig
    from fulcrum.workloads import source_of

    named = args.model is not None  # --model: the names, not the file they became
    local = named and Path(args.model).is_dir()
    config = runconfig.RunConfig(
        workload=None if named else source_of(workload),
        model=str(Path(args.model).resolve()) if local else args.model,
        task=args.task,
        data=str(args.data.resolve()) if args.data else None,
        text_column=args.text_column,
        label_column=args.label_column,
        allow_pickle=args.allow_pickle,
        input_shape=args.input_shape,
        threads=args.threads,
        out=str(out.resolve()),
        storage=getattr(args, "storage", None),
        study=getattr(args, "study", None),
        artifacts=getattr(args, "artifacts", None),
        **section,
    )
    runconfig.write(out / "config.toml", config)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {2**32 - 1} (numpy's seed range); got {text!r}"
        )
    return value


def int_list(text: str) -> list[int]:
    return [positive_int(t) for t in text.split(",") if t.strip()]


def shape(text: str) -> list[int]:
    return int_list(text.replace("x", ","))


def check_writable(
    path: Path | TextIO | None, option: str = "--json", folder: bool = False
) -> None:
    """Fail before any work is done if ``path`` (a file, or a ``folder``) cannot be written.

    Nothing is created: a command refused later leaves no empty folder behind. A stream (what
    ``--json -`` stands for) is writable.
    """
    if not isinstance(path, Path):
        return
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(
            f"{option} {str(path)!r} is a {'file' if folder else 'folder'}; give a {kind} path."
        )
    existing = path if path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(
            f"{option} {str(path)!r} cannot be written ({existing} is not a writable folder); "
            f"choose a writable {kind} path."
        )


def write_json(path: Path | TextIO | None, payload: dict[str, Any]) -> None:
    """The result as JSON to ``path`` (a file, or the stream ``--json -`` stands for)."""
    if path is None:
        return
    if not isinstance(path, Path):
        path.write(json.dumps(payload, indent=2, default=str) + "\n")
        path.flush()
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    except OSError as exc:
        raise ConfigError(
            f"--json {str(path)!r} cannot be written ({exc.strerror}); choose a writable path."
        ) from None


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def human_bytes(n: float) -> str:
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{n:.0f} B"
