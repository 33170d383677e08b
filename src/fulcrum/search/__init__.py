"""The sweet-spot search: an Optuna study over recipes, durable and parallel.

The only package that drives Optuna (with ``fulcrum.artifacts``, which keeps trial files in
Optuna's artifact store):

- ``settings``: what defines a search (``SearchSettings``) and its budget;
- ``space``: recipes composed from the techniques' own search dimensions, and warm starts;
- ``storage``: the study's database (SQLite in the run folder, or a shared PostgreSQL server);
- ``setup``: the reference measured once per study (baseline, quantization probe, sensitivity);
- ``trial``: one trial (draw, apply, measure through ``fulcrum.measuring``, record);
- ``loop``: Optuna's loop, the exact trial count, Ctrl-C, worker processes;
- ``run``: ``search()`` itself, which ends in ``fulcrum.sweetspot`` and writes the run folder.

``fulcrum.search(workload, settings, run_dir)`` calls ``search.run.search``: the package is
callable, so that the public name stays a function although a package bears it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from fulcrum.search.settings import SearchSettings

__all__ = ["SearchSettings", "search"]


def search(*args: Any, **kwargs: Any) -> Any:
    """``fulcrum.search.run.search``: run or resume a search and pick its sweet spot."""
    from fulcrum.search.run import search as run  # (loads optuna and torch: not on import)

    return run(*args, **kwargs)


class _Callable(types.ModuleType):
    """``fulcrum.search(...)`` calls ``search()``: the package carries the API's name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
