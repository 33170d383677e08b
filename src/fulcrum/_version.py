"""Fulcrum's one version string, and ``describe()``: the version with the git commit of a checkout."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.4.0"


@functools.cache
def describe() -> str:
    """The version, with the commit when Fulcrum runs from a git checkout (PEP 440's local part).

    ``0.3.0`` from an installed wheel; ``0.3.0+g1a2b3c4d`` from a clean checkout at that commit;
    ``0.3.0+g1a2b3c4d.dirty`` when tracked files differ from it. Run records, ``fulcrum env``,
    ``fulcrum --version`` and model cards carry it, so that a figure can be traced to its code.
    """
    root = Path(__file__).resolve().parents[2]  # src/fulcrum/_version.py -> the checkout
    if not (root / ".git").exists() or not (root / "pyproject.toml").is_file():
        return __version__
    try:
        commit = _git(root, "rev-parse", "--short=8", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git here, or not a repository after all
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if changed else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return done.stdout.strip()
