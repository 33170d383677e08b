"""User workloads: a TOML file naming ``module:callable`` entries, or an ONNX file.

A TOML workload::

    task = "multiclass"                    # multiclass | binary | regression | embedding | detection
    model = "mymodels:make_model"          # callable returning an nn.Module ([model_args] = kwargs)
    data = "mydata:splits"                 # callable returning {"val": ..., "train": ..., "calib": ...}
    checkpoint = "weights.safetensors"     # optional; relative to this file
    metric = "mymetrics:score"             # optional; fn(y_true, outputs) -> float | {name: float}
    num_classes = 10                       # optional
    input_shape = [1, 1, 8, 8]             # optional; else one sample of the validation data

Each split may be a DataLoader, a Dataset or an ``(inputs, targets)`` pair. Instead of ``model``,
``onnx = "model.onnx"`` evaluates an ONNX file; ``data`` may then also be an ``.npz`` file with
arrays ``x_val``, ``y_val`` (and optionally ``x_train``, ``y_train``, ``x_calib``, ``y_calib``).
An ONNX model with several inputs takes one array per input, ``x_val_<input name>``; a ``data``
callable gives ``((x1, x2), y)`` pairs, in the order ``inputs = ["x1", "x2"]`` names. Of several
outputs, ``output = "probabilities"`` names the one judged (else the first float tensor).

A detector (``task = "detection"``) also names its post-processing and, to be trained, its loss::

    postprocess = "mydet:decode"           # fn(outputs, image_sizes) -> one dict per image
    loss = "mydet:loss"                    # optional; fn(outputs, targets) -> scalar tensor
    distill_loss = "mydet:distill"         # optional; fn(student_outputs, teacher_outputs)

Its data gives images ``(N, C, H, W)`` and, per image, a target ``{"boxes": (K, 4), "labels":
(K,)}`` (K may be 0) or ``(K, 5)`` rows ``[x1, y1, x2, y2, label]``: boxes in pixels of the model
input, ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``, labels in ``[0, num_classes)``. Batches
carry them as one ``(batch, M, 5)`` tensor padded with label -1 rows (a DataLoader of the user's
own must collate them so: ``fulcrum.workloads.base.detection_collate``). The network returns one
raw tensor (a tuple: the first element is judged); ``postprocess`` gets it with the images'
``(height, width)`` as a ``(batch, 2)`` tensor and returns, per image, ``{"boxes": (K, 4) x1 y1 x2
y2 pixels, "scores": (K,), "labels": (K,)}``; scores rank detections for COCO mAP. ``loss`` may
replace the training loss of any other task too.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fulcrum.errors import (
    ConfigError,
    DataError,
    FulcrumError,
    OnnxError,
    ShapeError,
    first_line,
    from_user_code,
    suggest,
)
from fulcrum.runtimes import OnnxModel, check_example_inputs
from fulcrum.workloads.base import SPLITS, Workload, check_task, first_inputs, to_loader
from fulcrum.workloads.checkpoint import load_into

log = logging.getLogger(__name__)

KEYS = (
    "name", "task", "model", "model_args", "onnx", "data", "checkpoint", "allow_pickle", "metric",
    "num_classes", "input_shape", "reference", "description", "postprocess", "loss",
    "distill_loss",
    # text and image workloads
    "transformers", "tokenizer", "text", "max_length", "example_length", "inputs", "output",
    "text_column", "label_column", "images",
)  # fmt: skip


def resolve(ref: Any, key: str, where: Path) -> Callable[..., Any]:
    """Import ``module:callable`` named by entry ``key`` of the TOML file ``where``."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ConfigError(
            f"entry {key!r} in {where.name} must look like 'module:callable'; got {ref!r}."
        )
    module_name, attr = ref.split(":")
    folder = str(where.parent.resolve())
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"entry {key!r} in {where.name}: module {module_name!r} cannot be imported ({exc}); "
            f"put it beside {where.name} or on PYTHONPATH."
        ) from None
    except Exception as exc:  # the module's own code raised while it was imported
        raise from_user_code(exc, f"module {module_name!r} (entry {key!r})", []) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(
                f"entry {key!r} in {where.name}: module {module_name!r} has no attribute {attr!r}."
                f"{suggest(attr, public)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"entry {key!r} in {where.name}: {ref!r} is a {type(target).__name__}, not a callable."
        )
    return target


