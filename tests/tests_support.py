"""Helpers shared by test modules: a user workload on disk, and the environment of a
subprocess that runs the Fulcrum under test."""

import os
import sys
from pathlib import Path

from conftest import USER_CODE


def write_user_workload(folder: Path, name: str = "reportcode") -> Path:
    (folder / f"{name}.py").write_text(USER_CODE)
    toml = folder / "workload.toml"
    toml.write_text(f'task = "multiclass"\nmodel = "{name}:make_model"\ndata = "{name}:splits"\n')
    return toml


def fulcrum_env(*folders: Path, **variables: str) -> dict[str, str]:
    """This process's environment, with ``variables`` set, for a subprocess that runs
    ``python -m fulcrum``: its PYTHONPATH puts the tree under test first (not whatever Fulcrum
    is installed), then ``folders`` (a workload's code), then this process's ``sys.path``."""
    import fulcrum

    paths = [str(Path(fulcrum.__file__).parents[1]), *map(str, folders), *filter(None, sys.path)]
    return {**os.environ, **variables, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
