"""Does `fulcrum export --format hf` load in Optimum? A tiny BERT saved to a folder and a CSV of
sentences (and a tiny ViT with a folder of images by class) are compressed by the command line (`--model FOLDER --task feature-extraction --data
sentences.csv`), exported with `--format hf`, and loaded by Optimum's ONNX Runtime classes in an
environment of their own: optimum-onnx 0.1 requires transformers<4.58 and Fulcrum's environment
has transformers 5, so Optimum cannot be a test dependency. The embeddings Optimum returns are
compared with the original model's (cosine), against the fidelity the run recorded. Writes JSON
to benchmarks/results/optimum-load.json.

    python3 -m venv /tmp/optvenv
    /tmp/optvenv/bin/pip install -c constraints.txt torch==2.13.0 "optimum-onnx[onnxruntime]"
    .venv/bin/python benchmarks/optimum_load.py --optimum-python /tmp/optvenv/bin/python
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from fulcrum.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hub import _vit_folder, original_embeddings  # (the tests' tiny models)
from test_text import make_text_workload

OPTIMUM = """
import json, sys
import optimum, optimum.onnxruntime as ort, transformers
folder, sentences = sys.argv[1], json.loads(sys.stdin.read())
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
model = ort.ORTModelForCustomTasks.from_pretrained(folder)
batch = tokenizer(sentences, padding=True, return_tensors="pt")
out = model(**{k: v for k, v in batch.items() if k in model.input_names})
print(json.dumps({
    "class": type(model).__name__,
    "optimum": __import__("importlib.metadata").metadata.version("optimum-onnx"),
    "transformers": transformers.__version__,
    "embedding": out["sentence_embedding"].tolist(),
}))
"""

OPTIMUM_IMAGES = """
import json, sys
import numpy as np, onnxruntime, optimum.onnxruntime as ort, transformers
from PIL import Image
folder, paths = sys.argv[1], json.loads(sys.stdin.read())
processor = transformers.AutoImageProcessor.from_pretrained(folder)
model = ort.ORTModelForImageClassification.from_pretrained(folder)
batch = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
logits = model(**batch).logits.numpy()
plain = onnxruntime.InferenceSession(folder + "/model.onnx").run(
    ["logits"], {"pixel_values": batch["pixel_values"].numpy()})[0]
print(json.dumps({"class": type(model).__name__, "max_abs_vs_onnxruntime":
    float(np.abs(logits - plain).max()), "labels": logits.argmax(1).tolist()}))
"""


def images_case(python: str, folder: Path, recipe: str) -> dict[str, object]:
    """The tests' tiny ViT compressed from the command line, exported as hf, and run by
    Optimum's ORTModelForImageClassification against onnxruntime on the same graph."""
    _vit_folder(folder)
    argv = ["--model", str(folder / "vit"), "--task", "image-classification"]
    argv += ["--data", str(folder / "images")]
    run = folder / "run"
    assert main(["compress", *argv, "--recipe", recipe, "--out", str(run), "-q"]) == 0
    assert main(["export", str(run), "--format", "hf", "-q"]) == 0
    paths = sorted(str(p) for p in (folder / "images").rglob("*.png"))
    done = subprocess.run(
        [python, "-c", OPTIMUM_IMAGES, str(run / "export" / "hf")],
        input=json.dumps(paths),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    loaded = json.loads(done.stdout)
    return {
        "task": "image-classification",
        "optimum_class": loaded["class"],
        "images": len(paths),
        "max_abs_logits_optimum_vs_onnxruntime": loaded["max_abs_vs_onnxruntime"],
    }


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimum-python", required=True, help="python of the Optimum venv")
    parser.add_argument("--recipe", default="quantize:int8-dynamic")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_text_workload(folder)
        lines = [s for s in (folder / "sentences.txt").read_text().split("\n") if s]
        with (folder / "sentences.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["sentence"], *([s] for s in lines)])
        run = folder / "run"
        common = ["--model", str(folder / "model"), "--task", "feature-extraction"]
        code = main(
            [
                "compress",
                *common,
                "--data",
                str(folder / "sentences.csv"),
                "--text-column",
                "sentence",
                "--recipe",
                args.recipe,
                "--out",
                str(run),
                "-q",
            ]
        )
        assert code == 0, code
        assert main(["export", str(run), "--format", "hf", "-q"]) == 0
        recorded = json.loads((run / "results.json").read_text())["trials"][0]["metrics"]
        done = subprocess.run(
            [args.optimum_python, "-c", OPTIMUM, str(run / "export" / "hf")],
            input=json.dumps(lines),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return 1
        loaded = json.loads(done.stdout)
        original = original_embeddings(folder / "model", lines)
        cosine = torch.nn.functional.cosine_similarity(torch.tensor(loaded["embedding"]), original)
    result = {
        "what": "fulcrum compress --model FOLDER --task feature-extraction --data sentences.csv, "
        "export --format hf, loaded by Optimum in its own environment",
        "recipe": args.recipe,
        "optimum_class": loaded["class"],
        "optimum_onnx": loaded["optimum"],
        "optimum_transformers": loaded["transformers"],
        "fulcrum_transformers": transformers.__version__,
        "sentences": len(lines),
        "cosine_mean_optimum_vs_original": round(float(cosine.mean()), 6),
        "cosine_min_optimum_vs_original": round(float(cosine.min()), 6),
        "run_recorded_cosine_mean": recorded["cosine_mean"],
        "within_0.01_of_recorded": abs(float(cosine.mean()) - recorded["cosine_mean"]) <= 0.01,
        "image_classification": images_case(
            args.optimum_python, Path(tempfile.mkdtemp()), args.recipe
        ),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimum-load.json").write_text(json.dumps(result, indent=2) + "\n")
    image = result["image_classification"]
    ok = image["max_abs_logits_optimum_vs_onnxruntime"] <= 1e-5
    return 0 if result["within_0.01_of_recorded"] and ok else 1


if __name__ == "__main__":
    sys.exit(main_())
