"""A Hugging Face model named on the command line: ``--model PATH_OR_ID --task TASK --data FILE``.

The names become the TOML workload a user would have written (``transformers = FOLDER``,
``text = FILE``, ...), kept under the cache folder, and that file is loaded as any other: one
way for a workload to flow, and a run folder records a file it can load again. A hub id is
looked up in the local Hugging Face cache only; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fulcrum.errors import ConfigError, suggest
from fulcrum.workloads.base import cache_dir

# Hugging Face's task names -> Fulcrum's tasks
TASKS = {
    "feature-extraction": "embedding",
    "text-classification": "multiclass",
    "image-classification": "multiclass",
}
HEADS = {
    "text-classification": "ForSequenceClassification",
    "image-classification": "ForImageClassification",
}


def model_folder(ref: str) -> Path:
    """The folder of ``ref``: a local folder, or a hub id already in the local cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"--model {ref!r} is not a transformers model folder (no config.json); name the "
                "folder save_pretrained wrote, or a hub id in the local cache."
            )
        return path.resolve()
    if path.exists() or ref.count("/") != 1:
        raise ConfigError(
            f"--model {ref!r} is neither a model folder nor a hub id (owner/name); check it."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError), no huggingface_hub, ...
        raise ConfigError(
            f"--model {ref!r} is not in the local Hugging Face cache and Fulcrum never downloads; "
            f"on a machine with internet run `hf download {ref}` (with the same HF_HOME), or "
            "give the folder save_pretrained wrote."
        ) from None


def check_head(folder: Path, task: str) -> None:
    """Refuse a task the model's head does not fit, naming the architectures found."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {str(folder)!r}: config.json cannot be read ({exc}).") from None
    found = list(config.get("architectures") or [])
    head = HEADS.get(task)
    if head is not None and not any(a.endswith(head) for a in found):
        raise ConfigError(
            f"--task {task} needs a ...{head} model, and the model in {str(folder)!r} is "
            f"{', '.join(found) or 'a model with no architectures listed'}; use the task its "
            f"head fits (feature-extraction for an encoder), or a folder saved from "
            f"AutoModel{head}."
        )


def workload_file(
    model: str,
    task: str,
    data: Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
) -> Path:
    """The TOML workload the command line stands for, written under the cache folder (named by
    its content) and returned."""
    if task not in TASKS:
        raise ConfigError(
            f"--task {task!r} is not supported; choose from {', '.join(TASKS)}.{suggest(task, TASKS)}"
        )
    folder = model_folder(model)
    check_head(folder, task)
    images = task == "image-classification"
    if not (data.is_dir() if images else data.is_file()):
        what = "a folder with one subfolder of images per class" if images else "a file of texts"
        raise ConfigError(f"--data {str(data)!r} is not {what}; give one.")
    entries = {
        "name": folder.name if Path(model).expanduser().is_dir() else model.replace("/", "--"),
        "description": f"{model} ({task}) on {data.name}",
        "task": TASKS[task],
        "transformers": str(folder),
        **(
            {"images": str(data.resolve())}
            if images
            else {
                "text": str(data.resolve()),
                "text_column": text_column,
                "label_column": label_column,
            }
        ),
    }
    # TOML's basic strings read JSON's escapes alike
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in entries.items())
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir() / "workloads" / f"{entries['name']}-{digest}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path
