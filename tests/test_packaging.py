"""Fulcrum ships: the wheel builds from this tree, installs, carries its license and report
template, and runs from where it was installed (not from this checkout)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fulcrum._version import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this tree, installed into a folder of its own (its dependencies are
    this environment's)."""
    where = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(where), str(ROOT)]
    subprocess.run(build, check=True, timeout=300)
    wheel = next(where.glob("fulcrum-*.whl"))
    assert wheel.name.startswith(f"fulcrum-{__version__}-")
    target = where / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def _run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the installed copy first: PYTHONPATH comes before this checkout's editable install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(cwd)])}
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_installs_and_runs_from_where_it_was_installed(installed, tmp_path):
    done = _run(installed, tmp_path, "-c", "import fulcrum; print(fulcrum.__file__)")
    assert done.returncode == 0 and done.stdout.strip().startswith(str(installed))
    assert (installed / "fulcrum" / "report" / "template.html.j2").is_file()
    licenses = list(installed.glob("fulcrum-*.dist-info/licenses/LICENSE"))
    assert licenses and "Apache License" in licenses[0].read_text()
    version = _run(installed, tmp_path, "-m", "fulcrum", "--version")
    assert version.stdout.strip() == f"fulcrum {__version__}"  # no checkout: no commit


def test_the_installed_wheel_compresses_and_reports_a_users_model(installed, tmp_path):
    from tests_support import write_user_workload

    toml = write_user_workload(tmp_path)
    out = tmp_path / "run"
    args = ("-m", "fulcrum", "compress", str(toml), "--recipe", "quantize", "--out", str(out))
    done = _run(installed, tmp_path, *args, "--seconds", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "report.html").is_file() and (out / "results.json").is_file()


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo(installed, tmp_path):
    done = _run(installed, tmp_path, "-m", "fulcrum", "demo", "--trials", "2", "--out", "d")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "d" / "report.html").is_file()
