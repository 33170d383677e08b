"""Text workloads: a ``transformers`` model and its tokenizer from disk, with sentences or labelled text.

Batches are ``((input_ids, attention_mask), target)``, padded to the longest text of each batch;
a sentence-embedding model is the encoder followed by mean pooling over the attention mask. The
example inputs (what latency is timed on) are one sequence of ``example_length`` real tokens.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fulcrum.errors import ConfigError, DataError, MissingDependencyError, first_line, suggest

log = logging.getLogger(__name__)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SPLIT_FRACTIONS = {"val": 0.25, "calib": 0.10}  # of a text collection given as one list


class SentenceEncoder(nn.Module):
    """A transformer encoder with mean pooling: ``(input_ids, attention_mask) -> (batch, hidden)``.

    What sentence-transformers models such as all-MiniLM-L6-v2 compute before normalisation.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass(frozen=True)
class Tokenized:
    """Token ids of each text (unpadded), the targets, and how many texts were truncated."""

    ids: list[list[int]]
    targets: torch.Tensor
    truncated: int


class TokenDataset(Dataset):
    """Tokenized texts; ``by_length`` orders them shortest first, so that batches padded to
    their longest text waste little (evaluation and calibration do not depend on the order)."""

    def __init__(self, data: Tokenized, by_length: bool = False) -> None:
        self.data = data
        count = len(data.ids)
        self.order = sorted(range(count), key=lambda i: len(data.ids[i])) if by_length else None

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, index: int) -> tuple[list[int], torch.Tensor]:
        if self.order is not None:
            index = self.order[index]
        return self.data.ids[index], self.data.targets[index]


class PadCollate:
    """Pads a batch's token ids to its longest text; gives the inputs ``names`` in that order
    (``input_ids``, ``attention_mask``, ``token_type_ids``: all zeros, one segment)."""

    def __init__(self, pad_id: int, names: Sequence[str] = TEXT_INPUTS[:2]) -> None:
        self.pad_id, self.names = pad_id, tuple(names)

    def __call__(
        self, batch: Sequence[tuple[list[int], torch.Tensor]]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        length = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        tensors = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(input_ids),
        }
        return tuple(tensors[n] for n in self.names), torch.stack([t for _, t in batch])


@contextlib.contextmanager
def transformers_quietly() -> Iterator[Any]:
    """``transformers``, imported without the warnings its optional backends log on import
    (torchao's missing GPU kernels), with its own log lines and progress bars off while it is
    used; its verbosity, its progress bars and the logging state are as they were after."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import transformers
        import transformers.modeling_utils  # where the optional backends load
    except ImportError:
        raise MissingDependencyError(
            "text workloads need the transformers package; install it with "
            "pip install 'fulcrum[transformers]'."
        ) from None
    finally:
        logging.disable(disabled)
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def load_tokenizer(path: Path, where: str) -> Any:
    """A tokenizer from a folder on disk (never from a hub)."""
    if not path.exists():
        raise ConfigError(
            f"{where}: tokenizer folder {str(path)!r} does not exist; name the folder that holds "
            "tokenizer.json or vocab.txt (tokenizer = '...')."
        )
    try:
        with transformers_quietly() as transformers:
            return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}: no tokenizer can be loaded from {str(path)!r} ({first_line(exc, 160)}); "
            "name the folder that holds tokenizer.json or vocab.txt (tokenizer = '...')."
        ) from None


def encoder_without_pooler(transformers: Any, path: Path) -> nn.Module:
    """The encoder of a ``transformers`` folder, without the [CLS] pooler mean pooling never
    reads (it would cost compute, bytes, and a layer pruning cannot see)."""
    try:
        return transformers.AutoModel.from_pretrained(
            str(path), local_files_only=True, add_pooling_layer=False
        )
    except TypeError:  # architectures without a pooler take no such argument
        return transformers.AutoModel.from_pretrained(str(path), local_files_only=True)


def load_pretrained(path: Path, task: str, num_classes: int | None, where: str) -> nn.Module:
    """A ``transformers`` model from a folder: an encoder with mean pooling for ``embedding``,
    a sequence classifier for ``multiclass`` and ``binary``."""
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{where}: {str(path)!r} is not a transformers model folder (no config.json); "
            "name the folder save_pretrained wrote."
        )
    try:
        with transformers_quietly() as transformers:
            if task == "embedding":
                return SentenceEncoder(encoder_without_pooler(transformers, path)).eval()
            if task in ("multiclass", "binary"):
                extra = {"num_labels": num_classes} if num_classes else {}
                return transformers.AutoModelForSequenceClassification.from_pretrained(
                    str(path), local_files_only=True, **extra
                ).eval()
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}: the model in {str(path)!r} cannot be loaded ({first_line(exc, 160)})."
        ) from None
    raise ConfigError(
        f"{where}: task {task!r} has no text model; use 'embedding' (mean-pooled sentence "
        "embeddings) or 'multiclass' / 'binary' (sequence classification)."
    )


def model_config(model: nn.Module) -> Any:
    """The ``transformers`` config of ``model`` or of the first submodule that has one."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "vocab_size"):
            return config
    return None


