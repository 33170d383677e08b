"""Fulcrum's exceptions: one base class, subclasses that also derive from the built-in type that fits.

Every message names the input, what was expected, what was received, and how to fix it; the CLI
prints it on one line and exits with ``exit_code``.
"""

from __future__ import annotations

import difflib
import errno
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

EXIT_BUG = 3  # an unexpected exception: a bug in Fulcrum (2 is a user mistake, 1 a finding)


class FulcrumError(Exception):
    """Base class of every error Fulcrum raises on purpose."""

    exit_code = 2


class ConfigError(FulcrumError, ValueError):
    """A parameter, recipe, budget or TOML entry is invalid."""


class WorkloadError(FulcrumError, ValueError):
    """A workload cannot be found or built."""


class CheckpointError(FulcrumError, ValueError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class DataError(FulcrumError, ValueError):
    """A data split is empty or its tensors do not fit the model."""


class ShapeError(FulcrumError, ValueError):
    """Example inputs or outputs have the wrong shape."""


class OnnxError(FulcrumError, ValueError):
    """An ONNX file is invalid or cannot be run."""


class TechniqueError(FulcrumError, RuntimeError):
    """A compression technique cannot be applied to this model."""


class MissingDependencyError(FulcrumError, ImportError):
    """An optional dependency is needed for this feature."""


class UserCodeError(FulcrumError, RuntimeError):
    """The user's own code (a model factory, a data or metric callable, a model's forward)
    raised: their input to fix, not a bug in Fulcrum."""


def from_user_code(exc: BaseException, what: str, files: Iterable[str | Path]) -> UserCodeError:
    """The one-line error for ``exc`` raised by the user's ``what`` (say "model callable
    'mymodels:make_model'"), naming the last line of their own code it passed through (a frame
    in one of ``files``, else the last frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    wanted = {str(Path(f).resolve()) for f in files}
    theirs = [f for f in frames if str(Path(f.filename).resolve()) in wanted] or frames[-1:]
    where = f" at {Path(theirs[-1].filename).name}:{theirs[-1].lineno}" if theirs else ""
    code = f" ({theirs[-1].line})" if theirs and theirs[-1].line else ""
    return UserCodeError(
        f"your {what} raised {type(exc).__name__}: {first_line(exc, 200)}{where}{code}; fix it "
        "there (this is not a bug in Fulcrum)."
    )


def disk_full(exc: BaseException) -> FulcrumError | None:
    """A one-line error when ``exc`` (or what caused it) is a full disk, else None: SQLite and
    the libraries above it may wrap the ``OSError`` in errors of their own."""
    seen: BaseException | None = exc
    while seen is not None:
        full = isinstance(seen, OSError) and seen.errno == errno.ENOSPC
        if full or "database or disk is full" in str(seen) or "No space left" in str(seen):
            return ConfigError(
                "no space left on the device; free some space (what was written before is "
                "intact) and run the same command again."
            )
        seen = seen.__cause__ or seen.__context__
    return None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"This feature needs the optional package {module!r}: install it with "
            f"`pip install 'fulcrum[{extra}]'`."
        ) from exc
