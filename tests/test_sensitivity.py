"""Per-layer sensitivity and the pruning ratios it allocates."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum import sensitivity
from fulcrum.cli import main
from fulcrum.workloads import Workload


def dead_half_model() -> nn.Sequential:
    """fc1's second half of channels is dead (zero in and out); every channel of fc2 is live."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 4)
    )
    with torch.no_grad():
        model[0].weight[32:] = 0
        model[0].bias[32:] = 0
        model[2].weight[:, 32:] = 0
    return model.eval()


@pytest.fixture(scope="module")
def workload() -> Workload:
    model = dead_half_model()
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # the model is right on every sample: a drop is the pruning's
    data = TensorDataset(x, y)
    return Workload(
        name="deadhalf",
        task="multiclass",
        model=model,
        val=DataLoader(data, batch_size=64),
        calib=DataLoader(data, batch_size=64),
        example_inputs=(x[:1],),
        num_classes=4,
    )


@pytest.fixture(scope="module")
def measured(workload) -> sensitivity.Sensitivity:
    return sensitivity.analyse(workload, ratios=(0.5, 0.75), samples=200)


def test_pruning_a_layer_alone_shows_which_layer_is_sensitive(measured):
    fc1, fc2 = measured.layers
    assert (fc1.name, fc2.name) == ("0", "2")  # the head ("4") is left out
    assert measured.samples == 200 and measured.baseline == 1.0
    assert fc1.prune["0.5"] == 1.0  # its dead half goes first: nothing lost
    assert fc2.prune["0.5"] < 0.95  # half its live channels: a real loss
    assert 0.4 < fc1.saved["0.5"] < 0.5  # fc1's own MACs and half of fc2's inputs
    assert fc1.prune["0.75"] < 1.0  # past its dead half, fc1 loses too


def test_int8_and_latency_are_measured_per_layer(measured):
    assert measured.int8_metric is not None
    assert all(0.0 <= layer.float_metric <= 1.0 for layer in measured.layers)
    fc1, fc2 = measured.layers
    assert fc2.mac_share > 30 * fc1.mac_share
    assert sum(la.latency_share for la in measured.layers) + measured.latency_other == (
        pytest.approx(1.0, abs=1e-3)
    )


def test_a_layer_s_latency_share_is_read_from_the_profiler():
    from fulcrum.compression import onnx_bytes
    from fulcrum.techniques import Candidate

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 2048)
    ).eval()
    x = torch.randn(1, 16)
    graph = onnx_bytes(Candidate.of(model), (x,))
    shares, other = sensitivity.latency_shares(graph, (x,), ["0", "2", "4"], threads=1)
    assert set(shares) == {"0", "2", "4"}
    assert shares["4"] > 0.5 > shares["0"]  # 2 M multiply-adds against 256
    assert sum(shares.values()) + other == pytest.approx(1.0, abs=1e-3)


def test_allocation_takes_compute_where_it_costs_no_metric(measured):
    steered = sensitivity.allocate(measured, 0.3, strength=1.0)
    assert steered["0"] >= 0.3 and steered["2"] == 0.0  # the dead half first: it costs nothing
    by_macs = sensitivity.allocate(measured, 0.3, strength=0.0)
    assert by_macs["2"] > 0.0 == by_macs["0"]  # blind to the metric, fc2 saves more per step


def test_allocation_stops_each_layer_at_its_cap(measured):
    ratios = sensitivity.allocate(measured, 5.0, strength=1.0, cap=0.7)  # more than there is
    assert ratios == {"0": 0.7, "2": 0.7}
    # nor past the largest ratio measured on it (0.75): the curves are not extrapolated
    assert sensitivity.allocate(measured, 5.0, cap=0.95) == {"0": 0.75, "2": 0.75}
    # a layer is never cut below round_to channels, which prune would refuse to cut
    assert sensitivity.allocate(measured, 5.0, cap=0.95, round_to=32)["0"] == 0.5


def test_the_allocated_ratios_are_a_prune_recipe(measured, workload):
    from fulcrum.compression import compress

    entries = sensitivity.layer_ratios(measured, 0.3, 1.0)
    candidate = compress(
        workload.model, f"prune:ratio=0.0,layer_ratios={'+'.join(entries)}", workload
    )
    assert candidate.model[0].out_features <= 40  # the dead half ...
    assert candidate.model[2].out_features == 512  # ... and nothing of the live layer


def test_the_cli_prints_and_writes_the_sensitivity(tmp_path, capsys):
    from tests_support import write_user_workload

    toml = write_user_workload(tmp_path)
    out = tmp_path / "s.json"
    code = main(
        ["sensitivity", str(toml), "--ratios", "0.5", "--samples", "10", "--json", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())["sensitivity"]
    assert result["samples"] == 10 and result["ratios"] == [0.5]
    assert result["layers"] and all(
        "0.5" in la["prune"] or la["prune_error"] for la in result["layers"]
    )
    assert "per-layer sensitivity" in capsys.readouterr().out
    assert main(["sensitivity", str(toml), "--ratios", "1.5"]) == 2


def test_matched_ratios_remove_as_many_macs_as_the_uniform_ratio(measured, workload):
    from fulcrum.compression import compress
    from fulcrum.measure import torch_compute

    def macs(recipe):
        return torch_compute(
            compress(workload.model, recipe, workload).model, workload.example_inputs
        )[0]

    uniform = macs("prune:ratio=0.3")
    entries = dict(e.split(":") for e in sensitivity.matched(workload, measured, 0.3, 1.0))
    assert float(entries["2"]) < 0.3  # the dead half of fc1 took what fc2 would give
    steered = macs(f"prune:ratio=0.0,layer_ratios=0:{entries['0']}+2:{entries['2']}")
    assert abs(steered - uniform) <= 0.1 * uniform
