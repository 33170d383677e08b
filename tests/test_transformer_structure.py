"""Structural compression of transformer encoders: whole heads, feed-forward channels, and
hidden-state distillation, on a tiny BERT saved the way a user brings one."""

import pytest
import torch

from fulcrum.cli import main
from fulcrum.compression import compress, load_candidate, save_candidate
from fulcrum.errors import ConfigError
from fulcrum.runtimes import OnnxModel
from fulcrum.teacher import layer_outputs
from fulcrum.workloads import load
from test_text import HEADS, INTERMEDIATE, LAYERS, make_text_workload


@pytest.fixture
def workload(tmp_path):
    toml = make_text_workload(tmp_path)
    return load(str(toml)), toml


def attentions(model):
    return [layer.attention.self for layer in model.encoder.encoder.layer]


def silence_heads_(model, layer, heads):
    """Zero the value projections of ``heads`` of ``layer``: they then contribute nothing."""
    attention = attentions(model)[layer]
    size = attention.attention_head_size
    with torch.no_grad():
        for head in heads:
            attention.value.weight[head * size : (head + 1) * size] = 0
            attention.value.bias[head * size : (head + 1) * size] = 0


def test_pruning_heads_of_a_layer_leaves_it_the_rest_and_a_consistent_config(workload, tmp_path):
    workload, toml = workload
    pruned = compress(workload.model, "heads:layer_heads=0:3,ffn=0.5", workload)
    first, second = attentions(pruned.model)
    assert (first.num_attention_heads, second.num_attention_heads) == (HEADS - 3, HEADS)
    size = first.attention_head_size
    assert first.query.out_features == first.all_head_size == (HEADS - 3) * size
    layer = pruned.model.encoder.encoder.layer[0]
    assert layer.attention.output.dense.in_features == (HEADS - 3) * size
    assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 32
    config = pruned.model.encoder.config
    assert len(config.pruned_heads[0]) == 3 and 1 not in config.pruned_heads
    assert config.intermediate_size == INTERMEDIATE // 2
    assert attentions(workload.model)[0].num_attention_heads == HEADS  # the original is untouched
    (ids, mask), _ = next(iter(workload.val))
    with torch.no_grad():
        out = pruned.model(ids, mask)
    assert torch.isfinite(out).all()
    # it exports to ONNX, and the saved candidate reloads with its heads
    folder = tmp_path / "pruned"
    save_candidate(pruned, folder, workload.example_inputs, str(toml))
    torch.testing.assert_close(
        OnnxModel(folder / "model.onnx")(ids, mask), out, atol=1e-4, rtol=1e-3
    )
    rebuilt, _ = load_candidate(folder)
    assert [a.num_attention_heads for a in attentions(rebuilt)] == [HEADS - 3, HEADS]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask), out)


@pytest.mark.parametrize("importance", ["gradient", "magnitude"])
def test_the_heads_that_contribute_nothing_go_first(workload, importance):
    workload, _ = workload
    silence_heads_(workload.model, 0, [2])
    silence_heads_(workload.model, 1, [1])
    pruned = compress(workload.model, f"heads:ratio=0.25,importance={importance}", workload)
    assert pruned.steps[-1].facts["heads_removed"] == [[2], [1]]


def test_global_ranking_takes_heads_from_the_layer_that_needs_them_least(workload):
    workload, _ = workload
    silence_heads_(workload.model, 1, [0, 1, 3])
    pruned = compress(workload.model, "heads:ratio=0.375,global_ranking=true", workload)
    assert pruned.steps[-1].facts["heads_removed"] == [[], [0, 1, 3]]
    uniform = compress(workload.model, "heads:ratio=0.375", workload)
    assert [len(h) for h in uniform.steps[-1].facts["heads_removed"]] == [2, 2]


