"""OpenVINO (CPU plugin): a deployment target beside ONNX Runtime.

A candidate deploys as its ONNX graph (its float model exported, or its recipe's int8 QDQ graph,
which OpenVINO executes in int8 on CPUs with int8 instructions), read by OpenVINO's ONNX
frontend and compiled for the CPU with a latency hint, one stream and the session's own thread
count. The artifact is the ``.onnx`` file, which OpenVINO reads as it is (``ov.Core().
read_model``, or ``ovc model.onnx`` for its IR).

Precision is the target's: ``openvino`` computes in f32, ``openvino:bf16`` in bf16 (OpenVINO's own
default where the CPU computes in bf16 natively: AVX-512 BF16, AMX; not offered elsewhere, where
bf16 would be emulated). Evaluation measures the model at that precision, so a bf16 loss shows
in the metric.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fulcrum.errors import OnnxError, ShapeError, first_line
from fulcrum.runtimes.base import bf16_missing
from fulcrum.runtimes.onnx_export import graph_of

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate

EXTRA = "pip install 'fulcrum[openvino]'"


@functools.cache
def core() -> Any:
    """One OpenVINO Core per process (creating one loads the plugins)."""
    import openvino as ov

    return ov.Core()


class OpenVinoModel:
    """An ONNX graph compiled by OpenVINO for the CPU, called like a PyTorch model."""

    def __init__(
        self,
        onnx: bytes | Path,
        threads: int,
        output: str | None = None,
        precision: str = "f32",
    ) -> None:
        """``onnx``: a graph's bytes, or the path of an ONNX file or of OpenVINO IR (.xml);
        ``precision``: what the CPU plugin computes float layers in (f32 or bf16)."""
        import openvino.properties.hint as hints

        self.onnx, self.threads, self.output, self.precision = onnx, threads, output, precision
        self.runtime = "openvino" if precision == "f32" else f"openvino:{precision}"
        try:
            model = core().read_model(str(onnx) if isinstance(onnx, Path) else onnx)
        except Exception as exc:
            raise OnnxError(f"OpenVINO cannot read this graph: {first_line(exc, 300)}") from None
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            hints.inference_precision: self.precision,
        }
        try:
            self.compiled = core().compile_model(model, "CPU", config)
        except Exception as exc:
            raise OnnxError(f"OpenVINO cannot compile this graph: {first_line(exc, 300)}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = len(self.compiled.inputs)
        self.port = self._choose_output(output)

    def _choose_output(self, output: str | None) -> int:
        names = [set(o.get_names()) for o in self.compiled.outputs]
        if output is None:
            return 0
        found = next((i for i, n in enumerate(names) if output in n), None)
        if found is None:
            listed = ", ".join(sorted(n for s in names for n in s))
            raise OnnxError(f"the model has no output {output!r}; its outputs are {listed}.")
        return found

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != self.inputs:
            raise ShapeError(f"the model takes {self.inputs} inputs; got {len(inputs)}.")
        feed = [np.ascontiguousarray(x.detach().cpu().numpy()) for x in inputs]
        try:
            self.request.infer(feed, share_inputs=True)
        except Exception as exc:
            shapes = ", ".join(str(list(x.shape)) for x in feed)
            first = first_line(exc, 300)
            raise ShapeError(f"OpenVINO cannot run on inputs {shapes}: {first}") from None
        # the request's own buffer: the next call overwrites it
        return torch.from_numpy(self.request.get_output_tensor(self.port).data.copy())

    def with_threads(self, threads: int) -> OpenVinoModel:
        """The same graph compiled again with ``threads`` (a compiled model's are fixed)."""
        return OpenVinoModel(self.onnx, threads, self.output, self.precision)

    def artifact_bytes(self) -> int:
        if isinstance(self.onnx, Path):  # IR: the .xml and its .bin
            return sum(p.stat().st_size for p in (self.onnx, self.onnx.with_suffix(".bin")))
        return len(self.onnx)

    def eval(self) -> OpenVinoModel:
        return self


class OpenVinoRuntime:
    """OpenVINO's CPU plugin; a session's thread count is its own."""

    artifact = "onnx"
    tunes_threads = True
    # Fulcrum's ONNX quantization modes it runs natively: the static int8 QDQ graph (dynamic
    # int8 and ONNX Runtime's fused operators are ONNX Runtime's own)
    quantize_modes: tuple[str, ...] | None = ("int8-static",)

    def __init__(self, precision: str = "f32") -> None:
        self.precision = precision
        self.name = "openvino" if precision == "f32" else f"openvino:{precision}"

    def unavailable(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"the openvino target needs OpenVINO: {EXTRA}"
        return bf16_missing() if self.precision == "bf16" else None

    def deploy(
        self,
        candidate: Candidate,
        example_inputs: Sequence[torch.Tensor],
        *,
        threads: int,
        output: str | None = None,
    ) -> OpenVinoModel:
        graph = graph_of(candidate, example_inputs, self.name)
        return OpenVinoModel(graph, threads, output, self.precision)

    def load(self, folder: Path, *, threads: int, output: str | None = None) -> OpenVinoModel:
        return OpenVinoModel((folder / "model.onnx").read_bytes(), threads, output, self.precision)
