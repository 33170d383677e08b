"""The technique registry: importing this package registers every technique."""

from __future__ import annotations

from fulcrum.techniques import distill, finetune, lowrank, prune, quantize, sparsity  # noqa: F401  (register)
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
