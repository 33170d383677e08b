"""The technique registry: importing this package registers every technique."""

from __future__ import annotations

from fulcrum.techniques import (  # noqa: F401  (register)
    distill,
    finetune,
    fuse,
    heads,
    layers,
    lowrank,
    prune,
    quantize,
    sparsity,
)
from fulcrum.techniques.base import (
    ROLES,
    TECHNIQUES,
    Candidate,
    Context,
    Scope,
    Search,
    Step,
    Technique,
    TechniqueConfig,
    Trial,
    WarmStart,
    config_from_dict,
    get,
)

__all__ = [
    "ROLES",
    "TECHNIQUES",
    "Candidate",
    "Context",
    "Scope",
    "Search",
    "Step",
    "Technique",
    "TechniqueConfig",
    "Trial",
    "WarmStart",
    "config_from_dict",
    "get",
]
