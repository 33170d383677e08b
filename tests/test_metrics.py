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

from fulcrum.cli.evaluate import render
from fulcrum.errors import ConfigError, DataError
from fulcrum.metrics import (
    TASKS,
    Evaluation,
    classification_metrics,
    compute,
    embedding_metrics,
    regression_metrics,
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
    assert ev.notes == ("roc_auc_ovr undefined: classes [2] are absent from the validation set",)
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


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: compute("multiclass", [0, 1, 1], np.zeros((2, 3))),
            "y_true has 3 .* scores has 2",
        ),
        (lambda: compute("binary", [0, 1, 1], np.zeros(2)), "y_true has 3 .* scores has 2"),
        (
            lambda: compute("regression", [0.0, 1.0, 1.0], np.zeros(2)),
            "y_true has 3 .* y_pred has 2",
        ),
        (
            lambda: embedding_metrics(np.full((2, 3), np.nan), np.zeros((2, 3))),
            "^outputs must hold finite numbers",
        ),
        (
            lambda: embedding_metrics(np.zeros((2, 3)), np.full((2, 3), np.inf)),
            "^reference must hold finite numbers",
        ),
        (lambda: compute("multiclass", [0.5, 1.0], np.zeros((2, 2))), "integer class labels"),
        (
            lambda: compute("regression", [1.0, 2.0], 3.0),
            "^y_true and y_pred must be arrays with one row per sample; got a scalar.$",
        ),
        (
            lambda: compute("regression", 1.0, [3.0]),
            "^y_true and y_pred must be arrays with one row per sample; got a scalar.$",
        ),
        (
            lambda: compute("regression", [1.0], []),
            r"^The validation set has zero samples \(y_true: 1, y_pred: 0\); pass at least one",
        ),
        (
            lambda: compute("regression", [1.0, 2.0], [3.0]),
            "^y_true has 2 samples but y_pred has 1; pass one output per sample.$",
        ),
        (lambda: compute("multiclass", [[0, 1], [1, 0]], np.zeros((2, 2))), "1-D array of integer"),
        (
            lambda: compute("multiclass", [0, 3], np.zeros((2, 3))),
            r"the 3 classes of the model's outputs \(or of num_classes\): relabel the data or "
            "make the two agree",
        ),
        (
            lambda: compute("multiclass", [0, 1], np.zeros(2)),
            r"Use task 'binary' for 1-D logits\.$",
        ),
        (lambda: compute("multiclass", [0, 0], np.zeros((2, 1))), "at least 2 classes; got 1"),
        (
            lambda: classification_metrics([0, 1], np.zeros((2, 3)), num_classes=4),
            "3 columns but num_classes is 4",
        ),
    ],
)
def test_errors_name_the_input_at_fault_in_the_callers_words(call, match) -> None:
    """Each metric names its own inputs (scores, y_pred, outputs, reference), not a generic one."""
    with pytest.raises((DataError, ConfigError), match=match):
        call()


def test_column_labels_are_read_as_labels_and_scores_as_binary() -> None:
    """Labels of shape (n, 1) give the metrics of the same labels flat; (n, 1) scores are binary."""
    rng = np.random.default_rng(11)
    y, logits = rng.integers(0, 3, size=40), rng.normal(size=(40, 3))
    assert compute("multiclass", y[:, None], logits) == compute("multiclass", y, logits)
    yb, s = rng.integers(0, 2, size=40), rng.normal(size=40)
    assert classification_metrics(yb, s[:, None]).task == "binary"
    assert classification_metrics(yb[:, None], s[:, None]) == classification_metrics(yb, s)


