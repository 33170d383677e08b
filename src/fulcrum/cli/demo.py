"""``fulcrum demo``: the embedded default run on the ``digits`` workload.

Until the search exists it profiles and evaluates the digits baseline and writes both as JSON
into a run folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fulcrum.cli.common import write_json
from fulcrum.cli.evaluate import evaluate_workload


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="the embedded default: profile and evaluate the digits workload"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/digits-<time>)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum import measure, metrics, workloads

    out = args.out or Path("runs") / time.strftime("digits-%Y%m%d-%H%M%S")
    workload = workloads.load("digits")
    result = measure.profile(workload.model, workload.example_inputs)
    measure.render(result, max_rows=20)
    evaluation = evaluate_workload(workload)
    print(f"\n{workload.name}: {workload.task}, {evaluation.n_samples} validation samples")
    metrics.render(evaluation)
    write_json(out / "profile.json", {"workload": workload.name, "profile": result.to_dict()})
    write_json(
        out / "evaluation.json", {"workload": workload.name, "evaluation": evaluation.to_dict()}
    )
    print(f"\nwrote {out}/profile.json and {out}/evaluation.json")
    return 0
