"""The technique contract, run for every registered technique on tiny models built in code."""

import pytest
import torch

from fulcrum.compression import parse_recipe
from fulcrum.errors import ConfigError, TechniqueError
from fulcrum.measure import parameter_counts, profile
from fulcrum.techniques import TECHNIQUES, Candidate, Context, get
from fulcrum.techniques.distill import DistillConfig
from fulcrum.techniques.lowrank import LowRankConfig
from fulcrum.techniques.prune import PruneConfig
from fulcrum.techniques.sparsity import SparsityConfig
from fulcrum.testing import check_technique, contract_cases, tiny_cnn, tiny_context, tiny_mlp


@pytest.mark.parametrize(("name", "kind"), contract_cases())
def test_every_technique_keeps_the_contract(name, kind):
    check_technique(get(name), kind)


def test_a_new_technique_is_tested_and_searched_by_registering_it():
    """One file's worth of technique (a config, an apply, its search dimensions), registered:
    the contract suite lists it and passes it, and a search draws it among the structural
    steps, under its own parameter names."""
    from dataclasses import dataclass
    from typing import ClassVar

    from optuna.trial import FixedTrial

    from fulcrum.search.space import suggest_recipe
    from fulcrum.techniques import Scope, Search, Step, Technique, TechniqueConfig
    from fulcrum.techniques.base import copy_model, register

    @dataclass(frozen=True)
    class SnapConfig(TechniqueConfig):
        """Weights rounded to multiples of ``step``."""

        name: ClassVar[str] = "snap"
        primary: ClassVar[str | None] = "step"
        step: float = 0.01

        def validate(self) -> None:
            self.check_range("step", 0.0, 1.0, low_open=True)

    def apply(config, candidate, ctx):
        model = copy_model(candidate.require_float("snap"))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.round(p / config.step) * config.step)
        return candidate.with_step(Step(config=config.to_dict(), seconds=0.0), model=model)

    def space(trial):
        return SnapConfig(step=trial.suggest_float("snap.step", 0.001, 0.1, log=True))

    snap = Technique(
        name="snap",
        config=SnapConfig,
        apply=apply,
        space=space,
        summary="weights on a grid",
        speeds_up="",
        invalid={"step": 0.0},
        search=Search(role="structural", order=35, draw=lambda trial, _scope: space(trial)),
    )
    register(snap)
    try:
        assert ("snap", "cnn") in contract_cases() and ("snap", "mlp") in contract_cases()
        check_technique(get("snap"), "cnn")
        drawn = {"use_prune": False, "use_snap": True, "snap.step": 0.05, "use_lowrank": False}
        drawn |= {"recovery": "none", "use_quantize": False}
        recipe = suggest_recipe(FixedTrial(drawn), Scope(task="multiclass"))
        assert recipe == (SnapConfig(step=0.05),)
    finally:
        TECHNIQUES.pop("snap")


def test_registry_lists_the_techniques_the_issue_names():
    assert {"prune", "sparsify", "quantize", "distill", "lowrank", "finetune"} <= set(TECHNIQUES)


