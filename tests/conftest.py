"""Shared fixtures: a private cache for trained baselines, a tiny user workload on disk, and
the search tests' workloads."""

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


SLOW_DATA = textwrap.dedent(
    '''
    import time
    import torch
    from torch import nn
    from torch.utils.data import Dataset


    class Slow(Dataset):
        """Tiny, but slow enough per item that a trial lasts a few seconds."""

        def __init__(self, n, seed, delay):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 6, generator=g)
            self.y = (self.x[:, 0] > 0).long()
            self.delay = delay

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            time.sleep(self.delay)
            return self.x[i], self.y[i]


    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


    def fast():
        return {"train": Slow(48, 0, 0.0), "val": Slow(24, 1, 0.0)}


    def slow():
        return {"train": Slow(48, 0, 0.01), "val": Slow(24, 1, 0.01)}


    def roomy():  # enough training data for a holdout (10%, at least 8 samples)
        return {"train": Slow(160, 0, 0.0), "val": Slow(24, 1, 0.0)}
    '''
)


@pytest.fixture
def search_dir(tmp_path: Path) -> Path:
    """Workloads of a tiny MLP on slow, fast or roomier data, for search tests."""
    (tmp_path / "slowcode.py").write_text(SLOW_DATA)
    for name in ("fast", "slow", "roomy"):
        (tmp_path / f"{name}.toml").write_text(
            f'task = "multiclass"\nmodel = "slowcode:make_model"\ndata = "slowcode:{name}"\n'
        )
    return tmp_path


@pytest.fixture(autouse=True)
def results_follow_the_schema(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Every results.json a test writes validates against the published JSON Schema (but those
    a test damages on purpose, marked ``damages_results``)."""
    yield
    if request.node.get_closest_marker("damages_results"):
        return
    import json

    import jsonschema

    from fulcrum.runfolder import SCHEMA

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for path in tmp_path.rglob("results.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a test that damages the file on purpose
        if isinstance(data, dict) and data.get("format") == "fulcrum-run":
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
            assert not errors, f"{path}: {errors[0].message} at {list(errors[0].path)}"
