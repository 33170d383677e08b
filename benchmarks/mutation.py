"""Mutation scores per module, from the last `mutmut run` (`make mutation` runs both).

mutmut (3.x) mutates the modules listed in pyproject's ``[tool.mutmut] only_mutate`` one small
change at a time (an operator, a constant, a comparison, a returned value) and runs the tests
that reach each changed function; a mutant the tests fail on is killed. Reads the run's records
under ``mutants/`` and writes, per module, the mutants, killed, survived, timed out and not
reached, the score (killed and timed out over those tested) and the survivors' names (``mutmut
show NAME`` prints each change) to benchmarks/results/mutation.json.

    make mutation          # or: .venv/bin/mutmut run; .venv/bin/python benchmarks/mutation.py
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
STATUS |= {37: "caught by type check", None: "not checked"}


def main() -> None:
    modules = {}
    for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        status = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
        counts = Counter(status.values())
        tested = counts["killed"] + counts["timeout"] + counts["survived"] + counts["suspicious"]
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        modules[module] = {
            "mutants": len(codes),
            **{k: counts[k] for k in ("killed", "survived", "timeout", "no tests", "not checked")},
            "score": round((counts["killed"] + counts["timeout"]) / tested, 4) if tested else None,
            "survivors": sorted(n for n, s in status.items() if s == "survived"),
        }
        print(
            f"{module:<32} {len(codes):>5} mutants  {counts['killed']:>5} killed  "
            f"{counts['survived']:>4} survived  {counts['no tests']:>4} no tests  "
            f"score {modules[module]['score']}"
        )
    out = ROOT / "benchmarks" / "results" / "mutation.json"
    payload = {
        "tool": "mutmut",
        "date": time.strftime("%Y-%m-%d"),
        "config": "pyproject.toml [tool.mutmut]",
        # an interrupted run leaves mutants "not checked": its scores cover the tested ones
        "complete": all(m["not checked"] == 0 for m in modules.values()),
        "modules": modules,
    }
    out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
