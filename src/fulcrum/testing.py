"""Tiny models and the contract every technique must keep — a new technique is tested by registering it.

from fulcrum.testing import check_technique
check_technique(get("prune"))          # raises AssertionError naming the broken promise
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum.errors import ConfigError
from fulcrum.techniques import (
    ROLES,
    Candidate,
    Context,
    Scope,
    Technique,
    TechniqueConfig,
    config_from_dict,
)

# fast settings for techniques that train; anything else runs with its defaults
QUICK: dict[str, dict[str, Any]] = {"finetune": {"epochs": 1}, "distill": {"epochs": 1}}


def tiny_cnn(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    ).eval()


def tiny_mlp(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes)
    ).eval()


class TinyRecurrent(nn.Module):
    """A recurrent classifier of ``(batch, steps, features)`` sequences: a stack of recurrent
    layers (``kind``: ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) read at its last step by a Linear
    head. ``batch_first=False`` runs the layers time-major (the input is transposed for them)."""

    def __init__(
        self,
        kind: Callable[..., nn.RNNBase] = nn.LSTM,
        features: int = 192,
        hidden: int = 16,
        layers: int = 2,
        bidirectional: bool = True,
        batch_first: bool = True,
        num_classes: int = 4,
    ) -> None:
        super().__init__()
        self.rnn: nn.RNNBase = kind(
            features,
            hidden,
            num_layers=layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
        )
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        out, _ = self.rnn(x)
        return self.head(out[:, -1] if self.rnn.batch_first else out[-1])


def tiny_lstm(num_classes: int = 4) -> nn.Module:
    """A 2-layer bidirectional LSTM classifier of 8 steps of 192 features (``TinyRecurrent``):
    wide enough an input for ``lowrank`` to factorise."""
    torch.manual_seed(0)
    return TinyRecurrent(nn.LSTM, num_classes=num_classes).eval()


def tiny_data(
    shape: tuple[int, ...], num_classes: int = 4, n: int = 96, seed: int = 0
) -> TensorDataset:
    """Inputs whose class is readable from their mean pattern, so training has something to learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, *shape, generator=g) * 0.5
    x = x + (y.float() - num_classes / 2).view(-1, *([1] * len(shape))) * 0.5
    return TensorDataset(x, y)


def tiny_bert(num_classes: int = 4) -> nn.Module:
    """A 2-layer BERT classifier built from a ``transformers`` config (no weights downloaded),
    taking ``(input_ids, attention_mask)``."""
    from fulcrum.workloads.text import transformers_quietly  # (an optional extra)

    with transformers_quietly() as transformers:
        config = transformers.BertConfig(
            vocab_size=TOKENS,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
        )
        config.num_labels = num_classes
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(config).eval()


TOKENS, SEQUENCE = 60, 12


class TokenData(torch.utils.data.Dataset):
    """``((input_ids, attention_mask), label)`` samples: the label is which of four marker tokens
    is most frequent; rows have different lengths (padding masked out)."""

    def __init__(self, n: int = 96, num_classes: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(num_classes + 1, TOKENS, (n, SEQUENCE), generator=g)
        self.labels = torch.arange(n) % num_classes
        self.mask = torch.ones(n, SEQUENCE, dtype=torch.long)
        for i in range(n):
            self.ids[i, torch.randperm(SEQUENCE, generator=g)[:4]] = int(self.labels[i]) + 1
            cut = int(torch.randint(8, SEQUENCE + 1, (1,), generator=g))
            self.mask[i, cut:] = 0
            self.ids[i, cut:] = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.ids[i], self.mask[i]), self.labels[i]


def _dense_data(shape: tuple[int, ...]) -> Callable[[int, int], torch.utils.data.Dataset]:
    return lambda n, seed: tiny_data(shape, n=n, seed=seed)


# kind -> (model factory, dataset factory (n, seed))
TINY: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], torch.utils.data.Dataset]]] = {
    "cnn": (tiny_cnn, _dense_data((3, 8, 8))),
    "mlp": (tiny_mlp, _dense_data((16,))),
    "bert": (tiny_bert, lambda n, seed: TokenData(n=n, seed=seed)),
    "lstm": (tiny_lstm, _dense_data((8, 192))),
}


def _inputs(dataset: torch.utils.data.Dataset, count: int) -> tuple[torch.Tensor, ...]:
    """The model inputs of the dataset's first ``count`` samples, batched."""
    x = next(iter(DataLoader(dataset, batch_size=count)))[0]
    return tuple(x) if isinstance(x, list | tuple) else (x,)


