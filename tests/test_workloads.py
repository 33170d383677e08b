import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import module_of
from fulcrum import evaluate, workloads
from fulcrum.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    OnnxError,
    ShapeError,
    WorkloadError,
)
from fulcrum.runtimes import export_onnx
from fulcrum.workloads import builtin


def write_toml(user_dir, **entries):
    module = module_of(user_dir)
    base = {"task": '"multiclass"', "model": f'"{module}:make_model"', "data": f'"{module}:splits"'}
    base.update({k: v for k, v in entries.items() if v is not None})
    for key in [k for k, v in entries.items() if v is None]:
        base.pop(key)
    path = user_dir / "custom.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in base.items()))
    return path


def test_digits_baseline_is_accurate_oversized_and_cached(monkeypatch, private_cache):
    w = workloads.load("digits")
    assert w.task == "multiclass" and w.num_classes == 10
    assert sum(p.numel() for p in w.model.parameters()) > 1_000_000  # room to compress
    result = evaluate(w.model, w.val, w.task)
    assert result.metrics["accuracy"] >= 0.97 and result.n_samples == 360
    assert list(private_cache.glob("digits-*.safetensors"))
    monkeypatch.setattr(
        builtin, "fit", lambda *a, **k: pytest.fail("the cached baseline was retrained")
    )
    again = workloads.load("digits")
    for a, b in zip(w.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_breast_cancer_is_a_binary_mlp():
    w = workloads.load("breast-cancer")
    result = evaluate(w.model, w.val, w.task)
    assert w.task == "binary" and result.metrics["accuracy"] >= 0.93
    assert result.metrics["roc_auc"] >= 0.97 and result.metrics["threshold"] == 0.5
    assert w.example_inputs[0].shape == (1, 30)


def test_unknown_workload_suggests_close_names():
    with pytest.raises(WorkloadError, match="Did you mean 'digits'"):
        workloads.load("digts")


def test_toml_workload_with_user_metric(user_dir):
    w = workloads.load(str(user_dir / "workload.toml"))
    assert w.name == "workload" and w.example_inputs[0].shape == (1, 4)
    assert len(w.train.dataset) == 40 and w.calib is w.train
    result = evaluate(w.model, w.val, w.task, num_classes=w.num_classes, metric=w.metric)
    correct = result.metrics["accuracy"] * 20
    assert result.metrics["hits"] == pytest.approx(correct)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"nocolon"', "must look like 'module:callable'"),
        ('"no_such_module_xyz:make"', "module 'no_such_module_xyz' cannot be imported"),
        ("MODULE:make_modle", "has no attribute 'make_modle'. Did you mean 'make_model'"),
    ],
)
def test_toml_with_a_wrong_reference_names_the_entry(user_dir, entry, message):
    path = write_toml(
        user_dir,
        model=entry.replace("MODULE", module_of(user_dir)).join('""')
        if entry.startswith("MODULE")
        else entry,
    )
    with pytest.raises(ConfigError, match=message) as info:
        workloads.load(str(path))
    assert "'model'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("count", ["0", "-1", "2.5", "true", '"3"'])
def test_a_num_classes_that_is_not_a_positive_whole_number_is_refused_naming_the_entry(
    user_dir, count
):
    with pytest.raises(
        ConfigError, match=r"^custom\.toml: num_classes must be a positive whole number"
    ):
        workloads.load(str(write_toml(user_dir, num_classes=count)))


def test_toml_without_data_or_with_bad_task(user_dir):
    with pytest.raises(ConfigError, match="no 'data' entry"):
        workloads.load(str(write_toml(user_dir, data=None)))
    with pytest.raises(ConfigError, match="Did you mean 'multiclass'"):
        workloads.load(str(write_toml(user_dir, task='"multiclas"')))


def test_checkpoints_load_safely(user_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    module = __import__("importlib").import_module(module_of(user_dir))
    trained = module.make_model()
    with torch.no_grad():
        trained[0].weight.fill_(0.5)
    save_file(trained.state_dict(), str(user_dir / "w.safetensors"))
    torch.save(trained.state_dict(), user_dir / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        w = workloads.load(str(write_toml(user_dir, checkpoint=f'"{name}"')))
        assert torch.all(w.model[0].weight == 0.5)

    torch.save(trained, user_dir / "whole.pt")  # a pickled module: arbitrary code on load
    path = write_toml(user_dir, checkpoint='"whole.pt"')
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        workloads.load(str(path))
    assert torch.all(workloads.load(str(path), allow_pickle=True).model[0].weight == 0.5)


def test_checkpoint_shape_mismatch_names_tensor_and_shapes(user_dir):
    save_file(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(),
        str(user_dir / "small.safetensors"),
    )
    with pytest.raises(
        CheckpointError, match=r"tensor '0\.\w+' has shape \[8.*\] but the model expects \[16"
    ):
        workloads.load(str(write_toml(user_dir, checkpoint='"small.safetensors"')))


def test_empty_split_and_wrong_input_shape(user_dir):
    module = module_of(user_dir)
    with pytest.raises(DataError, match="'val' has zero samples"):
        workloads.load(str(write_toml(user_dir, data=f'"{module}:empty"')))
    with pytest.raises(ShapeError, match=r"shape \[1, 5\]"):
        workloads.load(str(write_toml(user_dir, input_shape="[1, 5]")))


def test_onnx_workloads(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = export_onnx(model, (torch.zeros(1, 4),), tmp_path / "mlp.onnx")
    bare = workloads.load(str(path))
    assert bare.val is None and bare.example_inputs[0].shape == (1, 4)
    x = torch.randn(30, 4)
    np.savez(tmp_path / "data.npz", x_val=x.numpy(), y_val=model(x).argmax(1).numpy())
    (tmp_path / "onnx.toml").write_text(
        'task = "multiclass"\nonnx = "mlp.onnx"\ndata = "data.npz"\n'
    )
    w = workloads.load(str(tmp_path / "onnx.toml"))
    assert evaluate(w.model, w.val, w.task).metrics["accuracy"] == 1.0
    with pytest.raises(ShapeError, match="does not fit"):
        workloads.load(str(path), input_shapes=[[1, 5]])

    broken = onnx.load(str(path))
    broken.graph.node[0].input[0] = "nowhere"
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(OnnxError, match=r"broken\.onnx is not a valid ONNX model"):
        workloads.load(str(tmp_path / "broken.onnx"))
