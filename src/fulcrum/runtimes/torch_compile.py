"""Compiled PyTorch (Inductor on the CPU): the ``torch-compile`` target, and int8 through torchao's
pt2e path.

A candidate deploys as a ``torch.export`` program (the ``.pt2`` archive a user ships, loaded with
``torch.export.load``): its float model exported, or the int8 program ``quantize:int8-pt2e``
made. The session compiles it with Inductor and its freezing pass (weights folded and pre-packed
for oneDNN), once per input shape; the first call of each shape compiles, and the seconds it took
are kept apart from latency (``compile_seconds``). ``torch-compile:bf16`` runs the float program
under bf16 autocast, offered only where the CPU computes in bf16 natively.

Static int8 in PyTorch is fast only compiled: a pt2e model that is not compiled runs 2-3x slower
than fp32, and compiling needs Inductor's freezing for the int8 weight pre-packing.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fulcrum.errors import TechniqueError, first_line, require
from fulcrum.runtimes.base import (
    bf16_missing,
    dynamic_axes,
    output_tensor,
    quiet,
    refuse_graphs,
    torch_threads,
    with_batch,
)

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate

ARTIFACT = "model.pt2"
# compiled programs kept per process (one per candidate and shape); the default of 8 would make
# a long search fall back to eager after its eighth candidate
RECOMPILE_LIMIT = 1024


def export_program(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> torch.export.ExportedProgram:
    """``model`` as a ``torch.export`` program whose batch axis (and the sequence axis of token
    inputs) is dynamic. Exported at batch 2: at 1, torch.export fixes the batch axis to 1."""
    inputs = with_batch(example_inputs, 2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    shapes = tuple(
        {axis: batch if name == "batch" else torch.export.Dim.AUTO for axis, name in axes.items()}
        for axes in dynamic_axes(inputs)
    )
    try:
        with quiet():
            return torch.export.export(copy.deepcopy(model).eval(), inputs, dynamic_shapes=shapes)
    except Exception as exc:  # the exporter's errors are many and long
        raise TechniqueError(
            f"torch.export cannot export this model for the torch-compile target: "
            f"{first_line(exc, 300)}; deploy it on onnxruntime or torch."
        ) from None


def program_bytes(program: torch.export.ExportedProgram) -> bytes:
    """A program as the ``.pt2`` archive ``torch.export.save`` writes."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def pt2e_quantize(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    calib_batches: Iterable[tuple[torch.Tensor, ...]],
    skip: Sequence[str] = (),
) -> torch.export.ExportedProgram:
    """Static int8 in PyTorch: torchao pt2e with the x86 Inductor quantizer (per-channel
    weights, calibrated activations), as a ``torch.export`` program to compile
    (``CompiledSession``). ``calib_batches`` yields model inputs as tuples; the layers named in
    ``skip`` stay in float."""
    with quiet():  # torchao logs the optional kernels it cannot load on import
        require("torchao", "torchao")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        exported = export_program(model, example_inputs)
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        for name in skip:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for batch_inputs in calib_batches:
                prepared(*batch_inputs)
        converted = convert_pt2e(prepared)
        _drop_unused_tensors(converted)
        return export_program(converted, example_inputs)


