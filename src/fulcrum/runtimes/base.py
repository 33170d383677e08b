"""What every runtime shares: the Session and Runtime interfaces, threads, inputs and outputs.

A *runtime* (a deployment target: ONNX Runtime, eager PyTorch, ...) turns a candidate into a
*session*: something called like a PyTorch model (tensors in, the primary output tensor out)
with a fixed intra-op thread count and a known artifact size. Everything that executes a model
for measurement or evaluation goes through a session, so that every runtime sees the same
inputs, threads and output conventions.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn

from fulcrum.errors import ShapeError, TechniqueError, first_line

if TYPE_CHECKING:
    from fulcrum.techniques.base import Candidate


@runtime_checkable
class Session(Protocol):
    """A model deployed on a runtime, called like a PyTorch model: tensors in, tensor out."""

    runtime: str
    threads: int

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor: ...

    def with_threads(self, threads: int) -> Session:
        """A session on the same artifact with ``threads`` intra-op threads."""
        ...

    def artifact_bytes(self) -> int:
        """Bytes of the deployable artifact (the file(s) a user ships)."""
        ...


class Runtime(Protocol):
    """A deployment target: one file under ``fulcrum/runtimes`` implements it and registers it
    in ``fulcrum.runtimes.RUNTIMES``."""

    name: str
    artifact: str  # the format of its deployable file: "onnx", "safetensors", ...
    tunes_threads: bool  # whether a session's thread count is its own (not the process's)
    # the modes of Fulcrum's ONNX quantization it runs (None: every mode; (): none)
    quantize_modes: tuple[str, ...] | None

    def unavailable(self) -> str | None:
        """Why this runtime cannot run here (a missing extra, say), or None."""
        ...

    def deploy(
        self,
        candidate: Candidate,
        example_inputs: Sequence[torch.Tensor],
        *,
        threads: int,
        output: str | None = None,
    ) -> Session:
        """``candidate`` as it runs on this runtime (``example_inputs``: one batch of model
        inputs, for exporters); ``output`` names the output to judge."""
        ...

    def load(self, folder: Path, *, threads: int, output: str | None = None) -> Session:
        """A saved candidate's artifact (``fulcrum.compression.save_candidate``) as a session."""
        ...


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# instructions that compute in bf16 natively (without them bf16 is emulated, slower than f32)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The instruction sets this CPU reports (Linux ``/proc/cpuinfo``); None where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def int8_dot_products() -> bool:
    """Whether this CPU multiplies int8 with int32 accumulation (VNNI, AMX), without the int16
    saturation of u8 x s8 pairs; True where unknown."""
    flags = cpu_flags()
    return flags is None or bool(flags & set(INT8_DOT_FLAGS))


def bf16_missing() -> str | None:
    """Why this CPU cannot compute in bf16 natively, or None where it can (or is unknown)."""
    flags = cpu_flags()
    if flags is None or flags & set(BF16_FLAGS):
        return None
    return (
        "this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 would be emulated, slower "
        "than f32, so it is not offered here"
    )


def refuse_graphs(candidate: Candidate, target: str) -> None:
    """A PyTorch target runs a float model (torch-compile also an int8 program): refuse a
    candidate the recipe turned into an ONNX graph, naming where it runs."""
    if candidate.onnx is not None:
        done = [s.config.get("type", "?") for s in candidate.steps if s.facts.get("graph")]
        raise TechniqueError(
            f"the {target} target runs PyTorch models; this candidate is an ONNX graph "
            f"({', '.join(done) or 'an ONNX workload'}): deploy it on onnxruntime."
        )
    if candidate.program is not None and not target.startswith("torch-compile"):
        raise TechniqueError(
            f"this candidate is PyTorch's int8 program (quantize:int8-pt2e), which runs on the "
            f"torch-compile target, not {target}."
        )