def check_tokenizer(tokenizer: Any, model: nn.Module, where: str) -> int:
    """The longest sequence the model takes; refuses a tokenizer whose ids the model lacks."""
    config = model_config(model)
    if config is None:
        return 512
    tokens = len(tokenizer)
    if tokens > config.vocab_size:
        raise ConfigError(
            f"{where}: the tokenizer has {tokens} tokens but the model's embedding has "
            f"{config.vocab_size}; use the tokenizer the model was trained with."
        )
    return int(getattr(config, "max_position_embeddings", 512) or 512)


def tokenize(
    tokenizer: Any, texts: Sequence[str], targets: torch.Tensor, max_length: int
) -> Tokenized:
    """Token ids of each text, truncated to ``max_length`` tokens (counted)."""
    if not all(isinstance(t, str) for t in texts):
        bad = next(t for t in texts if not isinstance(t, str))
        raise DataError(f"text data must be strings; got a {type(bad).__name__} ({bad!r:.40}).")
    full = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    ids = [
        ids if len(ids) <= max_length else [*ids[: max_length - 1], ids[-1]] for ids in full
    ]  # keep the closing special token ([SEP]) of a truncated text
    return Tokenized(ids=ids, targets=targets, truncated=truncated)


class LengthBuckets(Sampler[list[int]]):
    """Shuffled batches of texts of similar length: each epoch shuffles the texts, sorts pools of
    ``pool`` batches by length, cuts them into batches and shuffles the batches. Padding to the
    longest text of a random batch wasted about two thirds of the positions of a training step
    on CPython's sentences (median 19 tokens, batches padded to 60-80); bucketed, about a tenth."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool: int = 50):
        self.lengths, self.batch_size, self.seed, self.pool = list(lengths), batch_size, seed, pool
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            pool = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def restricted(self, indices: Sequence[int]) -> LengthBuckets:
        """The same batching over the texts ``indices`` (renumbered from 0, as a Subset does)."""
        return LengthBuckets(
            [self.lengths[i] for i in indices], self.batch_size, self.seed, self.pool
        )


def loader(
    data: Tokenized,
    pad_id: int,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    names: Sequence[str] = TEXT_INPUTS[:2],
) -> DataLoader:
    """Batches of ``data``: shuffled in length buckets for training, else ordered by length
    (less padding either way)."""
    collate = PadCollate(pad_id, names)
    if shuffle:
        buckets = LengthBuckets([len(ids) for ids in data.ids], batch_size, seed)
        return DataLoader(TokenDataset(data), batch_sampler=buckets, collate_fn=collate)
    return DataLoader(TokenDataset(data, by_length=True), batch_size=batch_size, collate_fn=collate)


Texts = tuple[list[str], torch.Tensor]


TEXT_FILES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet")


def label_ids(model: nn.Module) -> dict[str, int]:
    """The class names a ``transformers`` model knows (its config's ``label2id``)."""
    return dict(getattr(model_config(model), "label2id", None) or {})


def folders(spec: Mapping[str, Any], base: Path) -> dict[str, str | None]:
    """A text workload's model and tokenizer folders, in full (what ``--format hf`` copies)."""
    model, tokenizer = spec.get("transformers"), spec.get("tokenizer", spec.get("transformers"))
    return {
        "transformers_folder": str((base / str(model)).resolve()) if model else None,
        "tokenizer_folder": str((base / str(tokenizer)).resolve()) if tokenizer else None,
    }


def read_text_file(
    path: Path,
    task: str,
    where: str,
    spec: Mapping[str, Any] | None = None,
    label_ids: dict[str, int] | None = None,
) -> list[str] | Texts:
    """Texts from a file: ``.txt`` one per line; ``.csv``, ``.tsv``, ``.jsonl`` (a record a line),
    ``.json`` (a list of records) or ``.parquet`` with the column the workload ``spec`` names
    ``text_column`` (default ``text``) and, except for embeddings, its ``label_column``
    (default ``label``) of class numbers or of the names in ``label_ids``."""
    text_column = str((spec or {}).get("text_column", "text"))
    label_column = str((spec or {}).get("label_column", "label"))
    if not path.is_file():
        raise ConfigError(f"{where}: text file {str(path)!r} does not exist; check the path.")
    if path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line]
    if path.suffix not in TEXT_FILES:
        raise ConfigError(
            f"{where}: text file {path.name!r} must be one of {', '.join(TEXT_FILES)} (.txt: one "
            "text per line; the others: named columns)."
        )
    rows = _records(path, where)
    columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
    needed = [text_column] + ([label_column] if task != "embedding" else [])
    for column in needed:
        if column not in columns:
            option = "--text-column" if column == text_column else "--label-column"
            raise ConfigError(
                f"{where}: {path.name} has no column {column!r}; it has {columns} (choose with "
                f"{option}).{suggest(column, columns)}"
            )
    texts = [str(row.get(text_column, "")) for row in rows]
    if task == "embedding":
        return texts
    return texts, _labels([row.get(label_column) for row in rows], path.name, where, label_ids)


