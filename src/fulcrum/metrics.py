"""Task metrics (classification, regression, embedding) computed with scikit-learn."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics.pairwise import paired_cosine_distances

from fulcrum.errors import ConfigError, DataError, suggest

TASKS = ("multiclass", "binary", "regression", "embedding")
# the figure a task is judged by (higher is better): searches and early stopping use it
MAIN_METRIC = {
    "multiclass": "accuracy",
    "binary": "accuracy",
    "regression": "r2",
    "embedding": "cosine_mean",
}


@dataclass(frozen=True)
class Evaluation:
    """Scalar metrics of one task on one split; a metric of None is undefined (see ``notes``)."""

    task: str
    metrics: dict[str, float | None]
    notes: tuple[str, ...] = ()
    confusion_matrix: list[list[int]] | None = None
    labels: list[int] | None = None
    n_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def finite_or_none(value: Any) -> float | None:
    """A python float, or None for NaN."""
    f = float(value)
    return None if math.isnan(f) else f


def _check(
    y_true: ArrayLike, outputs: ArrayLike, names: tuple[str, str] = ("y_true", "outputs")
) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as numpy, with one row per sample, the same length, and finite numbers."""
    (a, b), arrays = names, (np.asarray(y_true), np.asarray(outputs))
    if arrays[0].ndim == 0 or arrays[1].ndim == 0:
        raise DataError(f"{a} and {b} must be arrays with one row per sample; got a scalar.")
    if len(arrays[0]) == 0 or len(arrays[1]) == 0:
        raise DataError(
            f"The validation set has zero samples ({a}: {len(arrays[0])}, {b}: "
            f"{len(arrays[1])}); pass at least one sample."
        )
    if len(arrays[0]) != len(arrays[1]):
        raise DataError(
            f"{a} has {len(arrays[0])} samples but {b} has {len(arrays[1])}; "
            "pass one output per sample."
        )
    for name, arr in zip(names, arrays, strict=True):
        if arr.dtype.kind not in "biuf" or not np.all(np.isfinite(arr)):
            raise DataError(f"{name} must hold finite numbers; got dtype {arr.dtype} or NaN/inf.")
    return arrays


def _labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or y.dtype.kind not in "biuf" or not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(
            f"y_true must be a 1-D array of integer class labels; "
            f"got shape {y.shape}, dtype {y.dtype}."
        )
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(
            f"y_true has labels outside [0, {num_classes}) (e.g. {int(bad[0])}); "
            f"relabel the data or set num_classes."
        )
    return y


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _auc(
    name: str, y: np.ndarray, classes: list[int], call: Callable[[], float]
) -> tuple[float | None, list[str]]:
    """ROC AUC, or None with a note when it is undefined for these labels."""
    present = sorted(int(c) for c in np.unique(y))
    if len(present) < 2:
        return None, [f"{name} undefined: validation set has a single class ({present[0]})"]
    missing = [c for c in classes if c not in present]
    if missing:
        return None, [f"{name} undefined: classes {missing} are absent from the validation set"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UndefinedMetricWarning)
            return finite_or_none(call()), []
    except (ValueError, UndefinedMetricWarning) as exc:
        return None, [f"{name} undefined: {exc}"]


def classification_metrics(
    y_true: np.ndarray, scores: np.ndarray, num_classes: int | None = None, threshold: float = 0.5
) -> Evaluation:
    """Binary metrics for (n,) or (n, 1) logits or ``num_classes == 2``; multiclass otherwise.

    ``threshold`` applies to the positive-class probability of binary tasks only.
    """
    s = np.asarray(scores)
    if num_classes == 2 or s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1):
        return _binary(y_true, scores, threshold)
    return _multiclass(y_true, scores, num_classes)


