"""A Hugging Face model named on the command line (`--model PATH_OR_ID --task TASK --data FILE`),
as Optimum and Olive take it: no TOML to write first, never a download."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from fulcrum.cli import main
from fulcrum.workloads.text import transformers_quietly
from test_text import make_text_workload


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    """A tiny BERT folder and sentences in a CSV with a column of another name."""
    make_text_workload(tmp_path)
    lines = (tmp_path / "sentences.txt").read_text().split("\n")
    with (tmp_path / "sentences.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sentence"])
        writer.writerows([i, line] for i, line in enumerate(lines) if line)
    return tmp_path


def test_compress_and_export_a_model_folder_named_on_the_command_line(capsys, bert):
    run_dir = bert / "run"
    code, out, err = run(
        capsys,
        "compress",
        "--model",
        str(bert / "model"),
        "--task",
        "feature-extraction",
        "--data",
        str(bert / "sentences.csv"),
        "--text-column",
        "sentence",
        "--recipe",
        "quantize:int8-dynamic",
        "--seconds",
        "0.05",
        "--out",
        str(run_dir),
    )
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "embedding"
    assert results["baseline"]["metrics"]["cosine_mean"] == pytest.approx(1.0)
    # the run records a workload file that loads again anywhere: the export re-checks with it
    code, out, err = run(capsys, "export", str(run_dir), "--format", "hf", "--json", "-")
    assert code == 0, err
    record = json.loads(out)
    assert record["parity"]["metric"]["checked"] is True and "Hugging Face" in record["contains"]
    assert {"model.onnx", "config.json", "tokenizer_config.json"} <= set(record["files"])
    # ... and loads without Fulcrum: its tokenizer and graph give the run's embeddings
    sentences = [row[1] for row in csv.reader((bert / "sentences.csv").open())][1:]
    script = LOAD_WITHOUT_FULCRUM.format(folder=str(run_dir / "export" / "hf"))
    done = subprocess.run(
        [sys.executable, "-c", script], input="\n".join(sentences), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    exported = torch.tensor(json.loads(done.stdout))
    original = original_embeddings(bert / "model", sentences)
    cosine = float(torch.nn.functional.cosine_similarity(exported, original).mean())
    recorded = results["trials"][0]["metrics"]["cosine_mean"]
    assert recorded < 1.0 and cosine == pytest.approx(recorded, abs=0.01)


def original_embeddings(folder: Path, sentences: list[str]) -> torch.Tensor:
    """The sentence embeddings of the model in ``folder`` as it is: its encoder's states
    mean-pooled over the attention mask, computed with transformers alone."""
    with transformers_quietly():
        encoder = transformers.AutoModel.from_pretrained(str(folder)).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (states * mask).sum(1) / mask.sum(1)


LOAD_WITHOUT_FULCRUM = """
import json, sys
import onnxruntime, transformers
tokenizer = transformers.AutoTokenizer.from_pretrained("{folder}")
config = transformers.AutoConfig.from_pretrained("{folder}")
session = onnxruntime.InferenceSession("{folder}/model.onnx")
batch = tokenizer(sys.stdin.read().split("\\n"), padding=True, return_tensors="np")
feed = {{i.name: batch[i.name] for i in session.get_inputs()}}
(embedding,) = session.run(["sentence_embedding"], feed)
assert config.model_type == "bert" and not any(m.startswith("fulcrum") for m in sys.modules)
print(json.dumps(embedding.tolist()))
"""


def test_text_classification_reads_label_names_from_jsonl(capsys, tmp_path):
    make_text_workload(tmp_path)
    config = transformers.BertConfig.from_pretrained(str(tmp_path / "model"))
    config.id2label, config.label2id = {0: "no", 1: "yes"}, {"no": 0, "yes": 1}
    torch.manual_seed(0)
    with transformers_quietly():
        model = transformers.BertForSequenceClassification(config)
        model.save_pretrained(str(tmp_path / "classifier"))
        transformers.AutoTokenizer.from_pretrained(str(tmp_path / "model")).save_pretrained(
            str(tmp_path / "classifier")
        )
    lines = [line for line in (tmp_path / "sentences.txt").read_text().split("\n") if line]
    rows = [{"text": line, "label": ["no", "yes"][i % 2]} for i, line in enumerate(lines)]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--model", str(tmp_path / "classifier"), "--task", "text-classification"]
    code, out, err = run(capsys, "evaluate", *argv, "--data", str(data), "--json", "-")
    assert code == 0, err
    evaluation = json.loads(out)["evaluation"]
    assert evaluation["n_samples"] == 22 and "f1_macro" in evaluation["metrics"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        # a hub id not in the local cache: never a download, and the command that would fetch it
        (["--model", "nobody/no-such-model", "--task", "feature-extraction", "--data", "DATA"],
         "hf download nobody/no-such-model"),
        # a head that does not fit the task: what was found is named
        (["--model", "MODEL", "--task", "text-classification", "--data", "DATA"],
         "the model in"),
        (["--model", "MODEL", "--task", "feature-extraction", "--data", "DATA",
          "--text-column", "sentense"], "has no column 'sentense'; it has ['id', 'sentence']"),
        (["--model", "MODEL", "--data", "DATA"], "--model needs --task"),
        (["--model", "MODEL", "--task", "image-segmentation", "--data", "DATA"],
         "invalid choice: 'image-segmentation'"),
    ],
)  # fmt: skip
def test_bad_names_are_one_line_and_exit_2(capsys, bert, monkeypatch, argv, needle):
    monkeypatch.setenv("HF_HUB_CACHE", str(bert / "empty-hub-cache"))
    argv = [
        str(bert / "model") if a == "MODEL" else str(bert / "sentences.csv") if a == "DATA" else a
        for a in argv
    ]
    code, out, err = run(capsys, "evaluate", *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert needle in err
    if "text-classification" in argv:
        assert "BertModel" in err


def _vit_folder(folder: Path) -> Path:
    """A tiny ViT classifier (cat, dog) with its image processor, and 24 images by class."""
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=2,
        id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    with transformers_quietly():
        transformers.ViTForImageClassification(config).save_pretrained(str(folder / "vit"))
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(
            str(folder / "vit")
        )
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for label, (red, blue) in (("dog", (200, 30)), ("cat", (30, 200))):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(12):
            noise = torch.randint(0, 40, (40, 48, 3), generator=rng)
            pixels = (noise + torch.tensor([red, 90, blue])).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / "images" / label / f"{i}.png")
    return folder


def test_image_classification_from_a_folder_of_images_by_class(capsys, tmp_path):
    folder = _vit_folder(tmp_path)
    argv = ["--model", str(folder / "vit"), "--task", "image-classification"]
    argv += ["--data", str(folder / "images")]
    code, out, err = run(capsys, "evaluate", *argv, "--json", "-")
    assert code == 0, err
    assert json.loads(out)["evaluation"]["n_samples"] == 6  # a quarter of 24 images
    run_dir = folder / "run"
    recipe = ["--recipe", "quantize:int8-dynamic", "--seconds", "0.05", "-q"]
    code, _, err = run(capsys, "compress", *argv, *recipe, "--out", str(run_dir))
    assert code == 0, err
    code, out, err = run(capsys, "export", str(run_dir), "--format", "hf", "--json", "-")
    assert code == 0, err
    assert "preprocessor_config.json" in json.loads(out)["files"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run_dir / "export" / "hf" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    code, _, err = run(capsys, "evaluate", *argv[:2], "--task", "text-classification",
                       "--data", str(folder / "images"))  # fmt: skip
    assert code == 2 and "ForSequenceClassification" in err and "ViTForImageClassification" in err