def load_toml(path: Path, *, allow_pickle: bool = False) -> Workload:
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"workload file {str(path)!r} cannot be read as TOML ({exc}).") from None
    _check_entries(spec, path)
    name = str(spec.get("name", path.stem))
    check_task(spec["task"], path.name)
    _check_kinds(spec, path)
    if "images" in spec:  # a transformers image classifier and a folder of images by class
        from fulcrum.workloads.images import load as load_images

        return load_images(spec, path, name)
    if "text" in spec:
        return _load_text(spec, path, name, allow_pickle)
    onnx_model = _onnx_model(spec, path) if "onnx" in spec else None
    if onnx_model is None and "inputs" in spec:
        raise ConfigError(
            f"{path.name}: 'inputs' names the inputs of an ONNX model (or a text model); "
            "a PyTorch model takes its inputs in the order the data gives them."
        )
    splits = _load_data(
        spec["data"],
        path,
        onnx_model.input_names if onnx_model else None,
        spec.get("inputs"),
        spec["task"],
    )
    model: nn.Module | OnnxModel
    if onnx_model is not None:
        model = onnx_model
    elif "transformers" in spec:
        raise ConfigError(
            f"{path.name}: a transformers model folder needs its text: add text = 'sentences.txt'."
        )
    else:
        model = _build_model(spec, path, allow_pickle)
    if "input_shape" in spec:
        example: tuple[torch.Tensor, ...] = (
            torch.zeros(*spec["input_shape"], dtype=first_inputs(splits["val"], "val")[0].dtype),
        )
    else:
        example = first_inputs(splits["val"], "val")
    if isinstance(model, nn.Module):
        check_example_inputs(model, example, f"{path.name}")
    reference = (
        call_user(resolve(spec["reference"], "reference", path), f"reference {spec['reference']!r}")
        if "reference" in spec
        else None
    )
    functions = {k: resolve(spec[k], k, path) for k in _FUNCTIONS if k in spec}
    if spec["task"] == "detection" and "postprocess" not in functions:
        raise ConfigError(
            f"{path.name}: a detection workload needs postprocess = 'module:callable', which turns "
            "the model's raw output into boxes, scores and labels per image."
        )
    return Workload(
        name=name,
        task=spec["task"],
        model=model,
        val=splits["val"],
        train=splits.get("train"),
        calib=splits.get("calib") or splits.get("train"),
        example_inputs=example,
        num_classes=spec.get("num_classes"),
        reference=reference,
        source=str(path),
        description=str(spec.get("description", f"user workload from {path.name}")),
        metric=functions.get("metric"),
        postprocess=functions.get("postprocess"),
        loss=functions.get("loss"),
        distill_loss=functions.get("distill_loss"),
    )


def _check_entries(spec: dict[str, Any], path: Path) -> None:
    """The TOML file names known entries, the required ones, and one model."""
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        raise ConfigError(
            f"{path.name}: unknown entry {unknown[0]!r}; valid entries: {', '.join(KEYS)}.{suggest(unknown[0], KEYS)}"
        )
    data = (
        "images" if "images" in spec else "text" if {"text", "transformers"} & set(spec) else "data"
    )
    for required in ("task", data):
        if required not in spec:
            raise ConfigError(
                f"{path.name} has no {required!r} entry; add e.g. {required} = {_EXAMPLES[required]}."
            )
    if sum(k in spec for k in ("model", "onnx", "transformers")) != 1:
        raise ConfigError(
            f"{path.name} must name exactly one of 'model' (a module:callable), 'onnx' (a file) "
            "or 'transformers' (a model folder)."
        )


def _check_kinds(spec: dict[str, Any], path: Path) -> None:
    """Each entry of the TOML file is of the kind it must be: a string, a table, a number..."""
    strings: tuple[str, ...] = ("name", "model", "onnx", "data", "checkpoint", "metric")
    strings += ("postprocess", "loss", "distill_loss")
    strings += ("reference", "text", "description", "transformers", "tokenizer", "output")
    strings += ("text_column", "label_column", "images")
    kinds: dict[str, tuple[type, ...]] = {k: (str,) for k in strings}
    kinds |= {"model_args": (dict,), "allow_pickle": (bool,), "input_shape": (list,)}
    kinds["inputs"] = (list,)
    for key, types in kinds.items():
        if key in spec and not isinstance(spec[key], types):
            expected = {str: "a string", dict: "a table", bool: "true or false", list: "a list"}
            raise ConfigError(
                f"{path.name}: {key} must be {expected[types[0]]}; got {spec[key]!r}."
            )
    for key in ("num_classes", "max_length", "example_length"):
        value = spec.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"{path.name}: {key} must be a positive whole number; got {value!r}.")
    shape = spec.get("input_shape")
    if shape is not None and not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        raise ConfigError(
            f"{path.name}: input_shape must list positive whole numbers (one batch's shape, like "
            f"[1, 1, 8, 8]); got {shape!r}."
        )