def _records(path: Path, where: str) -> list[dict[str, Any]]:
    """The rows of a table file, as dictionaries."""
    import csv
    import json

    try:
        if path.suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as handle:
                delimiter = "\t" if path.suffix == ".tsv" else ","
                return list(csv.DictReader(handle, delimiter=delimiter))
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ConfigError(f"{where}: {path.name} must hold a list of records.")
            return rows
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise MissingDependencyError(
                f"{where}: reading {path.name} needs pyarrow; install it with pip install pyarrow, "
                "or give the texts as .csv or .jsonl."
            ) from None
        return list(parquet.read_table(str(path)).to_pylist())
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{where}: {path.name} cannot be read ({first_line(exc, 160)}).") from None


def _labels(
    values: list[Any], name: str, where: str, label_ids: dict[str, int] | None
) -> torch.Tensor:
    """Class numbers from numbers, or from the names the model's ``label2id`` knows."""
    ids = []
    for value in values:
        if isinstance(value, str) and label_ids and value in label_ids:
            ids.append(label_ids[value])
            continue
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            known = f" or one of the model's labels {sorted(label_ids)}" if label_ids else ""
            raise DataError(
                f"{where}: the label {value!r} in {name} is not a class number{known}."
            ) from None
    return torch.tensor(ids)


def text_splits(raw: Any, task: str, where: str, seed: int = 0) -> dict[str, Texts]:
    """``{"train", "val", "calib"}`` -> (texts, targets) from a mapping of splits or one collection.

    One collection is split, seeded: a quarter for validation, a tenth for calibration, the rest
    for training. Embedding texts get zero targets (they are judged against a reference model).
    """

    def pair(value: Any, name: str) -> Texts:
        if isinstance(value, tuple | list) and len(value) == 2 and not isinstance(value[0], str):
            texts, labels = list(value[0]), torch.as_tensor(value[1])
            if len(texts) != len(labels):
                raise DataError(
                    f"{where}: text split {name!r} has {len(texts)} texts but {len(labels)} labels."
                )
            return texts, labels
        texts = list(value)
        if task != "embedding":
            raise DataError(
                f"{where}: task {task!r} needs labels; give split {name!r} as (texts, labels)."
            )
        return texts, torch.zeros(len(texts))

    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in ("train", "val", "calib")]
        if unknown or "val" not in raw:
            raise ConfigError(
                f"{where}: text splits must be named train, val and calib (val required); "
                f"got {sorted(raw)}."
            )
        return {k: pair(v, k) for k, v in raw.items() if v is not None}
    texts, targets = pair(raw, "text")
    return {
        k: ([texts[i] for i in idx], targets[idx] if len(idx) else targets[:0])
        for k, idx in split_indices(len(texts), seed).items()
        if idx
    }


def split_indices(count: int, seed: int = 0) -> dict[str, list[int]]:
    """One collection of ``count`` items split, seeded: ``SPLIT_FRACTIONS`` of them (at least
    one each) validate and calibrate, the rest train."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(count * SPLIT_FRACTIONS["val"]))
    n_calib = max(1, int(count * SPLIT_FRACTIONS["calib"]))
    return {
        "val": order[:n_val],
        "calib": order[n_val : n_val + n_calib],
        "train": order[n_val + n_calib :],
    }


def example_inputs(
    tokenizer: Any, texts: Sequence[str], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence of exactly ``length`` real tokens (texts joined until it is full)."""
    joined, count = "", 0
    for text in texts:
        if count >= length:
            break
        joined += (" " if joined else "") + text
        count += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not joined:
        raise DataError("text data has no texts to build example inputs from; give some.")
    while count < length:  # a corpus of short texts: repeat it to fill the sequence
        joined, count = f"{joined} {joined}", 2 * count
    ids = tokenizer(joined, truncation=True, max_length=length)["input_ids"]
    input_ids = torch.tensor([ids], dtype=torch.long)
    return input_ids, torch.ones_like(input_ids)


def median_length(data: Tokenized) -> int:
    lengths = sorted(len(ids) for ids in data.ids)
    return lengths[len(lengths) // 2] if lengths else 0


def check_input_names(model: nn.Module, names: Sequence[str], where: str) -> None:
    """Refuse input names that are not the model's forward arguments, in order."""
    from fulcrum.runtimes import forward_arguments

    params = forward_arguments(model)
    if params is None:
        return
    if list(params[: len(names)]) != list(names):
        raise ConfigError(
            f"{where}: inputs {list(names)} do not match the model's forward arguments "
            f"{params[: max(len(names), 3)]}; list them in the order forward() takes them."
        )
