"""Workloads: built-in names, TOML files pointing at user code, and ONNX files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fulcrum.errors import WorkloadError, suggest
from fulcrum.workloads.base import Workload, cache_dir

__all__ = ["BUILTINS", "Workload", "cache_dir", "describe", "load", "source_of"]


def _digits() -> Workload:
    from fulcrum.workloads import digits

    return digits.build()


def _breast_cancer() -> Workload:
    from fulcrum.workloads import breast_cancer

    return breast_cancer.build()


def _minilm() -> Workload:
    from fulcrum.workloads import minilm

    return minilm.build()


def _timeseries() -> Workload:
    from fulcrum.workloads import timeseries

    return timeseries.build()


def _resnet18() -> Workload:
    from fulcrum.workloads import resnet18

    return resnet18.build()


def _mobilenet() -> Workload:
    from fulcrum.workloads import mobilenet

    return mobilenet.build()


BUILTINS: dict[str, Callable[[], Workload]] = {
    "digits": _digits,
    "breast-cancer": _breast_cancer,
    "minilm": _minilm,
    "timeseries": _timeseries,
    "resnet18": _resnet18,
    "mobilenet": _mobilenet,
}


def describe() -> dict[str, str]:
    """One line per built-in workload."""
    from fulcrum.workloads import breast_cancer, digits, minilm, mobilenet, resnet18, timeseries

    return {
        "digits": digits.DESCRIPTION,
        "breast-cancer": breast_cancer.DESCRIPTION,
        "minilm": minilm.DESCRIPTION,
        "timeseries": timeseries.DESCRIPTION,
        "resnet18": resnet18.DESCRIPTION,
        "mobilenet": mobilenet.DESCRIPTION,
    }


def load(
    spec: str, *, allow_pickle: bool = False, input_shapes: Sequence[Sequence[int]] | None = None
) -> Workload:
    """A workload from a built-in name, a ``.toml`` file or an ``.onnx`` file."""
    if spec in BUILTINS:
        return BUILTINS[spec]()
    path = Path(spec)
    if path.suffix == ".toml":
        from fulcrum.workloads.user import load_toml

        if not path.is_file():
            raise WorkloadError(f"workload file {spec!r} does not exist; check the path.")
        return load_toml(path, allow_pickle=allow_pickle)
    if path.suffix == ".onnx":
        from fulcrum.workloads.user import load_onnx

        return load_onnx(path, input_shapes)
    raise WorkloadError(
        f"unknown workload {spec!r}: give a built-in name ({', '.join(BUILTINS)}), a .toml file or an "
        f".onnx file.{suggest(spec, BUILTINS)}"
    )


def source_of(workload: Workload) -> str:
    """How to load ``workload`` again from anywhere: its built-in name or its file's full path."""
    if workload.name in BUILTINS and workload.source.endswith(".safetensors"):
        return workload.name
    return str(Path(workload.source).resolve()) if workload.source else workload.name