def test_fuse_and_int8_follow_heads_removed_unevenly(workload):
    workload, _ = workload
    pruned = compress(workload.model, "heads:layer_heads=0:2 > fuse", workload)
    assert "different head counts" in " ".join(pruned.steps[-1].notes)
    (ids, mask), _ = next(iter(workload.val))
    with torch.no_grad():
        expected = pruned.model(ids, mask)
    torch.testing.assert_close(OnnxModel(pruned.onnx)(ids, mask), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("heads:layer_heads=0:4", "removing 4 heads of layer 0 leaves it none"),
        ("heads:layer_heads=5:1", "layer 5 does not exist; the encoder has 2 layers"),
        ("heads:layer_heads=0-1", "takes 'layer:heads_removed' entries"),
    ],
)
def test_impossible_head_pruning_is_refused_in_one_line(
    workload, tmp_path, capsys, recipe, message
):
    _, toml = workload
    code = main(["compress", str(toml), "--recipe", recipe, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_heads_names_what_it_found_in_a_model_that_is_not_a_transformer(workload):
    from fulcrum.testing import tiny_mlp

    workload, _ = workload
    with pytest.raises(ConfigError, match=r"needs a transformer encoder.*Sequential has none"):
        compress(tiny_mlp(), "heads:ratio=0.5", workload)


def hidden_distance(student, teacher, inputs, pairs):
    with (
        torch.no_grad(),
        layer_outputs(student, [s for s, _ in pairs]) as mine,
        layer_outputs(teacher, [t for _, t in pairs]) as theirs,
    ):
        student(*inputs)
        teacher(*inputs)
    real = inputs[1].bool()  # the attention mask: padding is not what distillation matches
    return sum(float((mine[s] - theirs[t])[real].pow(2).mean()) for s, t in pairs)


def test_hidden_state_distillation_lowers_the_hidden_state_distance(workload):
    workload, _ = workload
    student = compress(workload.model, "layers:indices=1", workload).model
    with torch.no_grad():  # knock the kept layer off what it computed in the teacher
        for parameter in student.encoder.encoder.layer[0].parameters():
            parameter.add_(
                0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0))
            )
    (ids, mask), _ = next(iter(workload.val))
    pairs = [(0, 1)]  # the student's only layer learns what teacher layer 1 gives
    before = hidden_distance(student, workload.model, (ids, mask), pairs)
    recipe = "distill:epochs=8,lr=0.003,patience=0,hidden={}"
    with_hidden, outputs_only = (
        compress(student, recipe.format(weight), workload).model for weight in (1.0, 0.0)
    )
    after = hidden_distance(with_hidden, workload.model, (ids, mask), pairs)
    without = hidden_distance(outputs_only, workload.model, (ids, mask), pairs)
    assert after < 0.5 * before and after < without


def test_the_hidden_state_distance_leaves_padding_out():
    from fulcrum.teacher import hidden_distance as distance

    teacher = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student = teacher.clone()
    student[0, 3:] += 10.0  # differs only where the first text is padding
    ids = torch.ones(2, 5, dtype=torch.long)
    assert float(distance(student, teacher, (ids, mask))) == 0.0
    student[1, 0] += 1.0  # one real token off by 1 in each of 8 features: 1 over 8 tokens
    assert float(distance(student, teacher, (ids, mask))) == pytest.approx(1 / 8)
    assert float(distance(student, teacher, (ids,))) > 1.0  # no mask given: every position


def test_the_hidden_loss_maps_a_dropped_layer_student_to_the_layers_it_kept(workload):
    from fulcrum.techniques.distill import layer_pairs

    workload, _ = workload
    student = compress(workload.model, "layers:indices=1", workload)
    assert layer_pairs(student, workload.model) == ((0, 1),)
    assert layer_pairs(compress(workload.model, "heads", workload), workload.model) == (
        (0, 0),
        (1, 1),
    )
    assert LAYERS == 2


def test_an_encoder_finetunes_without_a_teacher_on_a_contrastive_objective(workload):
    workload, _ = workload
    student = compress(workload.model, "heads:ratio=0.5", workload)
    trained = compress(student.model, "finetune:epochs=1,lr=0.001", workload)
    facts = trained.steps[-1].facts
    assert facts["val_after"] != facts["val_before"]  # it trained, and is judged on cosine
    changed = [
        name
        for (name, a), (_, b) in zip(
            student.model.state_dict().items(), trained.model.state_dict().items(), strict=True
        )
        if not torch.equal(a, b)
    ]
    assert any("attention" in name for name in changed)
