"""ONNX models from other frameworks: a real scikit-learn classifier converted by skl2onnx."""

import textwrap

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from fulcrum.cli import main
from fulcrum.errors import ConfigError, OnnxError
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
    np.savez(folder / "data.npz", x_val=x[1200:], y_val=y[1200:], x_calib=x[:256], y_calib=y[:256])
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


def test_an_onnx_workload_is_quantized_keeping_its_outputs(sklearn_onnx, tmp_path):
    import json

    import onnx

    folder, accuracy = sklearn_onnx
    toml = write(folder)
    for mode in ("int8-dynamic", "int8-static"):
        run = tmp_path / mode
        assert main(["compress", str(toml), "--recipe", f"quantize:{mode}", "--out", str(run)]) == 0
        result = json.loads((run / "results.json").read_text())
        after = result["comparison"]["candidate"]["metrics"]["accuracy"]
        assert abs(after - accuracy) < 0.02
        graph = onnx.load(str(run / "model.onnx"))
        assert [o.name for o in graph.graph.output] == ["label", "probabilities"]
        assert any(
            n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear")
            for n in graph.graph.node
        )
        assert not (run / "model.safetensors").exists()  # no PyTorch weights to write


def search_and_export(toml, run):
    """A 3-trial search of an ONNX workload draws quantization only; its pick exports with parity."""
    import json

    args = ["search", str(toml), "--trials", "3", "--out", str(run), "--trial-seconds", "0.05"]
    assert main([*args, "--sampler", "random", "--max-drop", "5"]) == 0
    trials = json.loads((run / "results.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["recipe"].startswith("quantize") for t in trials)
    assert main(["export", str(run)]) == 0
    record = json.loads((run / "export" / "onnx" / "export.json").read_text())
    assert record["parity"]["metric"]["exported"] == pytest.approx(
        record["parity"]["metric"]["recorded"], abs=0.005
    )


def test_an_onnx_workload_is_searched_over_quantization_and_exported(
    sklearn_onnx, tmp_path, capsys
):

    folder, _ = sklearn_onnx
    toml, run = write(folder), tmp_path / "search"
    search_and_export(toml, run)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "safetensors"]) == 2
    assert "is an ONNX graph, with no PyTorch weights" in capsys.readouterr().err


def test_a_pytorch_technique_on_an_onnx_workload_is_refused_in_one_line(
    sklearn_onnx, tmp_path, capsys
):
    folder, _ = sklearn_onnx
    code = main(
        ["compress", str(write(folder)), "--recipe", "prune:0.5", "--out", str(tmp_path / "r")]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1
    assert "prune works on a PyTorch model; this workload is an ONNX graph" in errors[0]


@pytest.fixture(scope="module")
def two_input_onnx(tmp_path_factory):
    """A scikit-learn pipeline over two groups of features, converted with two named inputs."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("two-inputs")
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    scale = ColumnTransformer(
        [
            ("mean", StandardScaler(), list(range(10))),
            ("worst", StandardScaler(), list(range(10, 20))),
        ]
    )
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, random_state=0)
    pipeline = Pipeline([("scale", scale), ("mlp", mlp)])
    features = np.hstack([x[:, :10], x[:, 20:30]])
    pipeline.fit(features[:400], y[:400])
    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[
            ("mean", FloatTensorType([None, 10])),
            ("worst", FloatTensorType([None, 10])),
        ],
        options={id(mlp): {"zipmap": False}},
        target_opset=17,
    )
    (folder / "pipeline.onnx").write_bytes(onnx_model.SerializeToString())
    np.savez(
        folder / "data.npz",
        x_val_mean=x[400:, :10],
        x_val_worst=x[400:, 20:30],
        y_val=y[400:],
        x_calib_mean=x[:200, :10],
        x_calib_worst=x[:200, 20:30],
        y_calib=y[:200],
    )
    (folder / "two.toml").write_text(
        'task = "binary"\nonnx = "pipeline.onnx"\ndata = "data.npz"\noutput = "probabilities"\n'
    )
    return folder, float(pipeline.score(features[400:], y[400:]))


def test_an_onnx_model_with_two_inputs_is_judged_on_its_named_output(two_input_onnx):
    folder, accuracy = two_input_onnx
    workload = load(str(folder / "two.toml"))
    assert workload.model.input_names == ["mean", "worst"]
    assert [tuple(t.shape) for t in workload.example_inputs] == [(1, 10), (1, 10)]
    result = evaluate_workload(workload)
    assert result.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)


@pytest.mark.parametrize("mode", ["int8-static", "int8-dynamic"])
def test_an_onnx_model_with_two_inputs_is_compressed(two_input_onnx, tmp_path, mode):
    import json

    import onnx

    folder, accuracy = two_input_onnx
    run = tmp_path / mode
    assert (
        main(
            [
                "compress",
                str(folder / "two.toml"),
                "--recipe",
                f"quantize:{mode}",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    result = json.loads((run / "results.json").read_text())
    after = result["comparison"]["candidate"]["metrics"]["accuracy"]
    assert abs(after - accuracy) <= 0.02
    graph = onnx.load(str(run / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["mean", "worst"]
    assert any(n.op_type in ("MatMulInteger", "QuantizeLinear") for n in graph.graph.node)


def test_an_onnx_model_with_two_inputs_is_profiled_searched_and_exported(
    two_input_onnx, tmp_path, capsys
):
    import json

    folder, _ = two_input_onnx
    toml, run = str(folder / "two.toml"), tmp_path / "search"
    assert main(["profile", toml, "--json", str(tmp_path / "profile.json")]) == 0
    profile = json.loads((tmp_path / "profile.json").read_text())["profile"]
    assert profile["input_shapes"] == [[1, 10], [1, 10]]
    assert profile["macs"] == 20 * 16 + 16 * 1  # two MatMuls behind ai.onnx.ml Scalers
    search_and_export(toml, run)


def test_a_callable_gives_inputs_in_the_order_the_toml_names(two_input_onnx, tmp_path):
    folder, accuracy = two_input_onnx
    arrays = np.load(folder / "data.npz")
    np.savez(tmp_path / "arrays.npz", **arrays)
    (tmp_path / "pipeline.onnx").write_bytes((folder / "pipeline.onnx").read_bytes())
    (tmp_path / "swapped.py").write_text(
        textwrap.dedent(
            """
            import numpy as np, pathlib
            def splits():
                a = np.load(pathlib.Path(__file__).parent / "arrays.npz")
                return {"val": ((a["x_val_worst"], a["x_val_mean"]), a["y_val"])}
            """
        )
    )
    toml = tmp_path / "swapped.toml"
    base = 'task = "binary"\nonnx = "pipeline.onnx"\ndata = "swapped:splits"\n'
    toml.write_text(base + 'inputs = ["worst", "mean"]\n')
    result = evaluate_workload(load(str(toml)))
    assert result.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    toml.write_text(base + 'inputs = ["worst", "means"]\n')
    with pytest.raises(ConfigError, match="its inputs are mean, worst"):
        load(str(toml))


def test_a_missing_input_array_is_named(two_input_onnx, tmp_path):
    folder, _ = two_input_onnx
    arrays = dict(np.load(folder / "data.npz"))
    del arrays["x_val_worst"]
    np.savez(tmp_path / "data.npz", **arrays)
    (tmp_path / "pipeline.onnx").write_bytes((folder / "pipeline.onnx").read_bytes())
    (tmp_path / "two.toml").write_text((folder / "two.toml").read_text())
    with pytest.raises(ConfigError, match="no array 'x_val_worst'"):
        load(str(tmp_path / "two.toml"))
