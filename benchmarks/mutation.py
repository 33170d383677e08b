"""Mutation scores per module, from the last `mutmut run` (`make mutation` runs both).

mutmut (3.x) mutates the modules listed in pyproject's ``[tool.mutmut] only_mutate`` one small
change at a time (an operator, a constant, a comparison, a returned value) and runs the tests
that reach each changed function; a mutant the tests fail on is killed. Reads the run's records
under ``mutants/`` and writes, per module, the mutants, killed, survived, timed out and not
reached, the score (killed and timed out over those tested), and every survivor with its change
and, where the change cannot alter any result, why (``EQUIVALENT``; the score without those is
``score_without_equivalent``), or why it is left alive though it could (``ACCEPTED``). The
functions no selected test reaches are listed by name.

    make mutation          # or: .venv/bin/mutmut run; .venv/bin/python benchmarks/mutation.py
    .venv/bin/python benchmarks/mutation.py --before OLD.json   # keep OLD's scores beside

Without ``--before``, the "before" of the result it replaces is kept.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
STATUS |= {37: "caught by type check", None: "not checked"}

# (the original line, the mutated line) -> why no input can tell them apart; each pattern is
# matched against the whole changed line, so that it names one kind of change exactly
EQUIVALENT: list[tuple[str, str, str]] = [
    (
        r".*zip\(.*strict=True\).*",
        r".*zip\(.*(strict=None|strict=False|, )\).*",
        "zip over sequences of equal length by construction: strict=True only guards against "
        "a bug elsewhere",
    ),
    (
        r".*astype\(np\.float64\).*",
        r".*astype\(None\).*",
        "numpy's default dtype is float64",
    ),
    (
        r".*reshape\((len\(x\), )?-1\).*",
        r".*reshape\((len\(x\), )?-2\).*",
        "numpy reads any negative size as 'the rest'",
    ),
    (r'.*"biuf".*', r'.*"XXbiufXX".*', "a one-letter dtype kind is in both strings or neither"),
    (
        r".*np\.asarray\(rows, dtype=np\.float64\)\.reshape\(-1, 5\):",
        r".*np\.asarray\(rows(, dtype=None|, )\)\.reshape\(-1, 5\):",
        "every value read from the rows goes through float() or int() next",
    ),
    (
        r".*np\.asarray\(rows, dtype=np\.float64\)\.reshape\(-1, 5\):",
        r".*np\.asarray\(rows, dtype=np\.float64\)\.reshape\(-2, 5\):",
        "numpy reads any negative size as 'the rest'",
    ),
    (
        r".*classes = num_classes or 1 \+ max\(\[0, \*\(a\[\"category_id\"\] - 1 for a in truth\)\]\)",
        r".*classes = num_classes or (2 \+ max\(\[0, |1 \+ max\(\[1, )\*\(a\[\"category_id\"\] - 1 for a "
        r"in truth\)\]\)|.*classes = num_classes or 1 \+ max\(\[0, \*\(a\[\"category_id\"\] \+ 1 "
        r"for a in truth\)\]\)",
        "more categories than the labels reach: COCO leaves categories without ground truth out "
        "of its means",
    ),
    (
        r".*stats = np\.asarray\(evaluator\.stats, dtype=np\.float64\)",
        r".*stats = np\.asarray\(evaluator\.stats, (dtype=None|)\)",
        "the evaluator's stats are float64 already",
    ),
    (
        r".*np\.fill_diagonal\(similarity, -np\.inf\)",
        r".*np\.fill_diagonal\(similarity, None\)",
        "None fills NaN, which numpy's partition puts last as it does -(-inf): a row is never "
        "its own neighbour either way",
    ),
    (
        r".*return np\.argpartition\(-similarity, k - 1, axis=1\)\[:, :k\]",
        r".*return np\.argpartition\(-similarity, k - 1, \)\[:, :k\]",
        "argpartition's default axis, -1, is axis 1 of the 2-D similarity",
    ),
    (
        r"id=len\(truth\) \+ 1,",
        r"id=len\(truth\) \+ 2,",
        "annotation ids only need to be unique",
    ),
    (
        r"\*\(image\[k\] for k in PREDICTION_KEYS\), strict=True( \| \):)?",
        r"\*\(image\[k\] for k in PREDICTION_KEYS\), (strict=None|strict=False|\):)",
        "check_predictions has made boxes, scores and labels equally long: strict=True only "
        "guards against a bug elsewhere",
    ),
    (
        r"iscrowd=0,( \| \))?",
        r"(iscrowdXX=0,|\)|)",
        "COCO evaluation reads a missing iscrowd as 0 (the library's own records, compared in "
        "the tests, give the same mAP)",
    ),
    (
        r".*proba = 1\.0 / \(1\.0 \+ np\.exp\(-s\.reshape\(-1\)\.astype\(np\.float64\)\)\)",
        r".*proba = 1\.0 / \(1\.0 \+ np\.exp\(-s\.reshape\(None\)\.astype\(np\.float64\)\)\)",
        "scikit-learn reads an (n, 1) column of scores as the (n,) vector",
    ),
    (
        r"y = y\.astype\(np\.int64\)",
        r"y = y\.astype\(None\)",
        "whole-number float labels compare equal to the integers in every scikit-learn metric used",
    ),
    (
        r'.*return tuple\(\(0, int\(p\), ""\) if i % 2 else \(1, 0, p\).*',
        r'.*return tuple\(\((0, int\(p\), "XXXX"\) if i % 2 else \(1, 0, p\)|'
        r'0, int\(p\), ""\) if i % 2 else \((2, 0, p|1, 1, p)\)).*',
        "a constant in every tuple of one kind leaves their order as it was",
    ),
    (
        r".*if high > low else 0\.0",
        r".*if high > low else 1\.0",
        "a constant objective adds the same term to every point's distance to utopia",
    ),
    (
        r'.*average="binary", pos_label=1, zero_division=0',
        r'.*average="binary", zero_division=0',
        "scikit-learn's default pos_label is 1",
    ),
    (
        r'.*_auc\("roc_auc", y, \[0, 1\].*',
        r'.*_auc\("roc_auc", y, \[1, 1\].*',
        "binary labels are 0 and 1, so two present classes are both: the absent-class check "
        "cannot fire after the single-class one",
    ),
    (
        r'.*roc_auc_score\(y, proba, multi_class="ovr", labels=labels\).*',
        r'.*roc_auc_score\(y, proba, multi_class="ovr", (labels=None|)\).*',
        "reached only when every class is present (absent ones return None first), where "
        "scikit-learn infers the same labels",
    ),
    (
        r".*pred = \(proba >= threshold\)\.astype\(np\.int64\)",
        r".*pred = \(proba >= threshold\)\.astype\(None\)",
        "0.0/1.0 predictions compare equal to 0/1 labels in every scikit-learn metric used",
    ),
    (
        r".*ratio\*\*exponent if ratio > 1 else 1\.0.*",
        r".*ratio\*\*exponent if ratio >= 1 else 1\.0.*",
        "at ratio 1, ratio**exponent is 1",
    ),
    (
        r".*self\.violations\(point\)\.items\(\)\), 0\.0\)",
        r".*self\.violations\(point\)\.items\(\)\), \)",
        "sum's start 0 equals 0.0",
    ),
    (
        r".*return 0\.0 if abs\(over\) <= _ROUNDING \* max\(1\.0, abs\(scale\)\) else over",
        r".*return 0\.0 if abs\(over\) (< _ROUNDING \* max\(1\.0|<= _ROUNDING \* max\(2\.0), "
        r"abs\(scale\)\) else over",
        "a difference of 1e-9 to 2e-9 of the bound, below the 6 decimals Optuna's constraints "
        "are rounded to",
    ),
]


# mutants that change behaviour no test here can provoke: name -> why they are left alive
ACCEPTED = {
    "fulcrum.metrics.x__auc__mutmut_11": "turns every warning inside roc_auc_score into an error, "
    "not only UndefinedMetricWarning; scikit-learn raises no other warning on inputs _check admits",
    "fulcrum.metrics.x__auc__mutmut_13": "as mutant 11",
    "fulcrum.metrics.x__neighbour_overlap__mutmut_30": "partitions around the (k-1)-th nearest "
    "instead of the k-th, so the k-th is no longer guaranteed; numpy's introselect put it in "
    "place in every test tried (up to 300 rows), so no test here sees the difference",
    "fulcrum.timing.x_compare_tuned__mutmut_53": "differs only for a thread count exactly 5% "
    "faster (its median equal to 0.95 x the other's in floating point)",
}


def functions(path: Path) -> dict[str, list[str]]:
    """Each function's source lines in a mutmut-generated module, by name."""
    lines = path.read_text().splitlines()
    return {
        node.name: lines[node.lineno - 1 : node.end_lineno]
        for node in ast.walk(ast.parse("\n".join(lines)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def change(name: str, sources: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The original and the mutated lines of mutant ``name``."""
    mutant = name.rsplit(".", 1)[-1]
    original = sources.get(mutant.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
    diff = difflib.unified_diff(original[1:], sources.get(mutant, [])[1:], lineterm="", n=0)
    lines = [d for d in diff if d[:1] in "+-" and not d.startswith(("+++", "---"))]
    return [d[1:].strip() for d in lines if d[0] == "-"], [
        d[1:].strip() for d in lines if d[0] == "+"
    ]


def why_equivalent(old: list[str], new: list[str]) -> str | None:
    before_text, after_text = " | ".join(old), " | ".join(new)
    for before, after, reason in EQUIVALENT:
        if re.fullmatch(before, before_text) and re.fullmatch(after, after_text):
            return reason
    return None


def module_report(meta: Path) -> dict[str, Any]:
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    sources = functions(meta.with_suffix(""))
    status = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
    counts = Counter(status.values())
    tested = counts["killed"] + counts["timeout"] + counts["survived"] + counts["suspicious"]
    survivors, equivalent = [], 0
    for name in sorted(n for n, s in status.items() if s == "survived"):
        old, new = change(name, sources)
        reason = why_equivalent(old, new)
        equivalent += reason is not None
        survivors.append(
            {
                "mutant": name,
                "change": " | ".join([*old, "->", *new]),
                "equivalent": reason,
                **({"accepted": ACCEPTED[name]} if name in ACCEPTED else {}),
            }
        )
    killed = counts["killed"] + counts["timeout"]
    unreached = Counter(
        n.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0].lstrip("x").lstrip("_")
        for n, s in status.items()
        if s == "no tests"
    )
    return {
        "mutants": len(codes),
        **{k: counts[k] for k in ("killed", "survived", "timeout", "no tests", "not checked")},
        "equivalent": equivalent,
        "accepted": sum("accepted" in x for x in survivors),
        "unexplained": sum(x["equivalent"] is None and "accepted" not in x for x in survivors),
        "score": round(killed / tested, 4) if tested else None,
        "score_without_equivalent": round(killed / (tested - equivalent), 4)
        if tested > equivalent
        else None,
        "unreached_functions": dict(sorted(unreached.items())),
        "survivors": survivors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an earlier result to keep beside this one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mutation.json")
    args = parser.parse_args()
    before = json.loads(args.before.read_text()) if args.before else None
    if before is None and args.out.is_file():  # the earlier result's own "before" carries on
        before = json.loads(args.out.read_text()).get("before")
    if before is not None:  # its counts and scores, not its survivors
        before = before.get("before", before)
        before["modules"] = {
            module: {k: v for k, v in m.items() if k not in ("survivors", "unreached_functions")}
            for module, m in before["modules"].items()
        }
    modules = {}
    for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta")):
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        modules[module] = m = module_report(meta)
        print(
            f"{module:<28} {m['mutants']:>5} mutants  {m['killed']:>5} killed  "
            f"{m['survived']:>4} survived ({m['equivalent']} equivalent, {m['accepted']} "
            f"accepted, {m['unexplained']} unexplained)  "
            f"{m['no tests']:>4} unreached  score {m['score']} "
            f"(without equivalent {m['score_without_equivalent']})"
        )
    payload = {
        "tool": "mutmut",
        "date": time.strftime("%Y-%m-%d"),
        "config": "pyproject.toml [tool.mutmut]",
        # an interrupted run leaves mutants "not checked": its scores cover the tested ones
        "complete": all(m["not checked"] == 0 for m in modules.values()),
        "modules": modules,
        **({"before": before} if before else {}),
    }
    args.out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
