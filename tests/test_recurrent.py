"""Recurrent layers (LSTM, GRU, RNN) through every technique, on tiny models built in code."""

from __future__ import annotations

import shutil

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fulcrum import train
from fulcrum.compression import compress, rebuild, save_candidate
from fulcrum.runtimes import OnnxModel
from fulcrum.techniques import Candidate, Context
from fulcrum.techniques.lowrank import LowRankConfig
from fulcrum.techniques.lowrank import apply as lowrank
from fulcrum.techniques.prune import PruneConfig
from fulcrum.techniques.prune import apply as prune
from fulcrum.techniques.quantize import QuantizeConfig
from fulcrum.techniques.quantize import apply as quantize
from fulcrum.techniques.recurrent import directions, gates
from fulcrum.testing import TinyRecurrent, tiny_context, tiny_data
from fulcrum.workloads import builtin, describe, hello_edge, keywords, load
from fulcrum.workloads.base import Workload

KINDS = (nn.LSTM, nn.GRU, nn.RNN)
STEPS, FEATURES = 8, 192


def inputs(n: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, STEPS, FEATURES, generator=torch.Generator().manual_seed(seed))


def context(model: nn.Module) -> Context:
    return Context(task="multiclass", example_inputs=(inputs(1),))


def silence_(rnn: nn.RNNBase, dead: dict[tuple[int, int], torch.Tensor], head: nn.Linear) -> None:
    """Make hidden units ``dead[(layer, direction)]`` output zero whatever the input (their gate
    rows are zero: an LSTM's cell, a GRU's and an RNN's state stay at zero), and give them no
    weight where they are read, so that every importance ranks them last."""
    hidden, count = rnn.hidden_size, gates(rnn)
    with torch.no_grad():
        for (layer, d), units in dead.items():
            name = f"l{layer}{'_reverse' if d else ''}"
            rows = torch.cat([units + g * hidden for g in range(count)])
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{kind}_{name}")[rows] = 0.0
            getattr(rnn, f"weight_hh_{name}")[:, units] = 0.0
            readers = (
                [head.weight]
                if layer == rnn.num_layers - 1
                else [
                    getattr(rnn, f"weight_ih_l{layer + 1}{s}")
                    for s in ("", "_reverse")[: directions(rnn)]
                ]
            )
            for weight in readers:
                weight[:, units + d * hidden] = 0.0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