def _drop_unused_tensors(module: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers no node reads: the float weights that conversion
    replaced with int8 ones would otherwise be exported beside them."""
    used = {str(n.target) for n in module.graph.nodes if n.op == "get_attr"}
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, _ in tensors:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(module.get_submodule(owner) if owner else module, attribute)


class CompiledSession:
    """A ``torch.export`` program compiled by Inductor (with freezing), called like a model.

    ``dynamic=False``: with a symbolic batch, the fused int8 convolution fails a stride check at
    run time (torch 2.13, torchao 0.18); each input shape compiles once instead, and
    ``compile_seconds`` keeps what each took.
    """

    def __init__(self, program: bytes, threads: int, runtime: str, bf16: bool = False) -> None:
        import torch._dynamo.config

        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
        )
        self.program, self.threads, self.runtime, self.bf16 = program, threads, runtime, bf16
        with quiet(), contextlib.suppress(ImportError):  # an int8 program's operators
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
        module = torch.export.load(io.BytesIO(program)).module()
        self.compiled = torch.compile(module, dynamic=False)
        self.compile_seconds: dict[tuple[tuple[int, ...], ...], float] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config

        shapes = tuple(tuple(x.shape) for x in inputs)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        first = shapes not in self.compile_seconds  # this call compiles (its warnings muted)
        start = time.perf_counter()
        # freezing must be on whenever a call compiles: options={"freezing": True} fails on the
        # int8 weight pre-packing
        with (
            quiet() if first else contextlib.nullcontext(),
            torch_threads(self.threads),
            torch.inference_mode(),
            autocast,
            torch._inductor.config.patch(freezing=True),
        ):
            out = output_tensor(self.compiled(*inputs)).float()
        if first:
            self.compile_seconds[shapes] = round(time.perf_counter() - start, 3)
        return out

    def with_threads(self, threads: int) -> CompiledSession:
        """The same compiled program run with ``threads`` (Inductor's kernels read the count at
        run time: nothing compiles again)."""
        session = copy.copy(self)
        session.threads = threads
        return session

    def artifact_bytes(self) -> int:
        return len(self.program)

    def save(self, folder: Path) -> None:
        """The program a user ships, beside the candidate's weights (``model.pt2``)."""
        (folder / ARTIFACT).write_bytes(self.program)

    def eval(self) -> CompiledSession:
        return self


class TorchCompileRuntime:
    """``torch.compile`` (Inductor) on the CPU; intra-op threads are the process's."""

    artifact = "pt2"
    tunes_threads = False
    quantize_modes: tuple[str, ...] | None = ("int8-pt2e",)  # its int8 is PyTorch's own

    def __init__(self, precision: str = "f32") -> None:
        self.precision = precision
        self.name = "torch-compile" if precision == "f32" else f"torch-compile:{precision}"
        if precision != "f32":
            self.quantize_modes = ()

    def unavailable(self) -> str | None:
        return bf16_missing() if self.precision == "bf16" else None

    def deploy(
        self,
        candidate: Candidate,
        example_inputs: Sequence[torch.Tensor],
        *,
        threads: int,
        output: str | None = None,
    ) -> CompiledSession:
        refuse_graphs(candidate, self.name)
        if candidate.program is not None:
            if self.precision != "f32":
                raise TechniqueError(
                    f"an int8 program (quantize:int8-pt2e) runs on torch-compile, not {self.name}."
                )
            return CompiledSession(candidate.program, threads, self.name)
        model = candidate.require_float(f"the {self.name} target")
        return self._compiled(model, example_inputs, threads)

    def _compiled(
        self, model: nn.Module, example_inputs: Sequence[torch.Tensor], threads: int
    ) -> CompiledSession:
        program = program_bytes(export_program(model, example_inputs))
        return CompiledSession(program, threads, self.name, bf16=self.precision == "bf16")

    def load(self, folder: Path, *, threads: int, output: str | None = None) -> CompiledSession:
        """A saved candidate's program (``model.pt2``), or its float model rebuilt and exported."""
        if (folder / ARTIFACT).is_file():
            program = (folder / ARTIFACT).read_bytes()
            return CompiledSession(program, threads, self.name, bf16=self.precision == "bf16")
        import json

        from fulcrum.compression import rebuild  # compression sits above the runtimes
        from fulcrum.workloads import load

        workload = load(json.loads((folder / "model.json").read_text())["workload"])
        if not isinstance(workload.model, nn.Module):
            raise TechniqueError(f"{folder} holds no PyTorch model to compile.")
        model = rebuild(workload.model, folder)
        return self._compiled(model, workload.example_inputs, threads)
