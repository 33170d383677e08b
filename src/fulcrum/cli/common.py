"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fulcrum.errors import ConfigError


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workload", help="a built-in name (see `fulcrum workloads`), a .toml file or an .onnx file"
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
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write everything as JSON to PATH"
    )


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


def check_writable(path: Path | None, option: str = "--json", folder: bool = False) -> None:
    """Fail before any work is done if ``path`` (a file, or a ``folder``) cannot be written.

    Nothing is created: a command refused later leaves no empty folder behind.
    """
    if path is None:
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


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
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
