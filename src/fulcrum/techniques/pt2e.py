"""``quantize:int8-pt2e``: PyTorch's own static int8, for the torch-compile target.

torchao's pt2e path with the x86 Inductor quantizer (per-channel int8 weights, uint8 activations
calibrated on the workload's calibration split); the candidate leaves PyTorch's float model for a
``torch.export`` program (``Candidate.program``), which the torch-compile target compiles with
Inductor's freezing into oneDNN int8 kernels. Uncompiled it would run 2-3x slower than fp32.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from fulcrum.runtimes.base import int8_dot_products
from fulcrum.runtimes.torch_compile import program_bytes, pt2e_quantize
from fulcrum.techniques.base import Candidate, Context, Step

if TYPE_CHECKING:
    from fulcrum.techniques.quantize import QuantizeConfig


def apply(config: QuantizeConfig, candidate: Candidate, ctx: Context) -> Candidate:
    """The candidate's float model quantized by pt2e and exported as a program."""
    from fulcrum.techniques.quantize import _batch_inputs  # (quantize dispatches here)

    model = candidate.require_float("quantize:int8-pt2e")
    start = time.perf_counter()
    calibration = [_batch_inputs(b) for b in itertools.islice(ctx.calib, config.calib_batches)]
    program = program_bytes(pt2e_quantize(model, ctx.example_inputs, calibration, config.skip))
    notes = [f"left in float as asked: {', '.join(config.skip)}"] if config.skip else []
    if not int8_dot_products():
        notes.append(
            "this CPU has no int8 dot products (VNNI, AMX): oneDNN's int8 kernels may be no "
            "faster than fp32 here"
        )
    step = Step(
        config=config.to_dict(),
        seconds=round(time.perf_counter() - start, 3),
        notes=tuple(notes),
        facts={"program_bytes": len(program), "calib_batches": len(calibration), "graph": True},
    )
    return candidate.with_step(step, program=program, runtime="torch-compile")