def _multiclass(y_true: ArrayLike, scores: ArrayLike, num_classes: int | None) -> Evaluation:
    y, s = _check(y_true, scores, ("y_true", "scores"))
    if s.ndim != 2:
        raise DataError(
            f"Multiclass scores must have shape (n, C); got {s.shape}. "
            "Use task 'binary' for 1-D logits."
        )
    c = s.shape[1] if num_classes is None else num_classes
    if c < 2:
        raise ConfigError(f"Multiclass metrics need at least 2 classes; got {c}.")
    if s.shape[1] != c:
        raise DataError(
            f"scores have {s.shape[1]} columns but num_classes is {c}; make them agree."
        )
    labels = list(range(c))
    y = _labels(y, c)
    # scores may already be probabilities (an ONNX classifier's "probabilities" output)
    is_proba = bool(np.all(s >= 0) and np.all(s <= 1) and np.allclose(s.sum(axis=1), 1, atol=1e-3))
    proba = s.astype(np.float64) if is_proba else _softmax(s)
    pred = proba.argmax(axis=1)
    m: dict[str, float | None] = {"accuracy": finite_or_none(skm.accuracy_score(y, pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        m |= {
            f"precision_{avg}": finite_or_none(p),
            f"recall_{avg}": finite_or_none(r),
            f"f1_{avg}": finite_or_none(f),
        }
    m["roc_auc_ovr"], notes = _auc(
        "roc_auc_ovr",
        y,
        labels,
        lambda: skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels),
    )
    cm = skm.confusion_matrix(y, pred, labels=labels)
    return Evaluation("multiclass", m, tuple(notes), cm.tolist(), labels, len(y))


def _binary(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> Evaluation:
    """Binary metrics from (n,) or (n, 1) logits or (n, 2) two-class logits."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be a probability in [0, 1]; got {threshold}.")
    y, s = _check(y_true, scores, ("y_true", "scores"))
    if s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1):
        proba = 1.0 / (1.0 + np.exp(-s.reshape(-1).astype(np.float64)))
    elif s.ndim == 2 and s.shape[1] == 2:
        proba = _softmax(s)[:, 1]
    else:
        raise DataError(f"Binary scores must have shape (n,), (n, 1) or (n, 2); got {s.shape}.")
    y = _labels(y, 2)
    pred = (proba >= threshold).astype(np.int64)
    p, r, f, _ = skm.precision_recall_fscore_support(
        y, pred, average="binary", pos_label=1, zero_division=0
    )
    m: dict[str, float | None] = {
        "accuracy": finite_or_none(skm.accuracy_score(y, pred)),
        "precision": finite_or_none(p),
        "recall": finite_or_none(r),
        "f1": finite_or_none(f),
    }
    m["roc_auc"], notes = _auc("roc_auc", y, [0, 1], lambda: skm.roc_auc_score(y, proba))
    m["threshold"] = float(threshold)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    return Evaluation("binary", m, tuple(notes), cm.tolist(), [0, 1], len(y))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Evaluation:
    """MAE, RMSE, MAPE and R² of predictions against targets."""
    y, p = _check(y_true, y_pred, ("y_true", "y_pred"))
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    p = p.reshape(-1) if p.ndim == 2 and p.shape[1] == 1 else p
    if y.shape != p.shape:
        raise DataError(f"y_true {y.shape} and y_pred {p.shape} must have the same shape.")
    m: dict[str, float | None] = {
        "mae": finite_or_none(skm.mean_absolute_error(y, p)),
        "rmse": finite_or_none(skm.root_mean_squared_error(y, p)),
        "mape": finite_or_none(skm.mean_absolute_percentage_error(y, p)),
        "r2": None,
    }
    notes = ["mape is unreliable: y_true contains zeros"] if np.any(y == 0) else []
    if len(y) < 2:
        notes.append("r2 undefined: needs at least 2 samples")
    else:
        m["r2"] = finite_or_none(skm.r2_score(y, p))
    return Evaluation("regression", m, tuple(notes), n_samples=len(y))


def embedding_metrics(
    outputs: np.ndarray, reference: np.ndarray, neighbours: int = 10
) -> Evaluation:
    """How faithful embeddings are to reference embeddings of the same inputs.

    Per-row cosine similarity (mean, 5th percentile, minimum), MSE, and retrieval agreement:
    the mean overlap of each row's ``neighbours`` nearest rows (by cosine, itself excluded)
    under the outputs and under the reference — whether a search index built on the
    compressed model returns what the original would.
    """
    out, ref = np.asarray(outputs), np.asarray(reference)
    if out.shape != ref.shape or out.ndim < 2:
        raise DataError(
            f"Embedding outputs {out.shape} and reference {ref.shape} must have the same "
            "shape (n, d, ...); pass the reference model's outputs on the same inputs."
        )
    out, ref = _check(out, ref, ("outputs", "reference"))
    out, ref = (x.reshape(len(x), -1).astype(np.float64) for x in (out, ref))
    cos = 1.0 - paired_cosine_distances(out, ref)
    m: dict[str, float | None] = {
        "cosine_mean": finite_or_none(cos.mean()),
        "cosine_p5": finite_or_none(np.percentile(cos, 5)),
        "cosine_min": finite_or_none(cos.min()),
        "mse": finite_or_none(skm.mean_squared_error(ref, out)),
    }
    notes: list[str] = []
    k = min(neighbours, len(out) - 1)
    if k >= 1:
        m[f"retrieval_at_{neighbours}"] = finite_or_none(_neighbour_overlap(out, ref, k))
        if k < neighbours:
            notes.append(f"retrieval_at_{neighbours} uses {k} neighbours: only {len(out)} rows")
    else:
        m[f"retrieval_at_{neighbours}"] = None
        notes.append(f"retrieval_at_{neighbours} undefined: needs at least 2 rows")
    return Evaluation("embedding", m, tuple(notes), n_samples=len(out))


def _neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean fraction of each row's ``k`` nearest neighbours that ``a`` and ``b`` share."""

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argpartition(-similarity, k - 1, axis=1)[:, :k]

    na, nb = nearest(a), nearest(b)
    shared = [
        len(np.intersect1d(ra, rb, assume_unique=True)) for ra, rb in zip(na, nb, strict=True)
    ]
    return float(np.mean(shared) / k)


def compute(
    task: str,
    y_true: ArrayLike | None,
    outputs: ArrayLike,
    *,
    num_classes: int | None = None,
    reference: ArrayLike | None = None,
    threshold: float = 0.5,
) -> Evaluation:
    """Dispatch to the metrics of ``task`` (one of TASKS)."""
    if task not in TASKS:
        raise ConfigError(
            f"Unknown task {task!r}; valid tasks: {', '.join(TASKS)}.{suggest(task, TASKS)}"
        )
    out = np.asarray(outputs)
    if task == "embedding":
        if reference is None:
            raise ConfigError("Task 'embedding' needs reference embeddings; pass reference=...")
        return embedding_metrics(out, np.asarray(reference))
    if y_true is None:
        raise ConfigError(f"Task {task!r} needs y_true labels/targets; pass y_true.")
    y = np.asarray(y_true)
    if task == "multiclass":
        return _multiclass(y, out, num_classes)
    if task == "binary":
        return _binary(y, out, threshold)
    return regression_metrics(y, out)


def render(evaluation: Evaluation, console: Any = None) -> None:
    """Print the metrics, notes and confusion matrix as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{evaluation.task} metrics (n={evaluation.n_samples})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in evaluation.metrics.items():
        table.add_row(name, "undefined" if value is None else f"{value:.4f}")
    console.print(table)
    for note in evaluation.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    if evaluation.confusion_matrix is not None and evaluation.labels is not None:
        console.print("confusion matrix (rows: true label, columns: predicted label)")
        cm = Table()
        cm.add_column("true\\pred")
        for label in evaluation.labels:
            cm.add_column(str(label), justify="right")
        for label, row in zip(evaluation.labels, evaluation.confusion_matrix, strict=True):
            cm.add_row(str(label), *(str(v) for v in row))
        console.print(cm)
