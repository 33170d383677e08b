"""Recovery training on several processes: DistributedDataParallel under ``torchrun``.

Launched by ``torchrun --nproc-per-node N`` (which sets ``RANK``, ``WORLD_SIZE`` and the
rendezvous address), Fulcrum joins a process group — gloo on CPUs, NCCL where GPUs exist — and
``fulcrum.train.fit`` trains through ``torch.nn.parallel.DistributedDataParallel``: every
process reads the same batches in the same order and computes on its own equal slice of each, and
DDP averages the gradients. The global batch is the loader's batch, as in one process, so the
result matches a single-process run up to float rounding (batch-norm statistics, dropout masks
and SimCSE's in-batch negatives are per slice, so models with those match less closely). Every
process runs the same recipe; only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from fulcrum.errors import ConfigError


def world_size() -> int:
    """Processes training together: the process group's size, else 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with peers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (once)."""
    import torch.distributed as dist

    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise ConfigError(
            "this PyTorch build has no torch.distributed; run without torchrun (one process)."
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


def shard(batch: Sequence[torch.Tensor], size: int, index: int) -> tuple[torch.Tensor, ...]:
    """This process's slice of each tensor of a batch: ``size`` near-equal contiguous parts."""
    return tuple(torch.tensor_split(t, size)[index] for t in batch)


def wrap(model: torch.nn.Module) -> Any:
    """``model`` under DistributedDataParallel when several processes train, else itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=False)


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters that live outside the DDP module (distillation's
    projections) across the processes, as DDP does for the model's own."""
    import torch.distributed as dist

    size = world_size()
    if size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size