def test_pruning_removes_whole_hidden_units_with_every_gate_slice(kind, batch_first):
    """Half the units of every layer and direction are silent: pruning half the units must
    remove exactly those, every gate's rows with them, and change nothing else."""
    torch.manual_seed(0)
    model = TinyRecurrent(kind, batch_first=batch_first).eval()
    g = torch.Generator().manual_seed(1)
    last = torch.randperm(16, generator=g)[:8]  # both directions of the last layer read as one
    dead = {
        (0, 0): torch.randperm(16, generator=g)[:8],
        (0, 1): torch.randperm(16, generator=g)[:8],
    }
    dead |= {(1, 0): last, (1, 1): last}
    silence_(model.rnn, dead, model.head)
    pruned = prune(PruneConfig(ratio=0.5), Candidate(model=model), context(model)).model
    assert isinstance(pruned, TinyRecurrent)
    rnn = pruned.rnn
    assert rnn.hidden_size == 8 and rnn.input_size == FEATURES and pruned.head.in_features == 16
    for layer in range(2):
        for suffix in ("", "_reverse"):
            assert getattr(rnn, f"weight_ih_l{layer}{suffix}").shape == (
                gates(rnn) * 8,
                FEATURES if layer == 0 else 16,
            )
            assert getattr(rnn, f"weight_hh_l{layer}{suffix}").shape == (gates(rnn) * 8, 8)
            assert getattr(rnn, f"bias_ih_l{layer}{suffix}").shape == (gates(rnn) * 8,)
    x = inputs()
    with torch.no_grad():
        expected, got = model(x), pruned(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_both_directions_of_a_bidirectional_layer_lose_the_same_units():
    """Twelve silent units in the forward direction alone: ranked as one list, half of all
    32 outputs would take more from one direction than from the other."""
    torch.manual_seed(0)
    model = TinyRecurrent(nn.LSTM, layers=1).eval()
    silence_(model.rnn, {(0, 0): torch.arange(12)}, model.head)
    pruned = prune(PruneConfig(ratio=0.5), Candidate(model=model), context(model)).model
    assert pruned.rnn.hidden_size == 8 and pruned.head.in_features == 16
    with torch.no_grad():
        assert torch.isfinite(pruned(inputs())).all()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_pruned_and_factorised_recurrent_model_exports_and_reloads(kind, tmp_path):
    torch.manual_seed(0)
    model = TinyRecurrent(kind).eval()
    workload = Workload(
        name="tiny",
        task="multiclass",
        model=model,
        val=None,
        example_inputs=(inputs(1),),
        num_classes=4,
    )
    candidate = compress(model, "prune:0.5 > lowrank:0.25", workload)
    assert candidate.model.rnn[1].hidden_size == 8  # factorised: a Linear in front of it
    files = save_candidate(candidate, tmp_path, workload.example_inputs, "tiny")
    graph = onnx.load(str(tmp_path / files["onnx"]))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count(kind.__name__) == 2 and "Loop" not in ops and "Scan" not in ops
    x = inputs(3)
    with torch.no_grad():
        expected = candidate.model(x)
    torch.testing.assert_close(
        OnnxModel(tmp_path / files["onnx"], 1)(x), expected, rtol=1e-3, atol=1e-4
    )
    rebuilt = rebuild(model, tmp_path)
    assert rebuilt.rnn[1].hidden_size == 8 and rebuilt.rnn.batch_first  # the layer's attributes
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected)


