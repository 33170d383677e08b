"""Compiled PyTorch (Inductor on the CPU): int8 through torchao's pt2e path.

Static int8 in PyTorch is fast only compiled: a pt2e model that is not compiled runs 2-3x slower
than fp32, and compiling needs Inductor's freezing for the int8 weight pre-packing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from fulcrum.errors import require
from fulcrum.runtimes.base import quiet, with_batch


def pt2e_quantize(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    calib_batches: Iterable[tuple[torch.Tensor, ...]],
) -> nn.Module:
    """Static int8 in PyTorch: torchao pt2e with the x86 Inductor quantizer, then ``torch.compile``.

    ``calib_batches`` yields model inputs as tuples. Compilation happens on the first call of each
    batch size (seconds; uncompiled, the int8 graph is slower than fp32). Each process has a
    recompile limit: call ``torch._dynamo.reset()`` between many models.
    """
    inputs = with_batch(example_inputs, 2)  # with 1, torch.export fixes the batch axis to 1
    batch = torch.export.Dim("batch", min=1, max=65536)
    with quiet():  # torchao logs the optional kernels it cannot load on import
        require("torchao", "torchao")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        exported = torch.export.export(
            copy.deepcopy(model).eval(), inputs, dynamic_shapes=tuple({0: batch} for _ in inputs)
        ).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch_inputs in calib_batches:
                prepared(*batch_inputs)
        converted = convert_pt2e(prepared)
    return _FrozenCompiled(converted)


class _FrozenCompiled(nn.Module):
    """``torch.compile`` with Inductor's freezing, which turns the int8 graph into oneDNN kernels.

    Freezing must be on whenever a call compiles (``options={"freezing": True}`` fails on the
    int8 weight pre-packing), so every call sets it. ``dynamic=False``: with a symbolic batch,
    the fused int8 convolution fails a stride check at run time (torch 2.13, torchao 0.18); each
    batch size compiles once instead.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, *inputs: torch.Tensor) -> Any:
        import torch._inductor.config

        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*inputs)
