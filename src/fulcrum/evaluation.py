"""The evaluate stage: run a model (PyTorch or ONNX Runtime) over a split and score it.

The scoring itself is ``fulcrum.metrics``, a library of scikit-learn metrics that any stage may
use (fine-tuning's early stopping does); this module is where models are run to be judged.

A detector is run batch by batch: the network (timed elsewhere as the model) gives its raw
output tensor, then the workload's ``postprocess`` (decoding and NMS, outside the network's
graph) turns it into boxes, scores and labels per image, which are scored with COCO mAP. The
image size handed to ``postprocess`` is the height and width of the first input's last two axes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fulcrum.errors import ConfigError, DataError
from fulcrum.metrics import (
    Evaluation,
    check_predictions,
    compute,
    detection_targets,
    finite_or_none,
)

if TYPE_CHECKING:
    from fulcrum.train import PostprocessFn
    from fulcrum.workloads import Workload


def evaluate(
    model: Any,
    data: Iterable[Any],
    task: str,
    *,
    num_classes: int | None = None,
    reference: Any = None,
    metric: Callable[[np.ndarray, np.ndarray], Mapping[str, float] | float] | None = None,
    threshold: float = 0.5,
    threads: int | None = None,
    postprocess: PostprocessFn | None = None,
) -> Evaluation:
    """Run ``model`` (a torch module or an ONNX model) over ``(inputs, target)`` batches and score it.

    ``reference`` is the model whose outputs an ``embedding`` task is compared with; ``metric``
    is a user function ``fn(y_true, outputs)`` whose result is added to the metrics (for a
    detection task, ``fn(targets, predictions)``: per image, ``(K, 5)`` target rows and the
    post-processed dict). ``postprocess`` turns a detector's raw outputs into detections
    (a detection task needs it).
    """
    from fulcrum.runtimes import caller_state, predict

    with caller_state(model, reference):  # iterating a DataLoader draws from torch's generator
        batches = list(data)
    if not batches:
        raise DataError("The validation data has zero samples; give the split at least one batch.")
    outputs: Any
    targets: Any
    if task == "detection":
        if postprocess is None:
            raise ConfigError(
                "a detection task is scored on post-processed detections: give its postprocess "
                "(a workload's, or postprocess= here)."
            )
        targets, outputs = detections(model, batches, postprocess, num_classes, threads)
    else:
        outputs, targets = predict(model, batches, threads)
    ref = reference_outputs(reference, data, batches, threads) if reference is not None else None
    result = compute(
        task, targets, outputs, num_classes=num_classes, reference=ref, threshold=threshold
    )
    if metric is None:
        return result
    extra = metric(targets if targets is not None else np.empty(0), outputs)
    name = getattr(metric, "__name__", "metric")
    values = dict(extra) if isinstance(extra, Mapping) else {name: extra}
    merged = {**result.metrics, **{k: finite_or_none(v) for k, v in values.items()}}
    # a note about a metric the workload's own function recomputed no longer applies
    notes = tuple(n for n in result.notes if n.split()[0] not in values)
    return replace(result, metrics=merged, notes=notes)


def detections(
    model: Any,
    batches: list[Any],
    postprocess: PostprocessFn | None,
    num_classes: int | None,
    threads: int | None,
    split: str = "val",
) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Per image of ``(images, targets)`` batches of ``split``: its target rows ``(K, 5)``
    (padding dropped) and ``postprocess``'s detections of ``model``'s raw output, both checked."""
    import torch

    from fulcrum.runtimes import as_inputs, predict

    if postprocess is None:
        raise ConfigError(
            "task 'detection' needs the workload's post-processing, which turns the network's raw "
            "output into boxes, scores and labels; in a TOML workload, postprocess = 'module:fn'."
        )
    name = getattr(postprocess, "__qualname__", "postprocess")
    targets: list[np.ndarray] = []
    predictions: list[dict[str, np.ndarray]] = []
    for batch in batches:
        if not isinstance(batch, list | tuple) or len(batch) != 2:
            raise DataError(
                "detection batches must be (images, targets) pairs, targets shaped (batch, "
                f"boxes, 5); got a {type(batch).__name__}."
            )
        images = as_inputs(batch[0])[0]
        count, size = len(images), (int(images.shape[-2]), int(images.shape[-1]))
        first = len(targets)
        targets += detection_targets(batch[1], size, num_classes, split, first)
        raw, _ = predict(model, [(batch[0], torch.zeros(count))], threads)
        with torch.no_grad():
            found = postprocess(torch.from_numpy(raw), torch.tensor([size] * count))
        predictions += check_predictions(found, count, num_classes, f"postprocess {name!r}", first)
    return targets, predictions


_REFERENCE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def reference_outputs(
    reference: Any, data: Any, batches: list[Any], threads: int | None
) -> np.ndarray:
    """The reference model's outputs on ``data``, computed once per (reference, data) pair.

    A search judges every candidate against the same original model on the same split; running
    the original again for each candidate would double the cost of evaluating a transformer.
    Only objects that can be weakly referenced (models, DataLoaders) are cached.
    """
    from fulcrum.runtimes import predict

    try:
        per_data = _REFERENCE.setdefault(reference, weakref.WeakKeyDictionary())
        if data not in per_data:
            per_data[data] = predict(reference, batches, threads)[0]
        return np.asarray(per_data[data])
    except TypeError:  # a list or another object without weak references: no cache
        return predict(reference, batches, threads)[0]


def evaluate_workload(
    workload: Workload, model: Any = None, *, threshold: float = 0.5, threads: int | None = None
) -> Evaluation:
    """Score ``model`` (default: the workload's own) on the workload's validation split.

    An embedding task without a reference model is judged against the workload's original
    model: fidelity to what was there before compression.
    """
    if workload.val is None:
        raise ConfigError(
            f"workload {workload.name!r} has no validation data; describe it in a TOML file with "
            "onnx = '...' and data = '...' (see the README) to evaluate it."
        )
    reference = workload.reference
    if reference is None and workload.task == "embedding":
        reference = workload.model
    return evaluate(
        workload.model if model is None else model,
        workload.val,
        workload.task,
        num_classes=workload.num_classes,
        reference=reference,
        metric=workload.metric,
        threshold=threshold,
        threads=threads,
        postprocess=workload.postprocess,
    )
