"""Tests of fulcrum.metrics against direct scikit-learn calls."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
from rich.console import Console
from sklearn import metrics as skm

from fulcrum.errors import ConfigError, DataError
from fulcrum.metrics import (
    TASKS,
    Evaluation,
    classification_metrics,
    compute,
    embedding_metrics,
    regression_metrics,
    render,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _assert_python_floats(ev: Evaluation) -> None:
    for name, value in ev.metrics.items():
        assert value is None or type(value) is float, (name, type(value))


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def multiclass_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]  # informative but imperfect
    return y, logits


def test_multiclass_matches_sklearn(multiclass_data, no_warnings) -> None:
    y, logits = multiclass_data
    ev = compute("multiclass", y, logits)
    pred, proba, labels = logits.argmax(1), _softmax(logits), [0, 1, 2, 3]
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "roc_auc_ovr": skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels),
    }
    for avg in ("macro", "weighted"):
        kw = {"labels": labels, "average": avg, "zero_division": 0}
        expected[f"precision_{avg}"] = skm.precision_score(y, pred, **kw)
        expected[f"recall_{avg}"] = skm.recall_score(y, pred, **kw)
        expected[f"f1_{avg}"] = skm.f1_score(y, pred, **kw)
    assert ev.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert ev.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert 0.4 < ev.metrics["accuracy"] < 1.0  # the data is neither trivial nor random
    assert ev.task == "multiclass" and ev.n_samples == 200 and ev.notes == ()
    assert ev.labels == labels
    assert ev.confusion_matrix == skm.confusion_matrix(y, pred, labels=labels).tolist()
    _assert_python_floats(ev)


def test_multiclass_class_absent_from_predictions(no_warnings) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 3))
    logits[:, 2] -= 100.0  # class 2 is never predicted
    pred = logits.argmax(1)
    assert 2 not in pred and 2 in y
    ev = classification_metrics(y, logits)
    for avg in ("macro", "weighted"):
        kw = {"labels": [0, 1, 2], "average": avg, "zero_division": 0}
        assert ev.metrics[f"precision_{avg}"] == pytest.approx(skm.precision_score(y, pred, **kw))
        assert ev.metrics[f"f1_{avg}"] == pytest.approx(skm.f1_score(y, pred, **kw))
    assert [row[2] for row in ev.confusion_matrix] == [0, 0, 0]
    assert ev.metrics["roc_auc_ovr"] is not None


def test_multiclass_class_absent_from_labels(no_warnings) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=50)  # class 2 of 3 never occurs
    ev = compute("multiclass", y, rng.normal(size=(50, 3)))
    assert ev.metrics["roc_auc_ovr"] is None
    assert any("roc_auc_ovr" in n and "[2]" in n for n in ev.notes)
    assert ev.metrics["accuracy"] is not None
    assert ev.confusion_matrix[2] == [0, 0, 0]


def test_multiclass_single_class(no_warnings) -> None:
    y = np.full(20, 3)
    logits = np.random.default_rng(3).normal(size=(20, 5))
    ev = compute("multiclass", y, logits)
    assert ev.metrics["roc_auc_ovr"] is None
    assert any("single class (3)" in n for n in ev.notes)
    pred = logits.argmax(1)
    assert ev.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for key in ("precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
        assert isinstance(ev.metrics[key], float), key
    assert len(ev.confusion_matrix) == 5


def test_multiclass_num_classes_and_stable_softmax(no_warnings) -> None:
    y = np.array([0, 1, 2, 1])
    logits = np.array([[1e4, 0, 0], [0, 1e4, 0], [0, 0, 1e4], [-1e4, 1e4, 0]])
    ev = compute("multiclass", y, logits, num_classes=3)
    assert ev.metrics["accuracy"] == 1.0 and ev.metrics["roc_auc_ovr"] == 1.0
    with pytest.raises(DataError, match="4 columns but num_classes is 3"):
        compute("multiclass", y, np.zeros((4, 4)), num_classes=3)


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=150)
    return y, rng.normal(size=150) + 1.2 * (2 * y - 1)


def _expected_binary(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (proba >= threshold).astype(int)
    kw = {"pos_label": 1, "zero_division": 0}
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, **kw),
        "recall": skm.recall_score(y, pred, **kw),
        "f1": skm.f1_score(y, pred, **kw),
        "roc_auc": skm.roc_auc_score(y, proba),
        "threshold": threshold,
    }


@pytest.mark.parametrize("shape", ["n", "n1", "n2"])
def test_binary_score_shapes_match_sklearn(binary_data, shape, no_warnings) -> None:
    y, logit = binary_data
    scores = {"n": logit, "n1": logit[:, None], "n2": np.stack([-logit / 2, logit / 2], 1)}[shape]
    ev = compute("binary", y, scores)
    expected = _expected_binary(y, _sigmoid(logit), 0.5)
    assert ev.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert ev.metrics[key] == pytest.approx(value, abs=1e-12), key
    pred = (_sigmoid(logit) >= 0.5).astype(int)
    assert ev.confusion_matrix == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert ev.labels == [0, 1] and ev.task == "binary" and ev.n_samples == 150
    _assert_python_floats(ev)


def test_binary_custom_threshold(binary_data) -> None:
    y, logit = binary_data
    default, strict = compute("binary", y, logit), compute("binary", y, logit, threshold=0.9)
    expected = _expected_binary(y, _sigmoid(logit), 0.9)
    for key, value in expected.items():
        assert strict.metrics[key] == pytest.approx(value), key
    assert strict.metrics["threshold"] == 0.9
    assert strict.metrics["recall"] < default.metrics["recall"]
    assert strict.metrics["roc_auc"] == default.metrics["roc_auc"]
    with pytest.raises(ConfigError, match="threshold"):
        compute("binary", y, logit, threshold=1.5)


@pytest.mark.parametrize(
    "scores",
    [np.zeros(2), np.zeros((2, 1)), np.ones((2, 2))],
    ids=["n", "n1", "n2"],
)
def test_a_binary_score_exactly_at_the_threshold_is_positive(scores) -> None:
    # a logit of 0 (or two equal logits) is a probability of exactly 0.5
    ev = compute("binary", np.array([1, 0]), scores, threshold=0.5)
    assert ev.confusion_matrix == [[0, 1], [0, 1]]
    assert ev.metrics["recall"] == 1.0 and ev.metrics["accuracy"] == 0.5


def test_binary_single_class_and_no_positive_predictions(no_warnings) -> None:
    y = np.zeros(10, dtype=int)
    ev = compute("binary", y, np.full(10, -3.0))
    assert ev.metrics["roc_auc"] is None
    assert any("roc_auc" in n and "single class (0)" in n for n in ev.notes)
    assert ev.metrics["accuracy"] == 1.0
    assert ev.metrics["precision"] == 0.0 and ev.metrics["f1"] == 0.0  # zero_division=0
    assert ev.confusion_matrix == [[10, 0], [0, 0]]


def test_classification_metrics_dispatches_on_shape(binary_data) -> None:
    y, logit = binary_data
    assert classification_metrics(y, logit).task == "binary"
    assert classification_metrics(y, np.stack([-logit, logit], 1), num_classes=2).task == "binary"
    assert classification_metrics(y, np.stack([-logit, logit], 1)).task == "multiclass"


def test_regression_matches_sklearn(no_warnings) -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(loc=10.0, size=80)
    pred = y + rng.normal(scale=0.5, size=80)
    ev = compute("regression", y, pred[:, None])
    assert ev.metrics == pytest.approx(
        {
            "mae": skm.mean_absolute_error(y, pred),
            "rmse": math.sqrt(skm.mean_squared_error(y, pred)),
            "mape": skm.mean_absolute_percentage_error(y, pred),
            "r2": skm.r2_score(y, pred),
        }
    )
    assert ev.task == "regression" and ev.n_samples == 80 and ev.confusion_matrix is None
    _assert_python_floats(ev)


def test_regression_single_sample_r2_undefined(no_warnings) -> None:
    ev = regression_metrics(np.array([2.0]), np.array([[1.5]]))
    assert ev.metrics["r2"] is None and any("r2" in n for n in ev.notes)
    assert ev.metrics["mae"] == pytest.approx(0.5)


def test_embedding_identical_and_different(no_warnings) -> None:
    ref = np.random.default_rng(6).normal(size=(16, 4, 8)).astype(np.float32)
    ev = compute("embedding", None, ref.copy(), reference=ref)
    assert ev.metrics["cosine_mean"] == pytest.approx(1.0)
    assert ev.metrics["cosine_min"] == pytest.approx(1.0)
    assert ev.metrics["mse"] == pytest.approx(0.0)
    flipped = ref.copy()
    flipped[0] *= -1
    ev = embedding_metrics(flipped, ref)
    assert ev.metrics["cosine_min"] == pytest.approx(-1.0)
    assert ev.metrics["cosine_mean"] == pytest.approx(14 / 16)
    assert ev.metrics["mse"] == pytest.approx(
        skm.mean_squared_error(ref.reshape(16, -1), flipped.reshape(16, -1))
    )
    _assert_python_floats(ev)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: compute("multiclass", [], np.zeros((0, 3))), DataError, "zero samples"),
        (lambda: compute("regression", [], []), DataError, "zero samples"),
        (lambda: compute("binary", [0, 1, 1], [0.1, 0.2]), DataError, "3 samples.*has 2"),
        (lambda: compute("multiclass", [0, 1], np.zeros((3, 2))), DataError, "2 samples.*has 3"),
        (lambda: compute("multiclass", [0, 3], np.zeros((2, 3))), DataError, r"outside \[0, 3\)"),
        (lambda: compute("multiclass", [0, -1], np.zeros((2, 3))), DataError, r"outside \[0, 3\)"),
        (lambda: compute("binary", [0, 2], [0.1, 0.2]), DataError, r"outside \[0, 2\)"),
        (lambda: compute("binary", [0, 1], np.zeros((2, 3))), DataError, r"\(2, 3\)"),
        (lambda: compute("multiclass", [0, 1], [np.nan, 1.0]), DataError, "finite"),
        (lambda: compute("multiclas", [0], [[1.0, 0.0]]), ConfigError, "multiclass, binary"),
        (lambda: compute("embedding", None, np.zeros((2, 3))), ConfigError, "reference"),
        (
            lambda: compute("embedding", None, np.zeros((2, 3)), reference=np.zeros((2, 4))),
            DataError,
            r"\(2, 3\).*\(2, 4\)",
        ),
        (lambda: compute("regression", [1.0, 2.0], np.zeros((2, 3))), DataError, "same shape"),
    ],
)
def test_invalid_inputs(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_unknown_task_lists_all_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        compute("clustering", [0], [0.0])
    assert all(task in str(info.value) for task in TASKS)
    assert "\n" not in str(info.value)


def test_to_dict_round_trips_through_json(multiclass_data) -> None:
    y, logits = multiclass_data
    for ev in (
        compute("multiclass", y, logits),
        compute("binary", np.zeros(5, dtype=int), np.zeros(5)),  # roc_auc None + a note
        compute("regression", [1.0], [2.0]),
        compute("embedding", None, np.ones((3, 2)), reference=np.ones((3, 2))),
    ):
        data = json.loads(json.dumps(ev.to_dict()))
        assert data == ev.to_dict()
        assert Evaluation(**{**data, "notes": tuple(data["notes"])}) == ev


def test_render_prints_metrics_notes_and_matrix() -> None:
    console = Console(file=io.StringIO(), width=120)
    ev = compute("binary", np.zeros(4, dtype=int), np.array([-1.0, 1.0, -2.0, -3.0]))
    render(ev, console=console)
    text = console.file.getvalue()
    assert "accuracy" in text and "0.7500" in text
    assert "undefined" in text and "single class" in text
    assert "confusion matrix" in text
