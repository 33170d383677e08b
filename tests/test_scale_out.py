"""Scale-out: machines sharing one study on PostgreSQL, the exact trial count, the dashboard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fulcrum.cli import main
from postgres_server import Unavailable, new_database, postgres_server
from test_search import search_args
from tests_support import fulcrum_env


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on loopback for this module's tests (skipped, saying why, where none
    can be started)."""
    try:
        with postgres_server() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


def all_trials(url: str, name: str) -> list[Any]:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def finished_trials(url: str, name: str) -> list[Any]:
    return [t for t in all_trials(url, name) if t.state.name in ("COMPLETE", "PRUNED")]


def processes_of(pid: int) -> list[int]:
    """The search ``pid`` and its worker processes (Linux /proc)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                worker = b"spawn_main" in (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(ppid) == pid and state != "Z" and worker:
                found.append(int(entry.name))
    return found


def alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == pgid and fields[0] != "Z":
                return True
    return False


# a machine's search ended: with a sweet spot (0), or with none of the candidates it measured
# itself within the budget (1: without an artifact store it picks among its own files only)
DONE = (0, 1)


def test_two_machines_share_one_postgresql_study_while_their_workers_are_killed(
    postgres, search_dir
):
    """Two "machines" (separate processes and run folders, two workers each) on one study
    through one postgresql:// URL; a process is SIGKILLed three times, mid-search, and its
    machine's command started again. Exactly the requested trials finish, none is lost, and no
    recipe is measured twice."""
    url = new_database(postgres, "machines")
    trials, rng = 10, random.Random(7)
    env = fulcrum_env(search_dir)

    def start(machine: str) -> subprocess.Popen[bytes]:
        args = search_args(search_dir, "fast", search_dir / machine, "--trials", str(trials))
        args += ["--workers", "2", "--storage", url, "--study", "shared"]
        with open(search_dir / f"{machine}.log", "ab") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "fulcrum", "search", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a machine: a process group of its own
            )

    def log(machine: str) -> str:
        return (search_dir / f"{machine}.log").read_text()[-1500:]

    machines = {"a": start("a")}
    groups = [machines["a"].pid]
    kept: set[int] = set()  # finished before some kill: must stay finished
    kills: list[str] = []
    next_kill = 0.0
    deadline = time.time() + 420
    while time.time() < deadline:
        trials_now = all_trials(url, "shared")
        done = {t.number for t in trials_now if t.state.is_finished() and t.state.name != "FAIL"}
        if "b" not in machines and trials_now:  # a new machine joins the running study
            machines["b"] = start("b")
            groups.append(machines["b"].pid)
        # the kills come after 1, 2 and 3 finished trials (a moment later, at random), so that
        # all three land before the end however fast the trials run
        if len(kills) < 3 and not next_kill and len(done) >= (1, 2, 3)[len(kills)]:
            next_kill = time.time() + rng.uniform(0.2, 1.5)
        if len(kills) < 3 and next_kill and time.time() > next_kill and len(done) < trials - 1:
            name = rng.choice(sorted(machines))
            victims = processes_of(machines[name].pid)
            if machines[name].poll() is None and victims:  # the search, or its worker once up
                kept |= done
                victim = rng.choice(victims)
                os.kill(victim, signal.SIGKILL)
                kills.append(f"{name}:{'search' if victim == machines[name].pid else 'worker'}")
                next_kill = 0.0
        for name, proc in list(machines.items()):
            if proc.poll() is not None and proc.returncode not in DONE:  # killed: start again
                assert proc.returncode == -signal.SIGKILL, (
                    f"{name} ended {proc.returncode}: {log(name)}"
                )
                machines[name] = start(name)
                groups.append(machines[name].pid)
        if len(machines) == 2 and all(p.poll() in DONE for p in machines.values()):
            break
        time.sleep(0.3)
    assert all(p.poll() in DONE for p in machines.values()), f"{kills}: {log('a')} {log('b')}"
    assert len(kills) == 3, kills
    while any(alive(g) for g in groups):  # workers of killed searches end too
        assert time.time() < deadline + 30, "a worker outlived its search"
        time.sleep(0.3)

    finished = finished_trials(url, "shared")
    assert len(finished) == trials  # exactly: not one more, across four processes
    assert kept <= {t.number for t in finished}  # nothing finished was lost
    measured = [t.user_attrs["recipe"] for t in finished if "same_as" not in t.user_attrs]
    assert len(measured) == len(set(measured))  # no recipe measured twice
    for machine in ("a", "b"):
        result = json.loads((search_dir / machine / "results.json").read_text())
        assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in result["trials"]) == trials
        assert list((search_dir / machine / "trials").iterdir())  # each machine measured some


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # (trials asked by hand here)
def test_the_quota_lets_a_trial_run_only_while_earlier_ones_leave_room(tmp_path):
    """The exact count's rule, step by step: 2 finished of 4, then three trials begin at once."""
    import optuna

    from fulcrum.search.loop import Quota, Surplus
    from fulcrum.search.settings import SearchSettings
    from fulcrum.search.storage import open_study, storage_for

    storage = storage_for(f"sqlite:///{tmp_path / 'study.db'}")
    study, _ = open_study(SearchSettings(), storage, "quota")
    for _ in range(2):
        study.tell(study.ask(), [1.0, 1.0, 1.0])
    quota = Quota(study, storage, trials=4)
    first, second, third = study.ask(), study.ask(), study.ask()
    quota.begin(first)  # 2 finished + 0 earlier unfinished < 4
    quota.begin(second)  # 2 + 1 < 4
    with pytest.raises(Surplus):
        quota.begin(third)  # 2 + 2: the count is full
    assert "surplus" in study.trials[third.number].user_attrs
    study.tell(third, state=optuna.trial.TrialState.FAIL)  # (what Optuna's loop does)
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # a place frees up
    fourth = study.ask()
    quota.begin(fourth)  # 2 + 1 (second) < 4: it takes first's place


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # (trials asked by hand here)
def test_two_processes_never_take_the_same_queued_trial_from_one_sqlite_file(tmp_path, monkeypatch):
    """Queued trials (warm starts, retries) are taken by reading WAITING, then writing RUNNING.
    On SQLite that read sat outside the write's lock, so two processes could both take one trial
    and one later failed with Optuna's "Cannot tell a COMPLETE trial". The gap is widened here
    (each storage its own connection, as each process has), so the race shows every time."""
    import threading

    from optuna.storages._rdb.storage import RDBStorage

    from fulcrum.search.settings import SearchSettings
    from fulcrum.search.storage import open_study, storage_for

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _ = open_study(SearchSettings(), storage_for(url), "queue")
    for number in range(6):
        study.enqueue_trial({"n": number})
    checked = RDBStorage.check_trial_is_updatable

    def slowly(self: Any, *args: Any) -> None:
        time.sleep(0.05)  # between reading a trial's state and writing the new one
        checked(self, *args)

    monkeypatch.setattr(RDBStorage, "check_trial_is_updatable", slowly)
    taken: dict[str, list[int]] = {"a": [], "b": []}

    def take(name: str) -> None:
        mine, _ = open_study(SearchSettings(), storage_for(url), "queue")
        for _ in range(3):
            taken[name].append(mine.ask().number)

    workers = [threading.Thread(target=take, args=(name,)) for name in taken]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(taken["a"] + taken["b"]) == list(range(6))  # each queued trial taken once


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_process_died_before_its_first_heartbeat_is_failed_and_retried(
    tmp_path, monkeypatch
):
    import optuna

    from fulcrum.search import loop
    from fulcrum.search.loop import Quota
    from fulcrum.search.settings import SearchSettings
    from fulcrum.search.storage import open_study, retry_stale

    monkeypatch.setattr(loop, "GRACE_S", 0.5)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'study.db'}",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=retry_stale,
    )
    study, _ = open_study(SearchSettings(), storage, "dead")
    orphan = study.ask()  # created, then its process died: no heartbeat, never started
    orphan.suggest_categorical("use_prune", [True, False])
    quota = Quota(study, storage, trials=4)
    quota.tend()  # first seen
    time.sleep(0.7)
    quota.tend()  # unstarted for longer than GRACE_S: given one heartbeat
    deadline = time.time() + 10
    while study.trials[0].state.name == "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
        quota.tend()  # nobody renews it: once stale, Optuna fails it and queues it again
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"]
    assert study.trials[1].user_attrs == {"retry_of": 0}
    assert study.trials[1].params == orphan.params


def call(app: Any, path: str) -> dict[str, Any]:
    """GET ``path`` from a WSGI app, as a browser would from the dashboard's server."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


def test_optuna_dashboard_shows_the_trials_with_named_objectives(search_dir):
    """optuna-dashboard's own app (what ``optuna-dashboard URL`` serves) reads the study."""
    import optuna_dashboard

    out = search_dir / "run"
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "2")]) == 0
    app = optuna_dashboard.wsgi(f"sqlite:///{out / 'study.db'}")
    (summary,) = call(app, "/api/studies")["study_summaries"]
    assert summary["study_name"] == "fulcrum"
    detail = call(app, f"/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["metric", "latency_ms", "size_bytes"]
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
    recipes = [
        next(a["value"] for a in t["user_attrs"] if a["key"] == "recipe") for t in detail["trials"]
    ]
    results = json.loads((out / "results.json").read_text())
    assert recipes == [t["recipe"] for t in results["trials"]]
    assert {"recipe", "latency_ms", "worker"} <= {a["key"] for a in detail["union_user_attrs"]}