def test_dynamic_int8_quantizes_the_lstm_weights():
    torch.manual_seed(0)
    model = TinyRecurrent(nn.LSTM).eval()
    candidate = quantize(
        QuantizeConfig(mode="int8-dynamic"), Candidate(model=model), context(model)
    )
    graph = onnx.load_from_string(candidate.onnx)
    lstms = [n for n in graph.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert len(lstms) == 2 and not any(n.op_type == "LSTM" for n in graph.graph.node)
    int8 = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert all(n.input[1] in int8 and n.input[2] in int8 for n in lstms)  # W and R
    step = candidate.steps[-1]
    assert step.facts["nodes_float"] == 0 and step.facts["float_ops"] == {}
    x = inputs(64)
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(candidate.onnx, threads=1)(x)
    sqnr = 10 * torch.log10(expected.pow(2).sum() / (got - expected).pow(2).sum())
    assert sqnr > 20  # dB: int8 weights, not different ones


def test_static_int8_quantizes_lstms_dynamically_and_says_so():
    torch.manual_seed(0)
    model = TinyRecurrent(nn.LSTM).eval()
    candidate = quantize(QuantizeConfig(), Candidate(model=model), tiny_context("lstm", model))
    ops = [n.op_type for n in onnx.load_from_string(candidate.onnx).graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 2 and "QuantizeLinear" in ops
    assert any("no static int8 LSTM" in note for note in candidate.steps[-1].notes)


def test_a_bidirectional_two_layer_gru_goes_through_compress():
    torch.manual_seed(0)
    model = TinyRecurrent(nn.GRU, layers=2, bidirectional=True).eval()
    data = tiny_data((STEPS, FEATURES))
    workload = Workload(
        name="tiny-gru",
        task="multiclass",
        model=model,
        train=DataLoader(
            data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        val=DataLoader(tiny_data((STEPS, FEATURES), n=32, seed=1), batch_size=32),
        calib=DataLoader(data, batch_size=16),
        example_inputs=(inputs(1),),
        num_classes=4,
    )
    candidate = compress(model, "prune:0.3 > finetune:1 > quantize:int8-dynamic", workload)
    pruned = candidate.steps[0].facts
    assert pruned["params_after"] < pruned["params_before"]
    assert candidate.model.rnn.hidden_size == 8 and candidate.model.rnn.bidirectional
    graph = onnx.load_from_string(candidate.onnx)
    assert [n.op_type for n in graph.graph.node].count("GRU") == 2
    notes = " ".join(candidate.steps[-1].notes)
    assert "2 GRU left in float: no runtime here quantizes a GRU" in notes
    out = OnnxModel(candidate.onnx, threads=1)(inputs(4))
    assert out.shape == (4, 4) and torch.isfinite(out).all()


def test_prune_leaves_a_layer_whose_final_states_mix_directions_and_prunes_the_rest():
    class ReadsStates(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front = nn.Linear(FEATURES, 32)
            self.rnn = nn.GRU(32, 16, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, h = self.rnn(torch.relu(self.front(x)))
            return self.head(torch.cat([h[-2], h[-1]], 1))

    torch.manual_seed(0)
    model = ReadsStates().eval()
    candidate = prune(PruneConfig(ratio=0.5), Candidate(model=model), context(model))
    pruned = candidate.model
    assert pruned.rnn.hidden_size == 16 and pruned.front.out_features == 16  # the rest pruned
    assert pruned.rnn.input_size == 16
    (note,) = candidate.steps[-1].notes
    assert note.startswith("recurrent layer(s) left with all their hidden units: rnn")
    assert "final states" in note
    with torch.no_grad():
        assert pruned(inputs()).shape == (5, 4)


def test_prune_keeps_a_unidirectional_layers_units_aligned_when_its_states_are_read():
    """The model reads the first layer's final state h_n[0] with the columns of the last
    layer's units: every layer must keep the units the last one keeps, even where its own
    weights would rank others first."""

    class FirstState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(FEATURES, 16, num_layers=2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h, _c) = self.rnn(x)
            return self.head(h[0])

    torch.manual_seed(0)
    model = FirstState().eval()
    silent = torch.arange(8, 16)
    silence_(model.rnn, {(0, 0): silent}, model.head)
    with torch.no_grad():  # silent, yet by their outgoing weights the first layer's strongest
        model.head.weight[:, silent] = 0.0  # what Torch-Pruning ranks the last layer's units by
        model.rnn.weight_hh_l0[:, silent] = 10.0
        model.rnn.weight_ih_l1[:, silent] = 10.0
    pruned = prune(PruneConfig(ratio=0.5), Candidate(model=model), context(model)).model
    assert pruned.rnn.hidden_size == 8
    with torch.no_grad():
        torch.testing.assert_close(pruned(inputs()), model(inputs()), rtol=1e-4, atol=1e-5)


def test_lowrank_leaves_a_recurrent_input_that_would_save_little_and_says_why():
    torch.manual_seed(0)
    model = TinyRecurrent(nn.LSTM, features=12, hidden=32).eval()  # the recurrence dominates
    ctx = Context(task="multiclass", example_inputs=(torch.randn(1, STEPS, 12),))
    candidate = lowrank(LowRankConfig(rank_ratio=0.25), Candidate(model=model), ctx)
    assert isinstance(candidate.model.rnn, nn.LSTM)  # untouched
    notes = candidate.steps[-1].notes
    assert any(n.startswith("rnn: input matrix kept: rank 3 would save") for n in notes)
    assert any("recurrent matrices stay full-rank" in n for n in notes)


def test_lowrank_factorises_a_wide_recurrent_input_exactly_at_full_rank():
    torch.manual_seed(0)
    model = TinyRecurrent(nn.GRU).eval()
    candidate = lowrank(LowRankConfig(rank_ratio=0.25), Candidate(model=model), context(model))
    factored = candidate.model.rnn
    assert factored[0].weight.shape == (24, FEATURES) and factored[1].input_size == 24
    exact = lowrank(LowRankConfig(rank_ratio=1.0), Candidate(model=model), context(model))
    assert isinstance(exact.model.rnn, nn.GRU)  # full rank saves nothing: left as it was


def test_recurrent_students_train_with_clipped_gradients(monkeypatch):
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = clip(parameters, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        norms.append(float(after))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    model = TinyRecurrent(nn.LSTM)
    loader = DataLoader(tiny_data((STEPS, FEATURES), n=32), batch_size=16)
    train.fit(model, loader, "multiclass", epochs=1, lr=1.0)
    assert len(norms) == 2 and max(norms) <= train.RECURRENT_MAX_NORM + 1e-4
    norms.clear()
    train.fit(
        nn.Sequential(nn.Flatten(), nn.Linear(STEPS * FEATURES, 4)), loader, "multiclass", epochs=1
    )
    assert norms == []  # other models' gradients are left alone


def test_crnn_pruning_removes_a_filters_columns_of_the_gru_input():
    """The CRNN reads each frame as (filters x bands): pruning a filter of its convolution must
    remove that filter's band columns of the GRU's input matrices, and nothing else."""
    torch.manual_seed(0)
    model = hello_edge.CRNN().eval()
    x = torch.randn(3, 1, 49, 40)
    with torch.no_grad():
        dead = torch.randperm(48)[:24]
        model.conv.weight[dead] = 0.0
        model.conv.bias[dead] = 0.0
    ctx = Context(task="multiclass", example_inputs=(x[:1],))
    config = PruneConfig(ratio=0.0, layer_ratios=("conv:0.5",))
    pruned = prune(config, Candidate(model=model), ctx).model
    assert pruned.conv.out_channels == 24 and pruned.gru.input_size == 24 * 19
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_gru_takes_its_own_layer_ratio():
    torch.manual_seed(0)
    model = hello_edge.CRNN().eval()
    ctx = Context(task="multiclass", example_inputs=(torch.randn(1, 1, 49, 40),))
    config = PruneConfig(ratio=0.0, layer_ratios=("gru:0.5",))
    pruned = prune(config, Candidate(model=model), ctx).model
    assert pruned.gru.hidden_size == 24 and pruned.conv.out_channels == 48  # 30 kept, round_to 8


@pytest.mark.parametrize("name", sorted(hello_edge.FAMILIES))
def test_hello_edge_families_read_the_keywords_features(name):
    model = hello_edge.FAMILIES[name].model().eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 49, 40)).shape == (2, 10)
    assert describe()[name].startswith("speech:")


needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)"
)


@needs_espeak
def test_a_hello_edge_family_trains_on_first_use_and_is_cached(monkeypatch):
    for name, value in {
        "WORDS": ("zero", "one", "two"),
        "ACCENTS": ("en-us", "en-gb"),
        "VARIANTS": ("m1", "f3"),
        "SPEEDS": (130, 170),
    }.items():  # 4 voices, en-us+m1 held out: 6 validation clips, 18 training clips
        monkeypatch.setattr(keywords, name, value)
    family = hello_edge.Family(lambda: hello_edge.Recurrent(nn.GRU, 8, num_classes=3), 1, 3e-3, "")
    monkeypatch.setitem(hello_edge.FAMILIES, "keywords-gru", family)
    workload = load("keywords-gru")
    assert workload.name == "keywords-gru" and workload.info["clips"] == {"train": 18, "val": 6}
    assert workload.source.endswith(".safetensors") and isinstance(workload.model.rnn, nn.GRU)

    def untrained(*_args, **_kwargs):
        raise AssertionError("trained again instead of read from the cache")

    monkeypatch.setattr(builtin, "fit", untrained)
    again = load("keywords-gru")
    assert again.source == workload.source
    for a, b in zip(again.model.parameters(), workload.model.parameters(), strict=True):
        assert torch.equal(a, b)
