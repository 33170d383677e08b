"""Helpers shared by test modules that need a user workload on disk."""

from pathlib import Path

from conftest import USER_CODE


def write_user_workload(folder: Path, name: str = "reportcode") -> Path:
    (folder / f"{name}.py").write_text(USER_CODE)
    toml = folder / "workload.toml"
    toml.write_text(f'task = "multiclass"\nmodel = "{name}:make_model"\ndata = "{name}:splits"\n')
    return toml
