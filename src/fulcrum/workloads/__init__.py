"""Workloads: built-in names, TOML files pointing at user code, and ONNX files."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from fulcrum.errors import WorkloadError, suggest
from fulcrum.workloads.base import Workload, cache_dir

__all__ = ["BUILTINS", "Workload", "cache_dir", "describe", "load", "source_of"]


# built-in name -> the module under fulcrum.workloads that defines it (imported when used)
MODULES = {
    "digits": "digits",
    "breast-cancer": "breast_cancer",
    "minilm": "minilm",
    "timeseries": "timeseries",
    "resnet18": "resnet18",
    "mobilenet": "mobilenet",
    "keywords": "keywords",
    "detection": "detection",
    # the Hello Edge families beside keywords' DS-CNN, one module for all (hello_edge.FAMILIES)
    "keywords-dnn": "hello_edge",
    "keywords-cnn": "hello_edge",
    "keywords-lstm": "hello_edge",
    "keywords-gru": "hello_edge",
    "keywords-crnn": "hello_edge",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"fulcrum.workloads.{MODULES[name]}")


def _builder(name: str) -> Callable[[], Workload]:
    def build() -> Workload:
        module = _module(name)
        # a module of several built-ins builds the one named
        named = name in getattr(module, "FAMILIES", {})
        workload: Workload = module.build(name) if named else module.build()
        return workload

    return build


BUILTINS: dict[str, Callable[[], Workload]] = {name: _builder(name) for name in MODULES}


def describe() -> dict[str, str]:
    """One line per built-in workload."""
    lines = {name: getattr(_module(name), "DESCRIPTIONS", {}).get(name) for name in MODULES}
    return {name: str(line or _module(name).DESCRIPTION) for name, line in lines.items()}


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
