"""Peak memory of inference: the PyTorch allocator's peak, or the process's resident peak."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


def torch_peak_activation_bytes(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Peak bytes the CPU allocator holds above its starting point during one forward pass."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # otherwise kineto prints start/stop lines
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        model(*inputs)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak_increase(fn: Callable[[], object]) -> int | None:
    """Bytes by which the process's peak resident memory rises while ``fn`` runs (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    after = _rss_kib("VmHWM")
    if before is None or after is None:
        return None
    return max(after - before, 0) * 1024
