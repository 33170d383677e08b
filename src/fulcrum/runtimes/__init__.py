"""Where a model runs: one file per deployment target behind one small interface.

``RUNTIMES`` maps a target's name to its :class:`Runtime` (build a session from a candidate,
reload a saved one); a :class:`Session` is called like a PyTorch model, with a fixed thread count
and a known artifact size. Adding a target is adding one file here and one line to ``RUNTIMES``.
"""

from __future__ import annotations

from fulcrum.errors import ConfigError, suggest
from fulcrum.runtimes.base import (
    Runtime,
    Session,
    as_inputs,
    caller_state,
    check_example_inputs,
    default_threads,
    dynamic_axes,
    forward_arguments,
    input_names,
    input_shape_error,
    keeps_caller_state,
    output_tensor,
    predict,
    quiet,
    thread_choices,
    torch_threads,
    with_batch,
)
from fulcrum.runtimes.onnx_export import export_onnx, exported_bytes
from fulcrum.runtimes.onnxruntime import OnnxModel, OnnxRuntime, ort_session
from fulcrum.runtimes.openvino import OpenVinoRuntime
from fulcrum.runtimes.torch_compile import TorchCompileRuntime
from fulcrum.runtimes.torch_eager import TorchRuntime, TorchSession

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        TorchRuntime(),
        OnnxRuntime(),
        OpenVinoRuntime(),
        OpenVinoRuntime("bf16"),  # where the CPU computes in bf16 natively
        TorchCompileRuntime(),
        TorchCompileRuntime("bf16"),
    )
}


def known() -> tuple[str, ...]:
    """Every deployment target's name (some may be unavailable here: see ``unavailable``)."""
    return tuple(RUNTIMES)


def unavailable(name: str) -> str | None:
    """Why target ``name`` cannot run here, or None."""
    return get(name).unavailable()


def get(name: str) -> Runtime:
    """The runtime called ``name``; a one-line error lists the others."""
    if name not in RUNTIMES:
        raise ConfigError(
            f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.{suggest(name, RUNTIMES)}"
        )
    return RUNTIMES[name]


__all__ = [
    "RUNTIMES",
    "OnnxModel",
    "OnnxRuntime",
    "Runtime",
    "Session",
    "TorchRuntime",
    "TorchSession",
    "as_inputs",
    "caller_state",
    "check_example_inputs",
    "default_threads",
    "dynamic_axes",
    "export_onnx",
    "exported_bytes",
    "forward_arguments",
    "get",
    "input_names",
    "input_shape_error",
    "keeps_caller_state",
    "known",
    "ort_session",
    "output_tensor",
    "predict",
    "quiet",
    "thread_choices",
    "torch_threads",
    "unavailable",
    "with_batch",
]
