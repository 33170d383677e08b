"""Shared fixtures: a private cache for trained baselines, and a tiny user workload on disk."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

USER_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def make_model(hidden=16):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


    def splits():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 4, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
        return {"train": (x[:40], y[:40]), "val": (x[40:], y[40:])}


    def empty():
        return {"val": (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))}


    def hits(y_true, outputs):
        return {"hits": float((outputs.argmax(1) == y_true).sum())}
    """
)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Baselines trained by tests go to a temporary cache, never the user's."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FULCRUM_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a user's model code (module name unique per test) and a TOML workload."""
    module = f"usercode_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(USER_CODE)
    (tmp_path / "workload.toml").write_text(
        f'task = "multiclass"\nmodel = "{module}:make_model"\ndata = "{module}:splits"\n'
        f'metric = "{module}:hits"\nnum_classes = 3\n'
    )
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    return tmp_path


def module_of(user_dir: Path) -> str:
    return next(p.stem for p in user_dir.glob("usercode_*.py"))