def test_probability_rows_are_judged_as_given_and_other_scores_through_softmax() -> None:
    """Rows in [0, 1] that sum to 1 (within 1e-3) are probabilities (an ONNX classifier's
    output) and rank as given; any other scores are logits, softmaxed first."""
    rng = np.random.default_rng(12)
    y = np.arange(120) % 3
    proba = rng.dirichlet([0.4, 0.4, 0.4], size=120)
    proba[::7] = np.eye(3)[rng.integers(0, 3, size=len(proba[::7]))]  # exact 0s and 1s
    labels = [0, 1, 2]

    def auc(p: np.ndarray) -> float:
        return float(skm.roc_auc_score(y, p, multi_class="ovr", labels=labels))

    assert auc(proba) != pytest.approx(auc(_softmax(proba)))  # the two readings differ here
    assert compute("multiclass", y, proba).metrics["roc_auc_ovr"] == pytest.approx(auc(proba))
    nearly = np.minimum(proba * (1 + 5e-4), 1.0)  # sums up to 1.0005: still probabilities
    assert compute("multiclass", y, nearly).metrics["roc_auc_ovr"] == pytest.approx(auc(proba))
    over_one = proba.copy()
    over_one[0] = [1.0008, 0.0, 0.0]  # sums to 1 within 1e-3, but 1.0008 is no probability
    for scores in (proba * 0.5, proba * 1.002, proba * 1.5, over_one):
        expected = auc(_softmax(scores))
        assert compute("multiclass", y, scores).metrics["roc_auc_ovr"] == pytest.approx(expected)


def test_macro_averages_and_the_matrix_cover_every_class_of_the_model() -> None:
    """With num_classes=4 and class 3 neither true nor predicted, the macro averages still count
    it (as zero) and the confusion matrix is 4 x 4: the model's classes, not the data's."""
    rng = np.random.default_rng(13)
    y = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 4)) + 2 * np.eye(4)[y]
    logits[:, 3] = -50.0
    ev = compute("multiclass", y, logits, num_classes=4)
    pred, kw = logits.argmax(1), {"labels": [0, 1, 2, 3], "zero_division": 0}
    assert ev.metrics["precision_macro"] == pytest.approx(
        skm.precision_score(y, pred, average="macro", **kw)
    )
    assert ev.metrics["recall_macro"] < skm.recall_score(y, pred, average="macro")  # 4 not 3
    assert np.array(ev.confusion_matrix).shape == (4, 4)


def test_softmax_is_stable_row_by_row() -> None:
    """Each row is shifted by its own maximum: a row far below another keeps its probabilities."""
    y = np.array([0, 1])
    logits = np.array([[1e4, 0.0, 0.0], [-2e4, -1e4, -2e4]])
    ev = compute("multiclass", y, logits)
    assert ev.metrics["accuracy"] == 1.0 and ev.metrics["roc_auc_ovr"] is None  # 2 absent


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_thresholds_at_the_ends_of_zero_to_one_are_allowed(threshold) -> None:
    y, s = np.array([0, 1, 1, 0]), np.array([-3.0, 2.0, 0.5, 1.0])
    ev = classification_metrics(y, s, threshold=threshold)
    assert ev.metrics["threshold"] == threshold
    assert ev.metrics["recall"] == (1.0 if threshold == 0.0 else 0.0)


def test_binary_auc_note_names_the_metric() -> None:
    ev = compute("binary", np.ones(4, dtype=int), np.zeros(4))
    assert ev.notes == ("roc_auc undefined: validation set has a single class (1)",)