def default_threads() -> int:
    """The cores this process may use (respects CPU affinity and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_choices(threads: int) -> tuple[int, ...]:
    """The intra-op thread counts an ONNX Runtime model is timed with, up to ``threads``: 1, the
    powers of two between, and ``threads``. A model of a few thousand MACs per node runs faster
    on one thread than on two here (waking a second thread costs more than the node's work)."""
    return tuple(
        sorted({1, threads, *(2**k for k in range(threads.bit_length()) if 2**k < threads)})
    )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run PyTorch with ``threads`` intra-op threads, restoring the previous setting after."""
    previous = torch.get_num_threads()
    if previous == threads:  # (setting it costs a little on every call of a timed model)
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def caller_state(*models: Any) -> Iterator[None]:
    """Leave the caller's state as it was: torch's thread count and random generator, the
    warning filters, and the train/eval mode of ``models`` (library code may change them)."""
    threads = torch.get_num_threads()
    modes = [(m, m.training) for m in models if isinstance(m, nn.Module)]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            for model, training in modes:
                with contextlib.suppress(NotImplementedError):
                    model.train(training)


F = TypeVar("F", bound=Callable[..., Any])


def keeps_caller_state(*arguments: str) -> Callable[[F], F]:
    """Decorator: the call runs in ``caller_state`` of the models named by ``arguments``
    (argument names, or ``"workload.model"`` for an attribute of one)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            models = []
            for path in arguments:
                name, _, attribute = path.partition(".")
                value = bound.get(name)
                models.append(getattr(value, attribute, None) if attribute else value)
            with caller_state(*models):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate


def as_inputs(x: Any) -> tuple[torch.Tensor, ...]:
    """A batch's model inputs as a tuple: a tensor becomes ``(tensor,)``."""
    if isinstance(x, torch.Tensor):
        return (x,)
    return tuple(x)


def output_tensor(out: Any) -> torch.Tensor:
    """The primary output of a model call: a tensor, ``logits``, or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple) and out:
        return output_tensor(out[0])
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor or a tuple of tensors")


def with_batch(inputs: Sequence[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, ...]:
    """Example inputs resized to ``batch_size`` along the first axis (by repeating sample 0)."""
    return tuple(x[:1].expand(batch_size, *x.shape[1:]).contiguous() for x in inputs)


def check_example_inputs(model: nn.Module, inputs: Sequence[torch.Tensor], label: str) -> None:
    """Run ``model`` once on ``inputs`` and turn a shape failure into a one-line ShapeError."""
    try:
        with torch.no_grad():
            model(*inputs)
    except (RuntimeError, ValueError, IndexError, NotImplementedError) as exc:
        raise input_shape_error(inputs, exc, label) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer and optimizer and the exporters log, warn and print freely;
    keep them quiet while they work, and leave everything as it was after.

    The C++ warnings of the sessions ONNX Runtime's quantizer creates for itself go to file
    descriptor 2, which is pointed at /dev/null meanwhile: ONNX Runtime's process-wide logger
    severity has no getter, so setting it could not be undone.
    """
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            _native_stderr_muted(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """File descriptor 2 to /dev/null, restored after (what native libraries print to)."""
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(fd)
    except (OSError, ValueError, io.UnsupportedOperation):  # no real stderr (embedded, captured)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(null)


def input_shape_error(
    inputs: Sequence[torch.Tensor], exc: BaseException, label: str = ""
) -> ShapeError:
    """The one-line error for a model that cannot run on ``inputs``."""
    shapes = ", ".join(str(list(x.shape)) for x in inputs)
    prefix = f"{label}: " if label else ""
    return ShapeError(
        f"{prefix}the model cannot run on example inputs of shape {shapes} ({first_line(exc)}); "
        "give inputs shaped like one batch of the model's data."
    )


def forward_arguments(model: nn.Module) -> list[str] | None:
    """The names of ``model.forward``'s positional arguments, in order (None if unknowable)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        positional.append(p.name)
    return positional


def input_names(model: nn.Module, count: int) -> list[str]:
    """The names of ``model``'s first ``count`` forward arguments: what its ONNX inputs are called.

    A forward that takes ``*args`` (or fewer named arguments) gives ``input_0``, ``input_1``, ...
    """
    positional = forward_arguments(model) or []
    if len(positional) >= count:
        return positional[:count]
    return [f"input_{i}" for i in range(count)] if count > 1 else ["input"]


def dynamic_axes(inputs: Sequence[torch.Tensor]) -> list[dict[int, str]]:
    """Axes that vary between calls: the batch, and the sequence of token inputs (2-D integers)."""
    return [
        {0: "batch", 1: "sequence"} if x.ndim == 2 and not x.is_floating_point() else {0: "batch"}
        for x in inputs
    ]


def predict(
    model: nn.Module | Session, batches: Iterable[Any], threads: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``model`` over ``(inputs, target)`` batches; return stacked outputs and targets."""
    outputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    with caller_state(model), torch_threads(threads or default_threads()), torch.inference_mode():
        if isinstance(model, nn.Module):
            with contextlib.suppress(NotImplementedError):  # a torch.export program has no modes
                model.eval()  # restored by caller_state
        for batch in batches:
            x, y = (
                (batch[0], batch[1])
                if isinstance(batch, list | tuple) and len(batch) > 1
                else (batch, None)
            )
            outputs.append(output_tensor(model(*as_inputs(x))).float().numpy())
            if y is not None:
                targets.append(torch.as_tensor(y).numpy())
    out = np.concatenate(outputs) if outputs else np.empty((0,))
    return out, (np.concatenate(targets) if targets else None)