def test_prune_rounds_channels_and_keeps_the_head():
    model = tiny_cnn()
    out = get("prune").apply(
        PruneConfig(ratio=0.4, round_to=8), Candidate(model=model), tiny_context("cnn", model)
    )
    convs = [m for m in out.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert out.model[-1].out_features == 4  # the classifier head keeps every class


def test_prune_skip_and_unknown_layer():
    model = tiny_cnn()
    ctx = tiny_context("cnn", model)
    out = get("prune").apply(PruneConfig(ratio=0.5, skip=("0",)), Candidate(model=model), ctx)
    assert out.model[0].out_channels == 16
    with pytest.raises(ConfigError, match="layer 'nope' is not in the model"):
        get("prune").apply(PruneConfig(skip=("nope",)), Candidate(model=model), ctx)


@pytest.mark.parametrize("ratio", ["1.0", "0.96", "-0.1"])
def test_a_layer_ratio_outside_0_to_0_95_is_refused_naming_layer_ratios(ratio):
    with pytest.raises(ConfigError, match=rf"'layer_ratios' parameter of prune.*'0:{ratio}'"):
        parse_recipe(f"prune:ratio=0.3,layer_ratios=0:{ratio}")
    assert parse_recipe("prune:ratio=0.3,layer_ratios=0:0.95")[0].layer_ratios == ("0:0.95",)


def test_prune_names_the_layer_it_cannot_trace():
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            return self.head(h.numpy().sum() + h)  # leaves torch: no graph to follow

    model = Odd()
    with pytest.raises(TechniqueError, match=r"torch-pruning cannot trace the model.*prune:skip"):
        ctx = Context(task="multiclass", example_inputs=(torch.zeros(1, 4),))
        get("prune").apply(PruneConfig(), Candidate(model=model), ctx)


def test_sparsity_is_honest_about_speed():
    model = tiny_mlp()
    out = get("sparsify").apply(
        SparsityConfig(ratio=0.8), Candidate(model=model), tiny_context("mlp", model)
    )
    total, _, nonzero = parameter_counts(out.model)
    assert nonzero < 0.35 * total
    assert not list(out.model.named_buffers())  # no masks left behind
    assert "do not speed up" in out.steps[-1].notes[0]
    facts = out.steps[-1].facts
    assert facts["gzip_bytes_after"] < 0.6 * facts["gzip_bytes_before"]
    assert (
        profile(out.model, torch.zeros(1, 16), latency=False).macs
        == profile(model, torch.zeros(1, 16), latency=False).macs
    )


def test_lowrank_approximates_the_layer():
    model = tiny_mlp()
    ctx = tiny_context("mlp", model)
    full = get("lowrank").apply(LowRankConfig(rank_ratio=1.0), Candidate(model=model), ctx)
    assert full.steps[-1].facts["layers_factorised"] == []  # full rank saves nothing
    # a layer of true rank 8 (plus a little noise): the energy criterion must find and keep it
    torch.manual_seed(0)
    low = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4)
    ).eval()
    with torch.no_grad():
        low[2].weight.copy_(
            torch.randn(64, 8) @ torch.randn(8, 64) / 8 + 1e-4 * torch.randn(64, 64)
        )
    energy = get("lowrank").apply(
        LowRankConfig(energy=0.999), Candidate(model=low), tiny_context("mlp", low)
    )
    assert "2" in energy.steps[-1].facts["layers_factorised"]
    x = torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(energy.model(x), low(x), atol=1e-2, rtol=1e-2)


def test_distill_width_builds_a_narrower_student_and_needs_training_data():
    model = tiny_cnn()
    ctx = tiny_context("cnn", model)
    out = get("distill").apply(DistillConfig(epochs=1, width=0.5), Candidate(model=model), ctx)
    assert parameter_counts(out.model)[0] < 0.4 * parameter_counts(model)[0]
    no_train = Context(task="multiclass", example_inputs=ctx.example_inputs, teacher=model)
    with pytest.raises(ConfigError, match="no teacher signal"):
        get("distill").apply(DistillConfig(epochs=1), Candidate(model=model), no_train)


def test_nothing_that_changes_the_pytorch_model_follows_a_graph_step():
    model = tiny_mlp()
    final = Candidate(model=model, onnx=b"graph", runtime="onnxruntime")
    with pytest.raises(TechniqueError, match="put prune before those steps"):
        get("prune").apply(PruneConfig(), final, tiny_context("mlp", model))
    with pytest.raises(ConfigError, match="move 'finetune' before it"):
        parse_recipe("fuse > finetune:2")
    assert [c.name for c in parse_recipe("prune:0.3 > fuse > quantize:int8-dynamic")] == [
        "prune",
        "fuse",
        "quantize",
    ]


def test_taylor_pruning_of_an_embedding_model_needs_no_labels():
    import dataclasses

    from fulcrum.testing import tiny_bert

    model = tiny_bert()
    ctx = dataclasses.replace(tiny_context("bert", model), task="embedding")
    out = get("prune").apply(
        PruneConfig(ratio=0.3, importance="taylor", round_to=1), Candidate(model=model), ctx
    )
    assert parameter_counts(out.model)[0] < parameter_counts(model)[0]