def test_regression_of_several_outputs_averages_r2_per_output_and_notes_exact_zeros() -> None:
    rng = np.random.default_rng(14)
    y = np.stack([rng.normal(size=30), 100 * rng.normal(size=30)], axis=1)
    pred = y + rng.normal(size=(30, 2))
    ev = regression_metrics(y, pred)
    assert ev.metrics["r2"] == pytest.approx(skm.r2_score(y, pred))  # per output, averaged
    assert ev.metrics["r2"] != pytest.approx(skm.r2_score(y.reshape(-1), pred.reshape(-1)))
    assert ev.notes == ()  # no zero in y_true
    with_zero = regression_metrics(np.array([0.0, 1.0]), np.array([0.5, 1.5]))
    assert with_zero.notes == ("mape is unreliable: y_true contains zeros",)
    assert with_zero.metrics["r2"] == pytest.approx(skm.r2_score([0.0, 1.0], [0.5, 1.5]))
    ones = regression_metrics(np.array([1.0, 2.0]), np.array([1.5, 2.5]))
    assert ones.notes == ()
    single = regression_metrics(np.array([2.0]), np.array([1.5]))
    assert single.notes == ("r2 undefined: needs at least 2 samples",)


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Retrieval agreement by its definition, row by row: the k rows of highest cosine
    similarity (itself excluded) under each, and the fraction they share."""

    def nearest(x: np.ndarray, i: int) -> set[int]:
        cos = [
            (float(x[i] @ x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])), j)
            for j in range(len(x))
            if j != i
        ]
        return {j for _, j in sorted(cos, reverse=True)[:k]}

    return float(np.mean([len(nearest(a, i) & nearest(b, i)) / k for i in range(len(a))]))


@pytest.mark.parametrize(("rows", "k"), [(300, 10), (40, 10), (11, 10), (5, 4), (2, 1)])
def test_retrieval_agreement_is_the_shared_fraction_of_cosine_neighbours(rows, k) -> None:
    """Against its definition, on rows of very different (and small) norms; fewer than 11 rows
    use fewer neighbours, and say so."""
    rng = np.random.default_rng(15)
    ref = rng.normal(size=(rows, 6)) * rng.uniform(0.001, 0.5, size=(rows, 1))
    out = ref + 0.8 * rng.normal(size=(rows, 6)) * np.abs(ref).mean(axis=1, keepdims=True)
    ev = embedding_metrics(out, ref)
    if rows >= 40:  # neighbours to choose from: the overlap is partial
        assert 0.2 < ev.metrics["retrieval_at_10"] < 0.9
    assert ev.task == "embedding" and ev.n_samples == rows
    assert ev.metrics["retrieval_at_10"] == pytest.approx(_overlap(out, ref, k))
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert ev.metrics["cosine_p5"] == pytest.approx(np.percentile(cos, 5))
    expected = () if rows > 10 else (f"retrieval_at_10 uses {k} neighbours: only {rows} rows",)
    assert ev.notes == expected


def test_retrieval_agreement_is_undefined_for_one_row() -> None:
    ev = embedding_metrics(np.ones((1, 3)), np.ones((1, 3)))
    assert ev.metrics["retrieval_at_10"] is None
    assert ev.notes == ("retrieval_at_10 undefined: needs at least 2 rows",)


EXPECTED = (
    "postprocess must return a list of 2 dicts (one per image) with 'boxes' (K, 4) "
    "[x1, y1, x2, y2] pixels, 'scores' (K,) and 'labels' (K,); "
)


def _image(k: int = 1, label: float = 0.0, **change: object) -> dict[str, object]:
    found: dict[str, object] = {
        "boxes": np.tile([1.0, 2.0, 5.0, 6.0], (k, 1)),
        "scores": np.full(k, 0.9),
        "labels": np.full(k, label),
    }
    return {**found, **change}


@pytest.mark.parametrize(
    ("found", "num_classes", "message"),
    [
        ({"boxes": []}, 3, "got a dict."),
        ([_image()], 3, "got a list of 1."),
        ([_image(), 7], 3, "image 6 got int."),
        (
            [_image(), {"boxes": 1, "score": 2}],
            3,
            "image 6 got a dict with keys ['boxes', 'score'].",
        ),
        (
            [_image(), _image(scores=np.zeros(2))],
            3,
            "image 6 got boxes (1, 4), scores (2,), labels (1,).",
        ),
        (
            [_image(), _image(labels=np.zeros((1, 1)))],
            3,
            "image 6 got boxes (1, 4), scores (1,), labels (1, 1).",
        ),
        (
            [_image(), _image(boxes=np.zeros((1, 3)))],
            3,
            "image 6 got boxes (1, 3), scores (1,), labels (1,).",
        ),
        ([_image(), _image(scores=np.array([np.nan]))], 3, "image 6 has NaN or inf values."),
        ([_image(), _image(label=3.0)], 3, "image 6 has label 3, outside [0, 3)."),
        ([_image(), _image(label=-1.0)], None, "image 6 has label -1, outside [0, num_classes)."),
        ([_image(), _image(label=0.5)], None, "image 6 has label 0.5, outside [0, num_classes)."),
        ([_image(label=2.0), _image(label=1.0)], 2, "image 5 has label 2, outside [0, 2)."),
    ],
)
def test_predictions_off_the_detection_convention_are_refused_saying_what_was_found(
    found, num_classes, message
) -> None:
    """Images are counted from ``first`` (the batch's place), and the message says what the
    convention is and what came instead."""
    from fulcrum.metrics import check_predictions

    with pytest.raises(DataError) as info:
        check_predictions(found, 2, num_classes, first=5)
    assert str(info.value) == EXPECTED + message


def test_predictions_on_the_convention_come_back_as_float_arrays() -> None:
    import torch

    from fulcrum.metrics import check_predictions

    tensors = {k: torch.as_tensor(v) for k, v in _image(2, label=1.0).items()}
    found = check_predictions([tensors, _image(0)], 2, 2)
    assert found[0]["boxes"].shape == (2, 4) and found[0]["labels"].dtype == np.float64
    assert found[1]["scores"].shape == (0,)
    assert check_predictions((_image(), _image()), 2, None)[1]["labels"].tolist() == [0.0]


@pytest.mark.parametrize(
    ("rows", "num_classes", "message"),
    [
        (
            np.zeros((1, 2, 4)),
            3,
            "detection targets of split 'val' must be rows [x1, y1, x2, y2, label] per image, "
            "shaped (batch, boxes, 5) and padded with label -1; got (1, 2, 4).",
        ),
        (
            np.zeros((2, 5)),
            3,
            "detection targets of split 'val' must be rows [x1, y1, x2, y2, label] per image, "
            "shaped (batch, boxes, 5) and padded with label -1; got (2, 5).",
        ),
        (
            [[[1, 1, 4, 4, np.nan]]],
            3,
            "detection targets of split 'val' hold NaN or inf; give finite boxes.",
        ),
        (
            [[[1, 1, 4, 4, 0], [0, 0, 0, 0, -1]], [[1, 1, 4, 4, 3], [0, 0, 0, 0, -1]]],
            3,
            "image 8 of split 'val' has label 3; labels must be whole numbers in [0, 3) "
            "(-1 marks padding): relabel the data or raise num_classes.",
        ),
        (
            [[[1, 1, 4, 4, 1.5]]],
            None,
            "image 7 of split 'val' has label 1.5; labels must be whole numbers in "
            "[0, num_classes) (-1 marks padding): relabel the data or raise num_classes.",
        ),
        (
            [[[1, 1, 4, 4, -2]]],
            None,
            "image 7 of split 'val' has label -2; labels must be whole numbers in "
            "[0, num_classes) (-1 marks padding): relabel the data or raise num_classes.",
        ),
        (
            [[[4, 1, 4, 5, 0]]],
            3,
            "image 7 of split 'val' has box [4, 1, 4, 5] with x2 <= x1 or y2 <= y1; boxes are "
            "[x1, y1, x2, y2] in pixels with x1 < x2 and y1 < y2.",
        ),
        (
            [[[1, 5, 4, 5, 0]]],
            3,
            "image 7 of split 'val' has box [1, 5, 4, 5] with x2 <= x1 or y2 <= y1; boxes are "
            "[x1, y1, x2, y2] in pixels with x1 < x2 and y1 < y2.",
        ),
        *(
            (
                [[[*box, 0]]],
                3,
                f"image 7 of split 'val' has box [{', '.join(map(str, box))}] outside its 10x20 "
                "image; boxes are in pixels of the model input: clip them to the image.",
            )
            for box in ([-1, 1, 4, 5], [1, -1, 4, 5], [1, 1, 11, 5], [1, 1, 4, 21])
        ),
    ],
)
def test_detection_targets_off_the_convention_are_refused_naming_image_and_fix(
    rows, num_classes, message
) -> None:
    from fulcrum.metrics import detection_targets

    with pytest.raises(DataError) as info:
        detection_targets(rows, (20, 10), num_classes, first=7)  # 20 high, 10 wide
    assert str(info.value) == message


def test_detection_targets_drop_padding_and_keep_boxes_on_the_image_edge() -> None:
    from fulcrum.metrics import detection_targets

    rows = [[[0, 0, 10, 20, 2], [0, 0, 0, 0, -1]], [[0, 0, 0, 0, -1], [0, 0, 0, 0, -1]]]
    images = detection_targets(rows, (20, 10), 3)
    assert [len(i) for i in images] == [1, 0] and images[0].tolist() == [[0, 0, 10, 20, 2]]


def test_detection_needs_targets() -> None:
    with pytest.raises(ConfigError, match=r"^Task 'detection' needs targets; pass y_true"):
        compute("detection", None, [])


def test_detection_metrics_through_compute_infer_classes_and_say_when_nothing_is_there() -> None:
    from fulcrum.metrics import detection_metrics

    targets = [np.array([[1.0, 1.0, 9.0, 9.0, 3.0]]), np.array([[2.0, 2.0, 8.0, 8.0, 0.0]])]
    found = [
        _image(label=3.0, boxes=np.array([[1.0, 1.0, 9.0, 9.0]])),
        _image(label=0.0, boxes=np.array([[2.0, 2.0, 8.0, 8.0]])),
    ]
    ev = compute("detection", targets, found)
    assert ev == detection_metrics(targets, found, num_classes=4)  # classes from the labels
    assert ev.task == "detection" and ev.n_samples == 2 and ev.metrics["map_50"] == 1.0
    with pytest.raises(DataError) as info:
        compute("detection", targets, found, num_classes=3)
    assert str(info.value).startswith("predictions must return a list of 2 dicts")
    assert str(info.value).endswith("image 0 has label 3, outside [0, 3).")
    empty = compute("detection", [np.zeros((0, 5))], [_image(0)], num_classes=2)
    assert empty.notes == ("map undefined: the validation images hold no ground-truth boxes",)
    with pytest.raises(DataError) as info:
        compute("detection", [], [])
    assert str(info.value) == "The validation set has zero images; pass at least one."
    one = compute("detection", targets[:1], found[:1])
    assert one.n_samples == 1 and one.metrics["map_50"] == 1.0


def test_checks_default_to_the_first_image_and_every_bad_label() -> None:
    """Images count from 0 by default; a negative label is refused with num_classes set too, and
    the label named is the first wrong one, wherever it is."""
    import torch

    from fulcrum.metrics import check_predictions, detection_targets

    with pytest.raises(DataError, match=r"image 1 has label -1, outside \[0, 3\)\.$"):
        check_predictions([_image(), _image(label=-1.0)], 2, 3)
    with pytest.raises(DataError, match=r"image 0 has label 5, outside \[0, 3\)\.$"):
        check_predictions([_image(2, labels=np.array([0.0, 5.0])), _image()], 2, 3)
    grad = {
        k: torch.as_tensor(v, dtype=torch.float32).requires_grad_() for k, v in _image().items()
    }
    assert check_predictions([grad, _image()], 2, 3)[0]["scores"].dtype == np.float64
    with pytest.raises(DataError, match=r"^image 1 of split 'val' has label 7"):
        detection_targets([[[1, 1, 4, 4, 1]], [[1, 1, 4, 4, 7]]], (20, 10), 3)
    kept = detection_targets([[[1, 1, 4, 4, 1]]], (20, 10), 3)
    assert kept[0].dtype == np.float64 and kept[0].tolist() == [[1, 1, 4, 4, 1]]


def test_column_targets_of_a_regression_are_read_flat_and_nan_becomes_none() -> None:
    from fulcrum.metrics import finite_or_none

    rng = np.random.default_rng(16)
    y, p = rng.normal(size=20), rng.normal(size=20)
    assert regression_metrics(y[:, None], p[:, None]) == regression_metrics(y, p)
    assert regression_metrics(y[:, None], p) == regression_metrics(y, p)
    assert finite_or_none(float("nan")) is None and finite_or_none(np.float32(2.5)) == 2.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: compute("embedding", None, np.zeros((2, 3))),
            "Task 'embedding' needs reference embeddings; pass reference=...",
        ),
        (
            lambda: compute("regression", None, np.zeros(2)),
            "Task 'regression' needs y_true labels/targets; pass y_true.",
        ),
        (
            lambda: embedding_metrics(np.zeros((2, 3)), np.zeros((2, 4))),
            "Embedding outputs (2, 3) and reference (2, 4) must have the same shape (n, d, ...); "
            "pass the reference model's outputs on the same inputs.",
        ),
    ],
)
def test_what_a_task_needs_is_named_in_full(call, message) -> None:
    with pytest.raises((ConfigError, DataError)) as info:
        call()
    assert str(info.value) == message


def test_detection_without_its_extra_names_the_pip_command(monkeypatch) -> None:
    import sys

    from fulcrum.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulcrum\[detection\]'"):
        compute("detection", [np.zeros((0, 5))], [_image(0)], num_classes=2)
