"""What a shared Optuna storage costs per trial, with 1 to 8 local workers, on SQLite and PostgreSQL.

Each worker is a process that opens the storage the way a search does (``fulcrum.search.storage.
storage_for``: heartbeats, retry of stale trials) and runs ``study.optimize`` on a trivial
objective (one float drawn, no work) until the study has the requested trials. The time from
the first worker's first trial to the last worker's end (process start-up and imports left out)
is then the storage's own cost: asking for a trial, telling its result, the heartbeat thread's
start and stop, and the sampler reading the trials so far. PostgreSQL runs on loopback (a
throwaway server from Debian's package, started as in the tests). Prints a table and writes JSON
to benchmarks/results/storage_scale.json.

    .venv/bin/python benchmarks/storage_scale.py [--trials 200] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def worker(url: str, name: str, trials: int, sampler: str, times: str) -> None:
    import optuna

    from fulcrum.search.storage import storage_for

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = storage_for(url)
    pick = {
        "random": optuna.samplers.RandomSampler,
        "tpe": optuna.samplers.TPESampler,
    }[sampler]()
    study = optuna.load_study(study_name=name, storage=storage, sampler=pick)
    start = time.time()  # after the imports and the connection: the loop alone is timed
    study.optimize(
        lambda t: t.suggest_float("x", -1, 1) ** 2,
        callbacks=[optuna.study.MaxTrialsCallback(trials)],
    )
    with open(times, "a") as out:
        out.write(f"{start} {time.time()}\n")


def measure(url: str, workers: int, trials: int, sampler: str) -> dict[str, Any]:
    import optuna

    from fulcrum.search.storage import storage_for

    name = f"scale-{workers}-{sampler}"
    optuna.create_study(study_name=name, storage=storage_for(url))
    context = multiprocessing.get_context("spawn")
    times = Path(tempfile.mkdtemp()) / "times"
    procs = [
        context.Process(target=worker, args=(url, name, trials, sampler, str(times)))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    spans = [tuple(map(float, line.split())) for line in times.read_text().splitlines()]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    done = len(optuna.load_study(study_name=name, storage=storage_for(url)).trials)
    return {
        "workers": workers,
        "sampler": sampler,
        "trials": done,
        "wall_seconds": round(wall, 2),
        "trials_per_second": round(done / wall, 1),
        "seconds_per_trial_per_worker": round(wall * workers / done, 4),
    }


def main() -> None:
    from fulcrum.measure import environment
    from postgres_server import Unavailable, new_database, postgres_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in counts:
            url = f"sqlite:///{tmp}/scale-{w}.db"
            rows.append({"storage": "sqlite", **measure(url, w, args.trials, args.sampler)})
            print(rows[-1], flush=True)
    try:
        with postgres_server() as admin:
            for w in counts:
                url = new_database(admin, f"scale{w}")
                rows.append({"storage": "postgresql", **measure(url, w, args.trials, args.sampler)})
                print(rows[-1], flush=True)
    except Unavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
    payload = {
        "benchmark": "storage_scale",
        "rows": rows,
        "environment": environment(1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "storage_scale.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
