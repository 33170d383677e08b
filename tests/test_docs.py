"""What the README shows runs: its Python example, on a tiny workload instead of `digits`."""

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(search_dir, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1)
    assert 'load_workload("digits")' in code and "trials=20" in code
    code = code.replace('"digits"', repr(str(search_dir / "roomy.toml")))
    code = code.replace("trials=20", "trials=2").replace("max_drop=1.0", "max_drop=100.0")
    monkeypatch.chdir(search_dir)
    import fulcrum.export
    import fulcrum.search  # the API's names stay callable once their modules are loaded

    assert callable(fulcrum.export) and callable(fulcrum.search)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (search_dir / "runs" / "d" / "export" / "safetensors" / "SHA256SUMS.json").is_file()
    assert namespace["model"] is not None


@pytest.mark.parametrize("page", sorted((README.parent / "docs").glob("*.md")))
def test_no_docs_page_names_modules_that_are_gone(page):
    text = page.read_text()
    for gone in ("study.py", "runtimes.py`"):
        assert gone not in text, f"{page.name} still names {gone}"


def test_the_readme_command_lines_parse():
    from fulcrum.cli import build_parser

    lines = [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
        for line in block.splitlines()
        if line.strip().startswith("fulcrum ")
    ]
    assert len(lines) >= 2
    for line in lines:
        argv = shlex.split(line.split("  #")[0])[1:]
        assert build_parser().parse_args(argv).command == argv[0]
