"""ONNX models from other frameworks: a real scikit-learn classifier converted by skl2onnx."""

import textwrap

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from fulcrum.cli import main
from fulcrum.errors import OnnxError
from fulcrum.evaluation import evaluate_workload
from fulcrum.workloads import load


@pytest.fixture(scope="module")
def sklearn_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sklearn")
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
    model.fit(x[:1200], y[:1200])
    onnx_model = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17)
    (folder / "mlp.onnx").write_bytes(onnx_model.SerializeToString())
    np.savez(folder / "data.npz", x_val=x[1200:], y_val=y[1200:])
    return folder, float(model.score(x[1200:], y[1200:]))


def write(folder, extra=""):
    path = folder / "sk.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            task = "multiclass"
            onnx = "mlp.onnx"
            data = "data.npz"
            num_classes = 10
            {extra}
            """
        )
    )
    return path


def test_the_probabilities_output_is_chosen_and_judged(sklearn_onnx):
    folder, accuracy = sklearn_onnx
    workload = load(str(write(folder)))
    assert workload.model.chosen_output == "probabilities"  # not the first output, "label"
    metrics = evaluate_workload(workload).metrics
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["roc_auc_ovr"] > 0.95


def test_the_output_can_be_named_and_a_wrong_name_lists_the_real_ones(sklearn_onnx, capsys):
    folder, _ = sklearn_onnx
    named = load(str(write(folder, 'output = "probabilities"')))
    assert named.model.chosen_output == "probabilities"
    with pytest.raises(
        OnnxError, match="has no output 'probs'; its outputs are label, probabilities"
    ):
        load(str(write(folder, 'output = "probs"')))
    assert main(["evaluate", str(write(folder, 'output = "probs"'))]) == 2
    assert "its outputs are label, probabilities" in capsys.readouterr().err