def tiny_context(kind: str, model: nn.Module) -> Context:
    data = TINY[kind][1](96, 0)
    train = DataLoader(
        data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(TINY[kind][1](32, 1), batch_size=32)
    return Context(
        task="multiclass",
        example_inputs=_inputs(data, 1),
        train=train,
        val=val,
        calib=DataLoader(data, batch_size=16),
        teacher=model,
        num_classes=4,
        threads=1,
    )


def run_deployed(candidate: Candidate, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    from fulcrum.runtimes import OnnxModel, output_tensor

    if candidate.onnx is not None:
        return OnnxModel(candidate.onnx, threads=1)(*inputs)
    with torch.no_grad():
        return output_tensor(candidate.require_float("run")(*inputs))


def _size(candidate: Candidate, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    from fulcrum.compression import onnx_bytes
    from fulcrum.measure import parameter_counts, torch_compute

    model = candidate.require_float("measure") if candidate.onnx is None else candidate.model
    assert model is not None
    total, _, nonzero = parameter_counts(model)
    return {
        "params": total,
        "macs": torch_compute(model, inputs)[0],
        "nonzero": nonzero,
        "artifact": len(onnx_bytes(candidate, inputs)),
    }


class EdgeTrial:
    """A stand-in for an Optuna trial that draws the lowest (or highest) value of every range."""

    def __init__(self, pick: str = "low") -> None:
        self.high = pick == "high"

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return high if self.high else low

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return high if self.high else low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return list(choices)[-1 if self.high else 0]


def check_technique(
    technique: Technique, kind: str = "cnn", config: TechniqueConfig | None = None
) -> Candidate:
    """Apply ``technique`` to a tiny model and check every promise of the technique contract."""
    from fulcrum.compression import parse_recipe

    factory, dataset = TINY[kind]
    model = factory()
    ctx = tiny_context(kind, model)
    config = config or technique.config(**QUICK.get(technique.name, {}))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _inputs(dataset(5, 3), 5)
    reference = run_deployed(Candidate(model=model), batch)
    candidate = technique.apply(config, Candidate(model=model), ctx)

    name = technique.name
    # a new model: a new PyTorch module, or (quantization) a new ONNX graph to deploy
    assert candidate.model is not model or candidate.onnx is not None, (
        f"{name}: apply returned its input model instead of a new one"
    )
    after_state = model.state_dict()
    assert before_state.keys() == after_state.keys() and all(
        torch.equal(before_state[k], after_state[k]) for k in before_state
    ), f"{name}: apply changed the model it was given"
    out = run_deployed(candidate, batch)
    assert out.shape == reference.shape, (
        f"{name}: output shape {list(out.shape)} != {list(reference.shape)}"
    )
    assert torch.isfinite(out).all(), f"{name}: the compressed model produces NaN or inf"
    assert candidate.steps and candidate.steps[-1].config["type"] == name, (
        f"{name}: no step recorded"
    )

    if technique.reduces:
        base, now = (
            _size(Candidate(model=model), ctx.example_inputs),
            _size(candidate, ctx.example_inputs),
        )
        keys = ("params", "macs") if technique.reduces == "params" else (technique.reduces,)
        for key in keys:
            assert now[key] < base[key], (
                f"{name}: promised to reduce {key}, got {now[key]} vs {base[key]}"
            )

    assert config_from_dict(config.to_dict()) == config, (
        f"{name}: config does not round-trip to_dict"
    )
    for pick in ("low", "high"):
        drawn = technique.space(EdgeTrial(pick))
        assert isinstance(drawn, technique.config), f"{name}: space() returned {drawn!r}"
        assert parse_recipe(str(drawn)) == (drawn,), f"{name}: space() config is not a recipe"
    assert parse_recipe(str(config)) == (config,), (
        f"{name}: config does not round-trip its recipe text"
    )
    _check_search(technique)
    if technique.invalid:
        try:
            technique.config(**technique.invalid)
        except ConfigError as exc:
            assert "\n" not in str(exc), f"{name}: error is not one line"
        else:
            raise AssertionError(f"{name}: accepted invalid parameters {technique.invalid}")
    return candidate


def _check_search(technique: Technique) -> None:
    """A technique a search draws: its draws are configs of its own class, as recipe text, in
    every scope it applies to, and its warm starts name only parameters it draws."""
    if technique.search is None:
        return
    name = technique.name
    assert technique.search.role in ROLES, f"{name}: unknown role {technique.search.role!r}"
    for transformer in (False, True):
        scope = Scope(task="multiclass", transformer=transformer, fallback=("0",))
        if not technique.search.applies(scope):
            continue
        for pick in ("low", "high"):
            drawn = technique.search.draw(EdgeTrial(pick), scope)
            assert isinstance(drawn, technique.config), f"{name}: draw() returned {drawn!r}"
        for start in technique.search.warm_starts(scope):
            for owner, params in start.params.items():
                assert all(k.startswith(f"{owner}.") for k in params), (
                    f"{name}: a warm start gives {owner} parameters not named after it: {params}"
                )


def contract_cases() -> list[tuple[str, str]]:
    """Every registered technique with each tiny model kind it is checked on: what the contract
    suite runs (a technique is tested by registering it)."""
    from fulcrum.techniques import TECHNIQUES

    return [(name, kind) for name in sorted(TECHNIQUES) for kind in TECHNIQUES[name].contract_kinds]
