"""Where a model runs: PyTorch eager or an ONNX Runtime session, with a fixed thread count.

Everything that executes a model for measurement or evaluation goes through here, so that both
runtimes see the same inputs, threads and output conventions.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import tempfile
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from fulcrum.errors import OnnxError, ShapeError, first_line

RUNTIMES = ("torch", "onnxruntime")


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
    keep them quiet while they work."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the calibration sessions' C++ warnings
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


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


# the float graphs exported last, by model object and the state of its tensors: a search exports
# the baseline for the quantization probe, the sensitivity analysis and each quantization of it,
# and a trial's model for its timing and again for its files (1.3 s an export on `digits`, a
# fifth of a short trial)
EXPORTS_KEPT = 4
_exported: OrderedDict[tuple[Any, ...], tuple[weakref.ref[nn.Module], bytes]] = OrderedDict()


def exported_bytes(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> bytes:
    """``model`` exported by ``export_onnx`` (at batch 1), as bytes; the same model with the
    same weights is exported once (any in-place change of a parameter or buffer, as training
    makes, changes the key)."""
    inputs = with_batch(tuple(example_inputs), 1)
    tensors = [*model.parameters(), *model.buffers()]
    key = (
        id(model),
        tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in tensors),
        tuple((tuple(x.shape), x.dtype) for x in inputs),
    )
    kept = _exported.get(key)
    if kept is not None and kept[0]() is model:
        _exported.move_to_end(key)
        return kept[1]
    import onnx

    with tempfile.TemporaryDirectory(prefix="fulcrum-") as tmp:
        path = export_onnx(model, inputs, Path(tmp) / "model.onnx")
        data = onnx.load(str(path)).SerializeToString()  # external data (over 2 GB) inlined
    _exported[key] = (weakref.ref(model), data)
    while len(_exported) > EXPORTS_KEPT:
        _exported.popitem(last=False)
    return data


def _reuse_torchlib_registry() -> None:
    """Let torch's ONNX exporter build its table of ATen translations once per process: it
    builds it anew on every export, parsing the source of some 1,500 onnxscript functions
    (0.46 s of a 1.3 s export of the `digits` CNN). Each export gets its own copy of the
    table, since a custom translation registers into it. Left as it is where torch's
    internals differ from what this expects."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - another torch
        return
    registry = _registration.ONNXRegistry
    build = getattr(registry, "from_torchlib", None)
    if build is None or getattr(build, "fulcrum_reuses", False):
        return
    built: dict[Any, Any] = {}

    def from_torchlib(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(*args, **kwargs)
        table = cls()
        try:
            table._opset_version = built[key]._opset_version
            table.functions = {k: list(v) for k, v in built[key].functions.items()}
        except AttributeError:  # pragma: no cover - another torch
            return build(*args, **kwargs)
        return table

    from_torchlib.fulcrum_reuses = True  # type: ignore[attr-defined]
    registry.from_torchlib = classmethod(from_torchlib)  # type: ignore[method-assign,assignment]


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    names: Sequence[str] | None = None,
    exporter: str = "dynamo",
) -> Path:
    """Export ``model`` to ONNX at ``path``; inputs keep the forward's argument names.

    The batch axis is dynamic, and so is the sequence axis of token inputs (2-D integer tensors).
    Uses the dynamo exporter (with the batch axis alone dynamic when the sequence cannot be), and
    falls back to the TorchScript one for models it cannot trace; ``exporter="torchscript"``
    tries the TorchScript exporter first (its graphs match ONNX Runtime's fusion patterns).
    """
    _reuse_torchlib_registry()
    was_training = model.training
    model.eval()  # restored below: the caller's model keeps its mode
    # a batch of 2: with 1, torch.export specializes the batch axis to the constant 1
    inputs = with_batch(tuple(example_inputs), 2)
    names = list(names) if names is not None else input_names(model, len(inputs))
    axes = dynamic_axes(inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)

    def dynamo(varying: list[dict[int, str]], named: bool = True) -> None:
        # named dims tie every input's batch (and sequence) together; AUTO lets the exporter
        # find the ranges itself where a named dim's range is refused (max positions, say)
        dims = {
            "batch": torch.export.Dim("batch", min=1, max=65536),
            "sequence": torch.export.Dim("sequence", min=1, max=65536),
        }
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=True,
            input_names=names,
            dynamic_shapes=tuple(
                {a: dims[n] if named else torch.export.Dim.AUTO for a, n in ax.items()}
                for ax in varying
            ),
            verbose=False,
        )

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            attempts: list[Callable[[], object]] = [
                lambda: dynamo(axes),
                lambda: dynamo(axes, named=False),
                lambda: dynamo([{0: "batch"} for _ in inputs]),
            ]
            torchscript = lambda: torch.onnx.export(  # noqa: E731
                model,
                inputs,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=["output"],
                dynamic_axes={n: ax for n, ax in zip(names, axes, strict=True)},
            )
            if exporter == "torchscript":
                attempts.insert(0, torchscript)
            else:
                attempts.append(torchscript)
            for i, attempt in enumerate(attempts):
                try:
                    attempt()
                    break
                except Exception:
                    if i == len(attempts) - 1:
                        raise
    finally:
        model.train(was_training)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    _tidy(path, axes)
    return path


KEPT_METADATA = (
    "pkg.torch.onnx.name_scopes",
)  # which PyTorch module made a node (quantize's skip)


def _tidy(path: Path, axes: Sequence[dict[int, str]]) -> None:
    """Name the inputs' symbolic dimensions (``s43``) ``batch`` and ``sequence``, and drop the
    exporter's per-node debugging metadata (stack traces, FX nodes): it would ship in the file
    (for a small model, more bytes than the weights) and count against its size."""
    import onnx

    proto = onnx.load(str(path))
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    rename: dict[str, str] = {}
    for value, ax in zip(inputs, axes, strict=False):
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and index in ax:
                rename.setdefault(dim.dim_param, ax[index])
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key in KEPT_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    external = {  # the exporter may have written the weights beside the graph
        e.value
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    onnx.save(proto, str(path))  # weights inline (under 2 GB): the side file is stale now
    for name in external:
        (path.parent / name).unlink(missing_ok=True)


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
    import onnxruntime as ort

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
        import onnx

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


Model = nn.Module | OnnxModel


def predict(
    model: Model, batches: Iterable[Any], threads: int | None = None
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
