"""ONNX Runtime (CPU execution provider): the default deployment target.

A candidate deploys as its ONNX graph (quantized or fused by its recipe, or its float model
exported); the artifact is the ``.onnx`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fulcrum.errors import OnnxError, ShapeError, first_line
from fulcrum.runtimes.base import default_threads
from fulcrum.runtimes.onnx_export import graph_of

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate


def ort_session(path: Path | str | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads that stop spinning when a
    run returns.

    Left alone, worker threads keep a core busy ~50 ms after each run and slow whatever is
    timed next. Turning spinning off altogether made every run 22-29% longer (batch 1, 2
    threads: all-MiniLM-L6-v2 fp32 40.9 against 32.9 ms, `digits` 0.42 against 0.33 ms;
    benchmarks/ort_spinning.py). Stopping when each run returns keeps the spinning within a
    run, as ONNX Runtime's default has it, and PyTorch timed in the same rounds was as fast
    within their spread.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc, 300)
        raise OnnxError(f"ONNX Runtime cannot load {path!s:.200}: {first}") from None


class OnnxModel:
    """An ONNX model run by ONNX Runtime, called like a PyTorch model: tensors in, tensor out.

    ``source`` is a file path or the serialized model itself (bytes). ``output`` names the output
    to return (say ``probabilities`` of a scikit-learn classifier converted by skl2onnx, whose
    first output is the ``label``); without it the first float tensor output is taken, and
    ``chosen_output`` says which.
    """

    def __init__(
        self, source: Path | str | bytes, threads: int | None = None, output: str | None = None
    ) -> None:
        self.runtime = "onnxruntime"
        self.path = None if isinstance(source, bytes) else Path(source)
        self.data = source if isinstance(source, bytes) else None
        self.name = self.path.name if self.path is not None else "model.onnx"
        self.threads = threads or default_threads()
        self.session = ort_session(source, self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output, self.chosen_output = output, self._choose_output(output)

    def _choose_output(self, output: str | None) -> str:
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if output is not None:
            if output not in names:
                raise OnnxError(
                    f"{self.name} has no output {output!r}; its outputs are {', '.join(names)}."
                )
            kind = next(o.type for o in outputs if o.name == output)
            if not kind.startswith("tensor("):
                raise OnnxError(
                    f"{self.name}: output {output!r} is a {kind}, not a tensor (skl2onnx's ZipMap); "
                    "convert the model with options={'zipmap': False} or choose a tensor output."
                )
            return output
        tensors = [o for o in outputs if o.type.startswith("tensor(")]
        floats = [o for o in tensors if "float" in o.type or "double" in o.type]
        chosen = (floats or tensors or outputs)[0]
        return str(chosen.name)

    def proto(self) -> Any:
        """The ONNX ModelProto (weights included)."""
        if self.data is not None:
            return onnx.load_from_string(self.data)
        return onnx.load(str(self.path))

    def artifact_bytes(self) -> int:
        """Bytes on disk: the file and any external-data files beside it."""
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    def reload(self) -> OnnxModel:
        """A fresh session on the same model (what a deployment would create)."""
        return self.with_threads(self.threads)

    def with_threads(self, threads: int) -> OnnxModel:
        """A session on the same model with ``threads`` intra-op threads."""
        source = self.data if self.data is not None else self.path
        return OnnxModel(source, threads, self.output)  # type: ignore[arg-type]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise ShapeError(
                f"{self.name} takes {len(self.input_names)} inputs "
                f"({', '.join(self.input_names)}); got {len(inputs)}."
            )
        feed = {
            n: np.ascontiguousarray(x.detach().cpu().numpy())
            for n, x in zip(self.input_names, inputs, strict=True)
        }
        try:
            out = self.session.run([self.chosen_output], feed)[0]
        except Exception as exc:
            first = first_line(exc, 300)
            shapes = ", ".join(f"{n}={list(v.shape)}" for n, v in feed.items())
            raise ShapeError(f"{self.name} cannot run on inputs {shapes}: {first}") from None
        return torch.from_numpy(np.asarray(out))

    def eval(self) -> OnnxModel:
        return self


class OnnxRuntime:
    """ONNX Runtime's CPU execution provider; a session's thread count is its own."""

    name = "onnxruntime"
    artifact = "onnx"
    tunes_threads = True
    # every mode of Fulcrum's ONNX quantization (its quantizer is ONNX Runtime's own)
    quantize_modes: tuple[str, ...] | None = ("int8-static", "int8-dynamic", "fp16")

    def unavailable(self) -> str | None:
        return None  # a core dependency

    def deploy(
        self,
        candidate: Candidate,
        example_inputs: Sequence[torch.Tensor],
        *,
        threads: int,
        output: str | None = None,
    ) -> OnnxModel:
        return OnnxModel(graph_of(candidate, example_inputs, self.name), threads, output)

    def load(self, folder: Path, *, threads: int, output: str | None = None) -> OnnxModel:
        return OnnxModel(folder / "model.onnx", threads, output)