# entries naming a user's function, passed to the Workload under the same names
_FUNCTIONS = ("metric", "postprocess", "loss", "distill_loss")
_EXAMPLES = {"task": '"multiclass"', "data": '"mydata:splits"', "text": '"sentences.txt"'}
_EXAMPLES["images"] = '"images/"  # one subfolder of images per class'


def _build_model(spec: dict[str, Any], path: Path, allow_pickle: bool) -> nn.Module:
    factory = resolve(spec["model"], "model", path)
    arguments = spec.get("model_args", {})
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(
            f"[model_args] in {path.name} do not fit {spec['model']!r} ({exc}); "
            "give only the arguments it takes."
        ) from None
    built = call_user(factory, f"model callable {spec['model']!r}", **arguments)
    if not isinstance(built, nn.Module):
        raise ConfigError(
            f"entry 'model' in {path.name}: {spec['model']!r} returned a {type(built).__name__}, not a torch.nn.Module."
        )
    if "checkpoint" in spec:
        built = load_into(
            built,
            path.parent / spec["checkpoint"],
            allow_pickle=allow_pickle or bool(spec.get("allow_pickle")),
        )
    return built.eval()


def _load_text(spec: dict[str, Any], path: Path, name: str, allow_pickle: bool) -> Workload:
    """A text workload: a transformers model folder (or module:callable), its tokenizer, texts."""
    from fulcrum.workloads import text

    where, task = path.name, spec["task"]
    model, tokenizer, names = _text_model(spec, path, allow_pickle)
    positions = text.check_tokenizer(tokenizer, model, where)
    max_length = int(spec.get("max_length", positions))
    if not 2 <= max_length <= positions:
        raise ConfigError(
            f"{where}: max_length {max_length} must be between 2 and the model's "
            f"{positions} positions; texts longer than max_length are truncated."
        )
    source = spec["text"]
    raw = (
        text.read_text_file(path.parent / source, task, where, spec, text.label_ids(model))
        if isinstance(source, str) and source.endswith(text.TEXT_FILES)
        else resolve(source, "text", path)()
    )
    texts = text.text_splits(raw, task, where)
    splits = {
        split: text.tokenize(tokenizer, items, targets, max_length)
        for split, (items, targets) in texts.items()
    }
    pad = tokenizer.pad_token_id or 0
    loaders = {
        split: text.loader(
            data,
            pad,
            batch_size=32 if split != "val" else 64,
            shuffle=split == "train",
            names=names,
        )
        for split, data in splits.items()
        if data.ids
    }
    if "val" not in loaders:
        raise DataError(f"{where}: the val text split is empty; give it at least one text.")
    length = min(int(spec.get("example_length", 128)), max_length)
    ids, mask = text.example_inputs(tokenizer, texts["val"][0], length)
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    example = tuple(tensors[n] for n in names)
    check_example_inputs(model, example, where)
    truncated = sum(d.truncated for d in splits.values())
    if truncated:
        log.warning(
            "%s: %d texts longer than %d tokens were truncated", where, truncated, max_length
        )
    return Workload(
        name=name,
        task=task,
        model=model,
        val=loaders["val"],
        train=loaders.get("train"),
        calib=loaders.get("calib") or loaders.get("train"),
        example_inputs=example,
        num_classes=spec.get("num_classes"),
        source=str(path),
        description=str(spec.get("description", f"text workload from {path.name}")),
        info={
            **text.folders(spec, path.parent),
            "max_length": max_length,
            "median_length": text.median_length(splits["val"]),
            "truncated": truncated,
            "texts": {k: len(v.ids) for k, v in splits.items()},
        },
    )


