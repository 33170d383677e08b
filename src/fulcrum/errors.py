"""Fulcrum's exceptions: one base class, subclasses that also derive from the built-in type that fits.

Every message names the input, what was expected, what was received, and how to fix it; the CLI
prints it on one line and exits with ``exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
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
