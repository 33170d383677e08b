"""Eager PyTorch: the candidate's float model run as it is; the artifact is its safetensors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fulcrum.errors import TechniqueError
from fulcrum.runtimes.base import output_tensor, refuse_graphs, torch_threads

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate


class TorchSession:
    """A PyTorch module run with ``threads`` intra-op threads (set around each call, restored)."""

    runtime = "torch"

    def __init__(self, model: nn.Module, threads: int) -> None:
        self.model, self.threads = model, threads

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch_threads(self.threads), torch.inference_mode():
            return output_tensor(self.model(*inputs))

    def with_threads(self, threads: int) -> TorchSession:
        return TorchSession(self.model, threads)

    def artifact_bytes(self) -> int:
        """Bytes of the model's weights as a safetensors file."""
        return safetensors_bytes(self.model)

    def eval(self) -> TorchSession:
        return self


class TorchRuntime:
    """Eager PyTorch on the CPU; intra-op threads are the process's, so not tuned per session."""

    name = "torch"
    artifact = "safetensors"
    tunes_threads = False
    quantize_modes: tuple[str, ...] | None = ()  # its int8 is torch-compile's (pt2e), not ONNX's

    def unavailable(self) -> str | None:
        return None  # a core dependency

    def deploy(
        self,
        candidate: Candidate,
        example_inputs: Sequence[torch.Tensor],
        *,
        threads: int,
        output: str | None = None,
    ) -> TorchSession:
        refuse_graphs(candidate, self.name)
        return TorchSession(candidate.require_float("the torch runtime"), threads)

    def load(self, folder: Path, *, threads: int, output: str | None = None) -> TorchSession:
        """A saved candidate's weights in its workload's architecture (``compression.rebuild``)."""
        from fulcrum.compression import load_candidate  # compression sits above the runtimes

        model, _ = load_candidate(folder, threads)
        if model is None:
            manifest = json.loads((folder / "model.json").read_text())
            raise TechniqueError(
                f"{folder} holds no PyTorch model for workload {manifest.get('workload')!r}."
            )
        return TorchSession(model, threads)


def safetensors_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as a safetensors file, computed without writing it.

    The file is an 8-byte length, a JSON header padded to 8 bytes, then the tensors' data;
    tied tensors are stored once (what ``safetensors_state`` keeps).
    """
    state = safetensors_state(model)
    dtype_names = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
        torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
        torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
    }  # fmt: skip
    order = sorted(state.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in order:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": dtype_names.get(tensor.dtype, str(tensor.dtype)),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + text + (-text % 8) + offset


def safetensors_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: detached, with tied tensors kept once."""
    seen: set[int] = set()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel():
            continue  # tied weights are stored once
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach()
    return state