def _text_model(
    spec: dict[str, Any], path: Path, allow_pickle: bool
) -> tuple[nn.Module, Any, list[str]]:
    """A text workload's model, its tokenizer and the names of its inputs, checked."""
    from fulcrum.workloads import text

    where = path.name
    if "onnx" in spec:
        raise ConfigError(f"{where}: a text workload needs a PyTorch model; use 'transformers'.")
    if "transformers" in spec:
        model = text.load_pretrained(
            path.parent / str(spec["transformers"]), spec["task"], spec.get("num_classes"), where
        )
    else:
        model = _build_model(spec, path, allow_pickle)
    folder = spec.get("tokenizer", spec.get("transformers"))
    if folder is None:
        raise ConfigError(
            f"{where}: a text workload needs tokenizer = 'folder with tokenizer.json'."
        )
    tokenizer = text.load_tokenizer(path.parent / str(folder), where)
    names = spec.get("inputs", list(text.TEXT_INPUTS[:2]))
    unknown = [n for n in names if n not in text.TEXT_INPUTS]
    if unknown or not names or names[0] != "input_ids":
        raise ConfigError(
            f"{where}: inputs {names} must start with 'input_ids' and use only "
            f"{', '.join(text.TEXT_INPUTS)}.{suggest(str(unknown[0]), text.TEXT_INPUTS) if unknown else ''}"
        )
    text.check_input_names(model, names, where)
    return model, tokenizer, names


def _onnx_model(spec: dict[str, Any], path: Path) -> OnnxModel:
    """The ONNX model a TOML file names, its judged output and input order checked."""
    model = OnnxModel(check_onnx(path.parent / spec["onnx"]), output=spec.get("output"))
    if "output" not in spec:
        log.info(
            "%s: judging output %r of %s (the first float tensor output); choose another "
            "with output = '...'",
            path.name,
            model.chosen_output,
            model.name,
        )
    names = spec.get("inputs")
    if names is not None and (
        sorted(map(str, names)) != sorted(model.input_names) or len(set(names)) != len(names)
    ):
        raise ConfigError(
            f"{path.name}: inputs {names} must name each input of {model.name} once, in the "
            f"order the data gives them; its inputs are {', '.join(model.input_names)}."
        )
    return model


def _load_data(
    ref: str,
    where: Path,
    model_inputs: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    task: str = "",
) -> dict[str, Any]:
    """The splits named by entry ``data``, as DataLoaders.

    For an ONNX model with several inputs, a ``.npz`` file holds one array per input and split,
    ``x_<split>_<input name>``; a callable gives ``((x1, x2, ...), targets)`` pairs, in the
    order of the TOML's ``inputs`` (else the model's). Either way, batches reach the model in
    the order of its inputs.
    """
    several = model_inputs is not None and len(model_inputs) > 1
    if isinstance(ref, str) and ref.endswith(".npz"):
        arrays = read_npz(where.parent / ref, where)
        raw: Mapping[str, Any] = (
            _npz_several(arrays, ref, list(model_inputs or ()))
            if several
            else {
                s: (arrays[f"x_{s}"], arrays[f"y_{s}"])
                for s in SPLITS
                if f"x_{s}" in arrays and f"y_{s}" in arrays
            }
        )
    else:
        raw = call_user(resolve(ref, "data", where), f"data callable {ref!r}")
        if several and order is not None and isinstance(raw, Mapping):
            raw = {s: _in_model_order(v, order, model_inputs or ()) for s, v in raw.items()}
    unknown = [k for k in raw if k not in SPLITS] if isinstance(raw, Mapping) else []
    if unknown:
        raise ConfigError(
            f"entry 'data' in {where.name} gives a split named {unknown[0]!r}; splits are "
            f"{', '.join(SPLITS)}.{suggest(str(unknown[0]), SPLITS)}"
        )
    if not isinstance(raw, Mapping) or "val" not in raw:
        raise ConfigError(
            f"entry 'data' in {where.name} must give a mapping with a 'val' split "
            f"(and optionally 'train', 'calib'); got {type(raw).__name__}"
            f"{' with keys ' + str(sorted(raw)) if isinstance(raw, Mapping) else ''}."
        )
    return {
        s: to_loader(raw[s], s, shuffle=(s == "train"), task=task)
        for s in SPLITS
        if raw.get(s) is not None
    }


