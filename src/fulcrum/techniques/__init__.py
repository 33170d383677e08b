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
    TECHNIQUES,
    Candidate,
    Context,
    Step,
    Technique,
    TechniqueConfig,
    config_from_dict,
    get,
)

__all__ = [
    "TECHNIQUES",
    "Candidate",
    "Context",
    "Step",
    "Technique",
    "TechniqueConfig",
    "config_from_dict",
    "get",
]
