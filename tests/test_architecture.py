"""The layout the architecture promises: small modules and functions, one owner per concept, data
that flows one way, and nothing unpickled outside the user's explicit ``--allow-pickle``."""

import ast
import re
from pathlib import Path

import pytest

import fulcrum

SRC = Path(fulcrum.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(("fulcrum", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(
        ".__init__"
    )


def imports(path: Path) -> set[str]:
    """The fulcrum modules ``path`` imports at run time (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fulcrum"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fulcrum"))
    return found


def test_no_module_is_over_600_lines_and_no_function_over_80():
    long_modules = [
        f"{p.relative_to(SRC)} ({n})"
        for p in MODULES
        if (n := len(p.read_text().splitlines())) > 600
    ]
    long_functions = [
        f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for p in MODULES
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long_modules and not long_functions, (long_modules, long_functions)
    assert not (SRC / "study.py").exists()  # the search is the package fulcrum.search


# each group may not import the modules listed against it: data flows one way
FORBIDDEN = {
    "fulcrum.frontier": ("fulcrum.",),  # pure functions over plain values
    "fulcrum.runtimes": (
        "fulcrum.techniques",
        "fulcrum.measuring",
        "fulcrum.search",
        "fulcrum.sweetspot",
        "fulcrum.report",
        "fulcrum.export",
        "fulcrum.cli",
    ),
    "fulcrum.techniques": (
        "fulcrum.compression",
        "fulcrum.measuring",
        "fulcrum.search",
        "fulcrum.sweetspot",
        "fulcrum.runfolder",
        "fulcrum.report",
        "fulcrum.export",
        "fulcrum.cli",
    ),
    "fulcrum.measuring": (
        "fulcrum.search",
        "fulcrum.sweetspot",
        "fulcrum.runfolder",
        "fulcrum.report",
        "fulcrum.export",
        "fulcrum.cli",
    ),
    "fulcrum.search": ("fulcrum.report", "fulcrum.export", "fulcrum.cli"),
    "fulcrum.sweetspot": ("fulcrum.search.", "fulcrum.report", "fulcrum.export", "fulcrum.cli"),
    "fulcrum.report": ("fulcrum.search.", "fulcrum.measuring", "fulcrum.export", "fulcrum.cli"),
    "fulcrum.export": ("fulcrum.search.", "fulcrum.report", "fulcrum.cli"),
}
ALLOWED = {
    "fulcrum.frontier": ("fulcrum.errors",),
    "fulcrum.sweetspot": ("fulcrum.search.settings",),
}


@pytest.mark.parametrize("group", sorted(FORBIDDEN))
def test_a_stage_never_imports_a_later_one(group):
    broken = []
    for path in MODULES:
        name = module_name(path)
        if name != group and not name.startswith(group + "."):
            continue
        for imported in imports(path):
            allowed = any(imported.startswith(a) for a in ALLOWED.get(group, ()))
            if not allowed and any(imported.startswith(f) for f in FORBIDDEN[group]):
                broken.append(f"{name} imports {imported}")
    assert not broken


def calls_of(name: str) -> set[str]:
    """The modules that call ``name`` (as ``name(`` or ``x.name(``)."""
    pattern = re.compile(rf"(?<![\w.])(\w+\.)?{name}\(")
    return {
        module_name(p)
        for p in MODULES
        if any(pattern.search(line) and "def " not in line for line in p.read_text().splitlines())
    }


def test_a_candidate_is_timed_and_its_budget_floor_computed_in_one_place_each():
    """``measuring.measure`` is the one place that times candidates against each other (the
    search's trials, probe, baseline and finalists, and compress, all call it); the budget's
    floor is ``frontier.Budget.floor``, built from the settings once per study."""
    assert calls_of("compare_tuned") == {"fulcrum.measuring"}
    floors = {module_name(p) for p in MODULES if re.search(r"max_drop\s*/\s*100", p.read_text())}
    assert floors == {"fulcrum.frontier"}


def test_no_technique_parameter_name_is_spelled_outside_its_technique():
    """The search composes the techniques' own dimensions: it names none of them."""
    from fulcrum.techniques import TECHNIQUES

    names = "|".join(sorted(TECHNIQUES))
    spelled = re.compile(rf"[\"']({names})\.\w+[\"']")
    outside = [
        f"{p.relative_to(SRC)}: {m.group(0)}"
        for p in MODULES
        if "techniques" not in p.parts
        for m in spelled.finditer(p.read_text())
    ]
    assert not outside


def test_nothing_is_unpickled_outside_the_users_allow_pickle_checkpoint_path():
    """A planted pickle in a run folder must never run code: the one place that may unpickle is
    the loader of a user's own checkpoint, behind ``--allow-pickle``."""
    risky = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|cloudpickle|dill\.load")
    found = {
        module_name(p)
        for p in MODULES
        if any(risky.search(line) for line in p.read_text().splitlines())
    }
    assert found <= {"fulcrum.workloads.checkpoint"}


def test_no_library_call_sets_a_process_wide_verbosity_it_cannot_restore():
    """ONNX Runtime's default logger severity has no getter, so it is never set; Optuna's and
    transformers' verbosity are set only inside a block that restores them."""
    for path in MODULES:
        text = path.read_text()
        assert "set_default_logger_severity" not in text, path
        for setter in ("optuna.logging.set_verbosity", "transformers.logging.set_verbosity"):
            for match in re.finditer(re.escape(setter) + r"\((?!verbosity\)|previous\))", text):
                before = text[: match.start()]
                assert "get_verbosity()" in before[-600:], f"{path}: {setter} without restore"