def call_user(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """``fn`` (the user's own code) called; what it raises is the user's to fix (exit 2), said
    in one line with the last line of their file it passed through, never a Fulcrum bug."""
    try:
        return fn(*args, **kwargs)
    except FulcrumError:
        raise
    except Exception as exc:
        files = [f for f in (inspect.getsourcefile(fn) if _has_source(fn) else None,) if f]
        raise from_user_code(exc, what, files) from None


def _has_source(fn: Any) -> bool:
    try:
        return inspect.getsourcefile(fn) is not None
    except TypeError:  # a builtin or a C extension
        return False


def read_npz(path: Path, where: Path) -> Any:
    """The arrays of a ``.npz`` file named by a TOML's ``data``: numbers only, never pickles."""
    if not path.is_file():
        raise DataError(
            f"entry 'data' in {where.name}: {str(path)!r} does not exist; name a .npz file beside "
            f"{where.name} (x_val, y_val, ...)."
        )
    with open(path, "rb") as handle:
        if handle.read(2) != b"PK":  # a .npz is a zip archive of .npy files
            raise DataError(
                f"entry 'data' in {where.name}: {path.name} is not a .npz file (not a zip "
                "archive of arrays); save one with numpy.savez."
            )
    try:
        arrays = np.load(path, allow_pickle=False)
        return {name: arrays[name] for name in arrays.files}
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"entry 'data' in {where.name}: {path.name} holds an object array, which would "
                "need pickle to load; save numeric arrays (np.savez(path, x_val=..., y_val=...))."
            ) from None
        raise DataError(f"{path.name} cannot be read as .npz ({first_line(exc, 120)}).") from None
    except (OSError, EOFError) as exc:
        raise DataError(
            f"entry 'data' in {where.name}: {path.name} is not a .npz file ({first_line(exc, 120)}); "
            "save one with numpy.savez."
        ) from None


def _npz_several(arrays: Any, ref: str, names: list[str]) -> dict[str, Any]:
    raw = {}
    for split in SPLITS:
        keys = [f"x_{split}_{n}" for n in names]
        if f"y_{split}" not in arrays or not any(k in arrays for k in keys):
            continue
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ConfigError(
                f"{ref} has no array {missing[0]!r}; a model with inputs {', '.join(names)} needs "
                f"one array per input: {', '.join(keys)}."
            )
        raw[split] = (tuple(arrays[k] for k in keys), arrays[f"y_{split}"])
    return raw


def _in_model_order(split: Any, order: Sequence[str], names: Sequence[str]) -> Any:
    """An ``((inputs in data order), targets)`` pair with its inputs in the model's order."""
    if isinstance(split, tuple | list) and len(split) == 2 and isinstance(split[0], tuple):
        given = dict(zip(order, split[0], strict=False))
        return tuple(given[n] for n in names), split[1]
    return split


def check_onnx(path: Path) -> Path:
    """``path`` if it is an ONNX model that passes ``onnx.checker``; else a one-line OnnxError."""
    import onnx

    if not path.is_file():
        raise OnnxError(f"ONNX file {str(path)!r} does not exist; check the path.")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        first = first_line(exc, 300)
        raise OnnxError(
            f"{path.name} is not a valid ONNX model (onnx.checker: {first}); re-export it from its framework."
        ) from None
    return path


def onnx_example_inputs(
    path: Path, input_shapes: Sequence[Sequence[int]] | None = None
) -> tuple[torch.Tensor, ...]:
    """Zero inputs for an ONNX model: its declared shapes with a symbolic batch axis set to 1."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    if input_shapes is not None and len(input_shapes) != len(inputs):
        raise ShapeError(
            f"{path.name} has {len(inputs)} inputs; got {len(input_shapes)} input shapes."
        )
    tensors = []
    for i, value in enumerate(inputs):
        ttype = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if input_shapes is not None:
            shape = list(input_shapes[i])
            if len(shape) != len(dims) or any(
                d is not None and d != s for d, s in zip(dims, shape, strict=False) if d
            ):
                raise ShapeError(
                    f"{path.name}: input {value.name!r} has shape {dims}; the given shape {shape} does not fit it."
                )
        else:
            if any(d is None for d in dims[1:]):
                raise ShapeError(
                    f"{path.name}: input {value.name!r} has symbolic dimensions {dims}; "
                    "give concrete ones with --input-shape (e.g. 1,3,224,224)."
                )
            shape = [1 if d is None else d for d in dims]
        tensors.append(torch.from_numpy(np.zeros(shape, dtype=dtype)))
    return tuple(tensors)


def load_onnx(path: Path, input_shapes: Sequence[Sequence[int]] | None = None) -> Workload:
    """A bare ONNX file: profiled from its graph; evaluation needs a TOML file with data."""
    model = OnnxModel(check_onnx(path))
    example = onnx_example_inputs(path, input_shapes)
    model(*example)  # fails with a one-line ShapeError if the inputs do not fit
    return Workload(
        name=path.stem,
        task="multiclass",
        model=model,
        val=None,
        example_inputs=example,
        source=str(path),
        description=f"ONNX model {path.name} (no data: profile only)",
    )
