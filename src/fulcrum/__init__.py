"""Fulcrum: find the sweet spot between a model's size and its efficiency.

The public API, loaded lazily so that ``import fulcrum`` stays fast::

    import fulcrum
    workload = fulcrum.load_workload("digits")
    print(fulcrum.profile(workload.model, workload.example_inputs).macs)
    print(fulcrum.evaluate(workload.model, workload.val, workload.task).metrics)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fulcrum._version import __version__
from fulcrum.errors import FulcrumError

if TYPE_CHECKING:
    from fulcrum.compression import compress
    from fulcrum.evaluation import evaluate
    from fulcrum.export import export, load
    from fulcrum.measure import Profile, profile
    from fulcrum.measuring import deploy
    from fulcrum.metrics import Evaluation
    from fulcrum.search import search
    from fulcrum.search.settings import SearchSettings
    from fulcrum.techniques import Candidate
    from fulcrum.workloads import Workload
    from fulcrum.workloads import load as load_workload

_LAZY = {
    "profile": ("fulcrum.measure", "profile"),
    "Profile": ("fulcrum.measure", "Profile"),
    "evaluate": ("fulcrum.evaluation", "evaluate"),
    "Evaluation": ("fulcrum.metrics", "Evaluation"),
    "Workload": ("fulcrum.workloads", "Workload"),
    "load_workload": ("fulcrum.workloads", "load"),
    "compress": ("fulcrum.compression", "compress"),
    "Candidate": ("fulcrum.techniques", "Candidate"),
    "search": ("fulcrum.search", "search"),
    "SearchSettings": ("fulcrum.search.settings", "SearchSettings"),
    "load": ("fulcrum.export", "load"),
    "export": ("fulcrum.export", "export"),
    "deploy": ("fulcrum.measuring", "deploy"),
}

__all__ = [
    "Candidate",
    "Evaluation",
    "FulcrumError",
    "Profile",
    "SearchSettings",
    "Workload",
    "__version__",
    "compress",
    "deploy",
    "evaluate",
    "export",
    "load",
    "load_workload",
    "profile",
    "search",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fulcrum' has no attribute {name!r}")
