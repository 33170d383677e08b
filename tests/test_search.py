"""The search: end to end on a tiny workload, resume after a kill, two workers, bad input."""

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fulcrum.cli import main
from fulcrum.errors import ConfigError
from fulcrum.search.settings import SearchSettings
from fulcrum.techniques import Scope
from tests_support import fulcrum_env


def search_args(search_dir, name, out, *extra):
    return [
        str(search_dir / f"{name}.toml"),
        "--out",
        str(out),
        "--sampler",
        "random",
        "--trial-seconds",
        "0.02",
        "--max-drop",
        "100",
        "--threads",
        "1",
        *extra,
    ]


def states(out: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(out / "study.db") as db:
        return db.execute("select number, state from trials order by number").fetchall()


def running_trials(out: Path) -> dict[int, dict[str, object]]:
    """The running trials of the study in ``out`` and their user attributes (none while the
    study does not exist yet)."""
    if not (out / "study.db").exists():
        return {}
    found: dict[int, dict[str, object]] = {}
    with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(out / "study.db") as db:
        for number, key, value in db.execute(
            "select t.number, a.key, a.value_json from trials t left join trial_user_attributes a"
            " on a.trial_id = t.trial_id where t.state = 'RUNNING'"
        ):
            found.setdefault(number, {})
            if key is not None:
                found[number][key] = json.loads(value)
    return found


def test_search_writes_frontier_pick_and_sweetspot(capsys, search_dir):
    out = search_dir / "run"
    code = main(["search", *search_args(search_dir, "fast", out, "--trials", "4")])
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    finished = [t for t in result["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    assert code == 0 and len(finished) == 4
    assert result["frontier"] and result["pick"]["point"]["trial"] in {
        p["trial"] for p in result["frontier"]
    }
    assert "baseline" in printed and "sweet spot" in printed and result["pick"]["reason"]
    assert (out / "sweetspot" / "model.onnx").is_file()
    for t in result["trials"]:
        if t["state"] == "COMPLETE":
            assert {"recipe", "metric", "latency_ms", "size_bytes", "seconds"} <= set(t)
            assert "use_prune" in t["search_params"] and isinstance(t["params"], int)
    assert result["environment"]["torch"]


def test_impossible_budget_exits_1_with_the_closest(capsys, search_dir):
    out = search_dir / "run"
    code = main(
        [
            "search",
            *search_args(search_dir, "fast", out, "--trials", "2", "--budget", "size_bytes=10"),
        ]
    )
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert code == 1 and result["pick"]["point"] is None and result["pick"]["closest"]
    assert "closest" in printed


def slow_search(search_dir: Path, out: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a search slow enough to be stopped mid-trial."""
    command = [sys.executable, "-m", "fulcrum", "search"]
    command += search_args(search_dir, "slow", out, *extra)
    return command, fulcrum_env(search_dir)


def finished(rows: list[tuple[int, str]]) -> list[int]:
    return [n for n, s in rows if s in ("COMPLETE", "PRUNED")]


def measured_once(trials: list[dict]) -> bool:
    """Whether every recipe measured in the run (not reused from an earlier trial) is distinct."""
    measured = [
        t["recipe"] for t in trials if t["state"] in ("COMPLETE", "PRUNED") and "same_as" not in t
    ]
    return len(measured) == len(set(measured))


def kill_mid_trial(command: list[str], env: dict[str, str], out: Path) -> int:
    """Start the search and SIGKILL it while a trial measures a fully drawn recipe, once two
    have finished; the number of the trial it killed. A trial seen measuring can finish before
    the signal lands, so the killed one is the trial still marked running once the process is
    dead, and the search is started again (it resumes) until the kill lands mid-trial."""
    deadline = time.time() + 240
    while time.time() < deadline:
        first = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while first.poll() is None:
            measuring = [n for n, attrs in running_trials(out).items() if "recipe" in attrs]
            if measuring and len(finished(states(out))) >= 2:
                first.send_signal(signal.SIGKILL)
                first.wait()
                still = [n for n, attrs in running_trials(out).items() if "recipe" in attrs]
                if still:
                    return still[0]
                break  # it finished that trial before the signal landed
            time.sleep(0.1)
        else:
            break
    raise AssertionError("the first search finished before it could be killed mid-trial")


def test_killed_search_resumes_without_losing_or_replaying_trials(search_dir):
    """SIGKILL mid-trial, then the same command: nothing finished is lost, the killed trial is
    retried, exactly the requested trials finish, and the resumed process draws new recipes
    (its sampler continues instead of replaying the first process's draws)."""
    out = search_dir / "run"
    command = [sys.executable, "-m", "fulcrum", "search"]
    command += search_args(search_dir, "fast", out, "--trials", "5")
    env = fulcrum_env(search_dir)
    killed = kill_mid_trial(command, env, out)
    before = finished(states(out))
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    after = dict(states(out))
    assert all(after[n] in ("COMPLETE", "PRUNED") for n in before)  # nothing finished was lost
    assert after[killed] == "FAIL"
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials) == 5
    retried = [t for t in trials if t.get("retry_of") == killed]
    assert len(retried) == 1 and retried[0]["state"] in ("COMPLETE", "PRUNED")
    assert measured_once(trials)
    workers = {t["worker"] for t in trials if t["number"] in before}
    drawn_again = [
        t["search_params"]
        for t in trials
        if t.get("worker") not in workers and "retry_of" not in t and "surplus" not in t
    ]
    first_draws = [t["search_params"] for t in trials if t["number"] in before][:2]
    assert len(drawn_again) >= 2 and drawn_again[:2] != first_draws


def test_two_workers_finish_exactly_the_requested_trials(search_dir):
    out = search_dir / "run"
    env = fulcrum_env(search_dir)
    # trials of a second or more (slow data): on the fast data, one worker can finish all
    # seven before the second has imported torch. On the slow data the second worker's first
    # trial began about 10 s after the first worker's (spawned after the set-up, it imports
    # torch, loads the workload and exports its first ONNX graph cold), when the first had
    # done six of seven: ten leave it room
    args = search_args(search_dir, "slow", out, "--trials", "10", "--workers", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "fulcrum", "search", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = states(out)
    assert len(finished(rows)) == 10  # not one more, though both processes ran to the end
    assert all((out / "trials" / str(n)).is_dir() for n, s in rows if s == "COMPLETE")
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert len({t["worker"] for t in trials if t["state"] == "COMPLETE"}) == 2  # both worked
    assert measured_once(trials)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"objectives": ("metric", "latncy_ms")},
            "unknown objective 'latncy_ms'.*Did you mean 'latency_ms'",
        ),
        ({"budgets": {"size_gb": 1.0}}, "unknown budget 'size_gb'.*Did you mean 'size_mb'"),
        ({"policy": "kneee"}, "Did you mean 'knee'"),
        ({"objectives": ("latency_ms", "size_bytes")}, "must include 'metric'"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchSettings(**kwargs)


def test_unreachable_storage_and_conflicting_study(capsys, search_dir):
    code = main(
        [
            "search",
            *search_args(
                search_dir,
                "fast",
                search_dir / "a",
                "--trials",
                "1",
                "--storage",
                "postgresql://nobody@127.0.0.1:9/none",
            ),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "postgresql://nobody@127.0.0.1:9/none" in err and "at 127.0.0.1:9" in err
    assert "pip install 'fulcrum[postgres]'" in err  # the driver, should it be missing
    url = f"sqlite:///{search_dir / 'shared.db'}"
    assert (
        main(
            [
                "search",
                *search_args(
                    search_dir,
                    "fast",
                    search_dir / "b",
                    "--trials",
                    "1",
                    "--storage",
                    url,
                    "--study",
                    "s",
                ),
            ]
        )
        == 0
    )
    code = main(
        [
            "search",
            *search_args(
                search_dir,
                "fast",
                search_dir / "c",
                "--trials",
                "1",
                "--storage",
                url,
                "--study",
                "s",
                "--objective",
                "metric",
                "--objective",
                "size_bytes",
            ),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "exists with objectives" in err


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(search_dir, monkeypatch):
    """An unexpected error inside a trial fails that trial only (no hang, no traceback)."""
    from fulcrum.search import trial

    real, calls = trial.compress, []

    def compress(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(trial, "compress", compress)
    out = search_dir / "run"
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "2")]) == 0
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0]["error"] == "internal error (a bug in Fulcrum): ValueError: boom"


def test_a_recipe_drawn_twice_is_measured_once(search_dir):
    import optuna

    out = search_dir / "dup"
    out.mkdir()
    study = optuna.create_study(
        study_name="fulcrum",
        storage=f"sqlite:///{out / 'study.db'}",
        directions=["maximize", "minimize", "minimize"],
    )
    plain = {"use_prune": False, "use_lowrank": False, "use_quantize": True}
    plain |= {"quantize.mode": "int8-dynamic", "quantize.per_channel": True}
    plain |= {"quantize.embeddings": "int8"}
    study.enqueue_trial(plain)
    study.enqueue_trial(plain)
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "3")]) == 0
    trials = json.loads((out / "results.json").read_text())["trials"]
    first, second = trials[0], trials[1]
    assert first["recipe"] == second["recipe"] == "quantize:mode=int8-dynamic"
    assert second["same_as"] == 0 and "same_as" not in first
    assert second["latency_ms"] == first["latency_ms"]
    assert (out / "trials" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("task", "transformer", "expected"),
    [
        (
            "multiclass",
            False,
            [
                "quantize",  # int8-static, the default mode
                "prune:ratio=0.3 > finetune:epochs=3 > quantize",
                "prune > finetune:epochs=3 > quantize",
                "prune:ratio=0.7 > distill:epochs=8,alpha=0.5,patience=0 > quantize",  # allocated; --max-epochs 8
            ],
        ),
        (
            "embedding",
            True,
            [
                "fuse > quantize:mode=int8-dynamic,embeddings=int4",
                "prune:ratio=0.3 > distill:epochs=3,hidden=1.0 > fuse > quantize:mode=int8-dynamic,embeddings=int4",
                # the structural students recover for the search's whole epoch budget (8 here)
                "layers:ratio=0.5 > distill:epochs=8,hidden=1.0 > fuse > quantize:mode=int8-dynamic",
                "layers:ratio=0.33 > heads:ratio=0.25,ffn=0.5 > distill:epochs=8,hidden=1.0 > fuse > quantize:mode=int8-dynamic",
                "layers:ratio=0.33 > heads:ffn=0.75 > distill:epochs=8,hidden=1.0 > fuse > quantize:mode=int8-dynamic",
            ],
        ),
    ],
)
def test_warm_start_draws_int8_alone_then_pruning_with_recovery(task, transformer, expected):
    """...and, for a transformer, half its layers (and feed-forward width) distilled."""
    from optuna.trial import FixedTrial

    from fulcrum.compression import recipe_text
    from fulcrum.search.space import suggest_recipe, warm_starts

    scope = Scope(task=task, transformer=transformer, max_epochs=8)
    rest = {"fuse.level": 1, "finetune.epochs": 3, "finetune.lr": 1e-3}
    rest |= {"distill.epochs": 3, "distill.temperature": 4.0, "distill.alpha": 0.7}
    drawn = [
        recipe_text(suggest_recipe(FixedTrial({**rest, **p}), scope)) for p in warm_starts(scope)
    ]
    assert drawn == expected


def test_a_run_folder_of_another_workload_budget_or_command_is_refused_before_any_work(
    capsys, search_dir
):
    out = search_dir / "run"
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "1")]) == 0
    before = sorted(p.name for p in out.iterdir())
    (search_dir / "other.toml").write_text(
        'task = "multiclass"\nmodel = "slowcode:make_model"\ndata = "slowcode:fast"\n'
    )
    capsys.readouterr()
    code = main(["search", *search_args(search_dir, "other", out, "--trials", "2")])
    err = capsys.readouterr().err
    assert code == 2 and "holds a `fulcrum search` run of" in err and "fast.toml" in err
    args = search_args(search_dir, "fast", out, "--trials", "2")
    args[args.index("--max-drop") + 1] = "3"
    code = main(["search", *args])
    err = capsys.readouterr().err
    assert code == 2 and "max_drop=100.0, not 3.0" in err
    code = main(["search", *search_args(search_dir, "fast", out, "--runtime", "torch")])
    err = capsys.readouterr().err
    assert code == 2 and "runtime='onnxruntime', not 'torch'" in err  # another recipe space
    code = main(["compress", str(search_dir / "fast.toml"), "--recipe", "prune", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "holds a `fulcrum search` run" in err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written by the refusals


def test_the_terminal_table_leaves_collapsed_frontier_points_out(capsys):
    from fulcrum.cli.search import render
    from fulcrum.frontier import Budget
    from fulcrum.runfolder import Figures, Pick, Point, Run, Trial

    def point(trial, metric, latency):
        figures = {"metric": metric, "latency_ms": latency, "size_bytes": 1000}
        return Point(trial=trial, macs=1, params=1, **figures)

    good, collapsed = point("1", 0.985, 0.5), point("2", 0.10, 0.2)
    base = Figures(metric=0.99, latency_ms=1.0, size_bytes=1000, macs=1, params=1)
    result = Run(
        command="search",
        workload="w",
        task="multiclass",
        settings=SearchSettings(),
        budget=Budget("metric", baseline=0.99, max_drop=1.0),
        baseline=base,
        trials=[Trial(number=n, state="COMPLETE") for n in (1, 2)],
        frontier=[good, collapsed],
        pick=Pick(policy="tolerance", reason="r", point=good),
        seconds=1.0,
    )
    render(result)
    out = capsys.readouterr().out
    assert "0.9850" in out and "0.1000" not in out
    assert "1 more frontier point(s) lose more than the allowed drop" in out


def group_alive(pgid: int) -> bool:
    """Whether a process of the process group ``pgid`` still runs (Linux /proc; zombies aside)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == pgid and fields[0] != "Z":
                    return True
    return False


def start_in_a_terminal(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The search in a process group of its own, with SIGINT as a terminal's foreground job has
    it: a test runner started in the background inherits SIGINT ignored, and a search that
    inherits that ignores Ctrl-C too."""
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_an_interrupt_that_python_drops_inside_a_finalizer_is_sent_again():
    """A signal handled while a ``__del__`` (or weakref callback) runs raises there, and Python
    prints and drops the exception; the search must still stop. SIGTERM, which a test run in
    the background does not ignore, goes through the same handler as Ctrl-C."""
    from fulcrum.search.loop import Interrupt

    class Finalised:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)
            sum(range(10))  # the handler runs here, inside __del__

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), Interrupt():
        Finalised()
        while time.perf_counter() - start < 10:
            time.sleep(0.01)
    assert time.perf_counter() - start < 2


def test_ctrl_c_stops_a_search_and_its_workers_within_seconds_and_a_rerun_resumes_it(search_dir):
    """Ctrl-C in a terminal signals the search and its worker alike (one process group)."""
    out = search_dir / "run"
    # 12 trials: the worker's start (a fresh interpreter importing torch, 10-20 s on a busy
    # machine) must come before the first process has finished them all
    command, env = slow_search(search_dir, out, "--trials", "12", "--workers", "2")
    first = start_in_a_terminal(command, env)
    deadline = time.time() + 240
    stopped_after = None
    while time.time() < deadline and first.poll() is None:
        workers = [str(a.get("worker")) for a in running_trials(out).values() if "worker" in a]
        if any(not w.endswith(f":{first.pid}") for w in workers):  # the worker is in a trial
            time.sleep(0.3)
            os.killpg(first.pid, signal.SIGINT)
            sent = time.time()
            while group_alive(first.pid) and time.time() - sent < 30:
                time.sleep(0.1)
            stopped_after = time.time() - sent
            break
        time.sleep(0.2)
    assert stopped_after is not None, "the search finished before its worker began a trial"
    assert first.wait(timeout=5) == 130 and stopped_after < 10
    err = first.stderr.read().decode()
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "RUNNING" not in dict(states(out)).values()  # none left running with a heartbeat
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials) == 12
    interrupted = [t["number"] for t in trials if t["state"] == "FAIL" and "recipe" in t]
    assert interrupted
    for number in interrupted:  # queued again, and measured by the rerun
        (retried,) = [t for t in trials if t.get("retry_of") == number]
        assert retried["state"] in ("COMPLETE", "PRUNED")


def test_ctrl_c_while_a_worker_starts_ends_the_search_without_a_traceback(search_dir):
    out = search_dir / "run"
    command, env = slow_search(search_dir, out, "--trials", "8", "--workers", "2")
    first = start_in_a_terminal(command, env)
    deadline, sent = time.time() + 240, None
    while time.time() < deadline and first.poll() is None and sent is None:
        for entry in Path("/proc").iterdir():  # the worker: a child process, still importing
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == first.pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    time.sleep(1.0)  # well into its imports
                    os.killpg(first.pid, signal.SIGINT)
                    sent = time.time()
                    break
        time.sleep(0.05)
    assert sent is not None, "no worker process was seen"
    while group_alive(first.pid) and time.time() - sent < 30:
        time.sleep(0.1)
    assert time.time() - sent < 10 and first.wait(timeout=5) == 130
    err = first.stderr.read().decode()
    assert "Traceback" not in err and "run the same command again to resume" in err


def test_the_probe_leaves_out_quantization_modes_that_are_slower(search_dir, monkeypatch):
    """The timings of the modes are set (dynamic int8 3x slower than fp32, static int8 3% faster:
    within this machine's noise; fp16 2x faster), so that the verdict does not depend on this
    machine."""
    import dataclasses

    from fulcrum import timing

    real = timing.compare_latency
    factors = {"int8-dynamic": 3.0, "int8-static": 0.97, "fp16": 0.5}

    def timed(runners, *args, **kwargs):  # (labels are "name@threads": one thread here)
        times = real(runners, *args, **kwargs)
        base = next((v for (label, _), v in times.items() if label.startswith("baseline@")), None)
        if base is None:  # the baselines of the targets, timed together in the set-up
            return times
        return {
            (label, b): dataclasses.replace(v, median_ms=base.median_ms * factors[name])
            if (name := label.split("@")[0]) in factors
            else v
            for (label, b), v in times.items()
        }

    monkeypatch.setattr(timing, "compare_latency", timed)
    out = search_dir / "probed"
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "10")]) == 0
    result = json.loads((out / "results.json").read_text())
    probe = result["probe"]
    assert probe["int8-dynamic"] == {"kept": False, "latency_ratio": 3.0, "threads": 1}
    assert probe["fp16"] == {"kept": True, "latency_ratio": 0.5, "threads": 1}
    assert probe["int8-static"] == {"kept": False, "latency_ratio": 0.97, "threads": 1}
    quantized = [t["recipe"] for t in result["trials"] if "quantize" in t["recipe"]]
    drawn = {(re.search(r"mode=([\w-]+)", r) or ["", "int8-static"])[1] for r in quantized}
    assert drawn == {"fp16"}  # the warm start's int8 became fp16, and nothing slower was drawn


def test_a_search_runs_each_candidate_with_the_thread_count_it_is_fastest_with(
    search_dir, monkeypatch
):
    """With two threads to use, every candidate is also timed on one; here one thread is set to
    be twice as fast for candidates (not for the baseline), so every trial, the pick and its card
    say one thread, and the latency ratios are those of one thread."""
    import dataclasses

    from fulcrum import timing

    real = timing.compare_latency

    def timed(runners, *args, **kwargs):
        times = real(runners, *args, **kwargs)
        fixed = {}
        for (label, b), v in times.items():
            name, threads = label.split("@")
            two = times.get((f"{name}@2", b), v)  # each at half its two-thread time on one
            fixed[(label, b)] = (
                dataclasses.replace(v, median_ms=two.median_ms / 2)
                if threads == "1" and name != "baseline"
                else v
            )
        return fixed

    monkeypatch.setattr(timing, "compare_latency", timed)
    out = search_dir / "threads"
    args = search_args(search_dir, "fast", out, "--trials", "3")
    args[args.index("--threads") + 1] = "2"
    assert main(["search", *args]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["baseline"]["threads"] in (1, 2)  # (the baseline's own fastest, not set here)
    measured = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    assert measured and all(t["threads"] == 1 for t in measured)
    assert result["pick"]["point"]["threads"] == 1
    assert "intra-op threads 1" in (out / "sweetspot" / "card.md").read_text()


def test_static_int8_draws_how_many_hurt_layers_stay_in_float():
    """The layers int8 hurts most (by the sensitivity analysis) become a search dimension: the
    first k of them are left in float; the warm start keeps the worst one in float."""
    from optuna.trial import FixedTrial

    from fulcrum import sensitivity
    from fulcrum.compression import recipe_text
    from fulcrum.search.setup import int8_fallback
    from fulcrum.search.space import suggest_recipe, warm_starts

    layers = [
        sensitivity.LayerSensitivity("conv0", "Conv2d", 10, 10, 0.1, float_metric=0.99),
        sensitivity.LayerSensitivity("conv1", "Conv2d", 10, 10, 0.1, float_metric=0.905),
        sensitivity.LayerSensitivity("conv2", "Conv2d", 10, 10, 0.1, float_metric=0.93),
    ]
    found = sensitivity.Sensitivity("w", "accuracy", 1.0, 100, [], 0.90, layers, None, 1.0)
    said: list[str] = []
    chosen = int8_fallback(found, said.append)
    assert [c.layer for c in chosen] == ["conv0", "conv2"]  # conv1 wins back only 0.5 pt
    assert "int8-static loses 10.00 pt" in said[0]

    scope = Scope(task="multiclass", fallback=tuple(c.layer for c in chosen))
    base = {"use_prune": False, "use_lowrank": False, "use_quantize": True}
    base |= {"quantize.mode": "int8-static", "quantize.per_channel": True}
    base |= {"quantize.calibration": "minmax"}
    for count, skip in ((0, ""), (1, "skip=conv0"), (2, "skip=conv0+conv2")):
        trial = FixedTrial({**base, "quantize.fallback": count})
        text = recipe_text(suggest_recipe(trial, scope))
        assert text.endswith(skip) and ("skip" in text) == bool(skip)
    dynamic = FixedTrial({**base, "quantize.mode": "int8-dynamic", "quantize.embeddings": "int8"})
    assert "skip" not in recipe_text(suggest_recipe(dynamic, scope))
    first = warm_starts(scope)[0]
    assert recipe_text(suggest_recipe(FixedTrial(first), scope)).endswith("skip=conv0")


def test_static_int8_that_collapses_even_with_its_worst_layers_in_float_is_left_out():
    from fulcrum import sensitivity
    from fulcrum.runfolder import Fallback
    from fulcrum.search.setup import int8_collapses

    def found(int8_metric, gains):
        layers = [
            sensitivity.LayerSensitivity(f"l{i}", "Linear", 1, 1, 0.5, float_metric=int8_metric + g)
            for i, g in enumerate(gains)
        ]
        return sensitivity.Sensitivity("w", "cosine", 1.0, 100, [], int8_metric, layers, None, 1.0)

    settings = SearchSettings(trials=20, max_drop=1.0)
    minilm = found(0.386, [0.0024, 0.002])  # all-MiniLM-L6-v2: 61.4 pt lost, 0.44 won back
    fallback = [Fallback(layer="l0", gain=0.0024), Fallback(layer="l1", gain=0.002)]
    assert int8_collapses(minilm, fallback, settings) == (
        "collapses: loses 61.0 pt with 2 layers in float"
    )
    mobilenet = found(0.84, [0.114])  # 16 pt lost, the stem wins back 11.4: a search can recover
    assert int8_collapses(mobilenet, [Fallback(layer="l0", gain=0.114)], settings) == ""
    assert int8_collapses(found(0.75, []), [], settings) == "collapses: loses 25.0 pt"
    assert int8_collapses(found(0.75, []), [], SearchSettings(trials=20, max_drop=5.0)) == ""


def test_a_search_leaves_out_static_int8_when_the_analysis_finds_it_collapses(
    search_dir, monkeypatch
):
    from dataclasses import replace

    from fulcrum import sensitivity, timing

    real = timing.compare_latency

    def timed(runners, *args, **kwargs):  # every mode faster: the probe keeps them all
        times = real(runners, *args, **kwargs)  # (labels are "name@threads")
        return {
            (label, b): v if label.startswith("baseline@") else replace(v, median_ms=0.01)
            for (label, b), v in times.items()
        }

    def collapsed(workload, folder, **kwargs):
        return sensitivity.Sensitivity(workload.name, "accuracy", 0.9, 64, [], 0.1, [], None, 1.0)

    monkeypatch.setattr(timing, "compare_latency", timed)
    monkeypatch.setattr(sensitivity, "cached", collapsed)
    out = search_dir / "collapsed"
    tight = ("--trials", "10", "--max-drop", "1")  # collapsed: 20 pt below the baseline or more
    main(["search", *search_args(search_dir, "fast", out, *tight)])  # exit 1 if none within 1 pt
    result = json.loads((out / "results.json").read_text())
    assert result["probe"]["int8-static"]["kept"] is False
    assert result["probe"]["int8-static"]["left_out"] == "collapses: loses 80.0 pt"
    quantized = [t["recipe"] for t in result["trials"] if "quantize" in t["recipe"]]
    drawn = {(re.search(r"mode=([\w-]+)", r) or ["", "int8-static"])[1] for r in quantized}
    assert quantized and "int8-static" not in drawn


def test_a_drawn_recipe_is_never_empty_while_quantization_is_in_the_space():
    """An empty recipe is the baseline, measured once per study: with no other step drawn,
    quantization is not optional (``use_quantize`` is not even asked)."""
    from optuna.trial import FixedTrial

    from fulcrum.compression import recipe_text
    from fulcrum.search.space import suggest_recipe

    nothing = {"use_prune": False, "use_lowrank": False, "use_quantize": False}
    nothing |= {"quantize.mode": "int8-static", "quantize.per_channel": True}
    nothing |= {"quantize.calibration": "minmax"}
    scope = Scope(task="multiclass")
    assert recipe_text(suggest_recipe(FixedTrial(nothing), scope)) == "quantize"
    pruned = {**nothing, "use_prune": True, "prune.ratio": 0.5, "prune.importance": "magnitude"}
    pruned |= {"prune.global_pruning": False, "recovery": "none"}
    assert recipe_text(suggest_recipe(FixedTrial(pruned), scope)) == "prune"  # optional here


def test_a_recovery_that_cannot_reach_the_budget_stops_after_a_screening_epoch():
    """Multi-fidelity: after each epoch from the second, the most an earlier recovery gained
    from there on is added; if the budget is still out of reach, the recovery stops."""
    from fulcrum.search.trial import hopeless

    seen = [[0.80, 0.90, 0.95], [0.70, 0.85, 0.90], [0.90, 0.92, 0.93]]
    floor = SearchSettings(max_drop=1.0).budget(0.98).floor
    assert floor == pytest.approx(0.97)
    reason = hopeless([0.70, 0.85], seen, floor)  # 0.85 + 0.05 + slack < 0.97
    assert "holdout 0.8500 after 2 epochs" in reason and "0.0500" in reason
    assert hopeless([0.80, 0.92], seen, floor) == ""  # 0.92 + 0.05 + 0.005 reaches 0.97
    assert hopeless([0.10], seen, floor) == ""  # one epoch is too short to judge
    assert hopeless([0.70, 0.85], seen[:2], floor) == ""  # too few recoveries to learn from
    assert hopeless([0.70, 0.85], seen, None) == ""  # no metric budget: nothing to miss
    assert hopeless([0.6, 0.7, 0.75], seen, floor) == ""  # none of them recovered past 3 epochs


def test_a_screened_out_recovery_is_recorded_as_pruned_with_its_curve(search_dir, monkeypatch):
    from fulcrum.search import trial as trials

    calls: list[list[float]] = []

    def screen(curve, seen, floor):
        calls.append(list(curve))
        return "out of reach" if len(curve) == 2 else ""

    monkeypatch.setattr(trials, "hopeless", screen)
    out = search_dir / "screened"
    recovered = {"use_prune": True, "prune.ratio": 0.5, "prune.importance": "magnitude"}
    recovered |= {"prune.global_pruning": False, "use_lowrank": False, "recovery": "finetune"}
    recovered |= {"finetune.epochs": 3, "finetune.lr": 1e-3, "recovery.holdout": True}
    recovered |= {"use_quantize": False}
    study_ = _study(out)
    study_.enqueue_trial(recovered)
    # its one trial pruned, the pick is one of the runtime's default quantizations
    assert main(["search", *search_args(search_dir, "roomy", out, "--trials", "1")]) == 0
    trial = json.loads((out / "results.json").read_text())["trials"][0]
    assert trial["state"] == "PRUNED" and trial["pruned"] == "out of reach"
    assert len(trial["recovery_curve"]) == 2 and calls[-1] == trial["recovery_curve"]


@pytest.mark.parametrize(("holdout", "patience"), [(True, 3), (False, 0)])
def test_a_recovery_is_screened_on_a_holdout_or_runs_its_whole_schedule_on_all_the_data(
    holdout, patience
):
    """Without the holdout (patience 0) the recovery has no early stopping and no holdout score
    for the search to cut it short by: it trains every epoch on the whole training split."""
    from optuna.trial import FixedTrial

    from fulcrum.search.space import suggest_recipe

    drawn = {"use_prune": True, "prune.ratio": 0.5, "prune.importance": "magnitude"}
    drawn |= {"prune.global_pruning": False, "use_lowrank": False, "recovery": "finetune"}
    drawn |= {"finetune.epochs": 4, "finetune.lr": 1e-3, "recovery.holdout": holdout}
    drawn |= {"use_quantize": False}
    recipe = suggest_recipe(FixedTrial(drawn), Scope(task="multiclass"))
    assert recipe[-1].name == "finetune" and recipe[-1].patience == patience


def test_a_trained_prefix_is_kept_on_disk_for_every_worker(tmp_path):
    """A recipe prefix that took long (a recovery) is saved in the run folder; another process
    (a new cache on the same folder) reuses it instead of training again."""
    from torch.utils.data import DataLoader

    from fulcrum.compression import PrefixCache, compress
    from fulcrum.testing import tiny_data, tiny_mlp
    from fulcrum.workloads import Workload

    data = tiny_data((16,))
    workload = Workload(
        name="tiny",
        task="multiclass",
        model=tiny_mlp(),
        train=DataLoader(data, batch_size=16),
        val=DataLoader(tiny_data((16,), seed=1), batch_size=32),
        calib=DataLoader(data, batch_size=16),
        example_inputs=(data.tensors[0][:1],),
        num_classes=4,
    )
    first = PrefixCache(tmp_path / "cache", workload.model, costly=0.0)
    trained = compress(workload.model, "prune:0.5 > finetune:epochs=1", workload, cache=first)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # both prefixes: costly=0
    other = PrefixCache(tmp_path / "cache", workload.model, costly=0.0)
    said: list[str] = []
    again = compress(
        workload.model,
        "prune:0.5 > finetune:epochs=1 > quantize:int8-dynamic",
        workload,
        cache=other,
        progress=said.append,
    )
    assert said[0] == "reusing prune > finetune:epochs=1"
    for a, b in zip(trained.model.parameters(), again.model.parameters(), strict=True):
        assert a.shape == b.shape and bool((a == b).all())
    key = "0|prune > finetune:epochs=1"  # (the seed, then the recipe prefix)
    assert key in PrefixCache(tmp_path / "cache", workload.model)
    for folder in (tmp_path / "cache").iterdir():  # damaged entries are misses, not errors
        (folder / "candidate.json").write_text("{half written")
    damaged = PrefixCache(tmp_path / "cache", workload.model)
    assert key not in damaged and "missing" not in damaged
    cheap = PrefixCache(tmp_path / "other", workload.model)  # default: steps of a second or more
    compress(workload.model, "prune:0.5", workload, cache=cheap)
    assert not (tmp_path / "other").exists()


def test_a_drawn_allocation_strength_prunes_each_layer_by_its_sensitivity(search_dir):
    """A search of 10 or more trials measures each layer's sensitivity once; a trial that draws
    a non-zero ``prune.allocation`` prunes with per-layer ratios removing as many MACs."""
    out = search_dir / "allocated"
    allocated = {"use_prune": True, "prune.ratio": 0.5, "prune.importance": "magnitude"}
    allocated |= {"prune.global_pruning": False, "prune.allocation": 2.0, "use_lowrank": False}
    allocated |= {"recovery": "none", "use_quantize": False}
    _study(out).enqueue_trial(allocated)
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "10")]) == 0
    result = json.loads((out / "results.json").read_text())
    layers = result["sensitivity"]["layers"]
    assert [la["name"] for la in layers] == ["0", "2"] and all(la["prune"] for la in layers)
    first = result["trials"][0]
    assert first["search_params"]["prune.allocation"] == 2.0
    assert re.search(r"layer_ratios=0:[\d.]+\+2:[\d.]+", first["recipe"]), first["recipe"]
    uniform = [t for t in result["trials"] if t["recipe"].startswith("prune:ratio=0.3 >")]
    assert uniform and uniform[0]["search_params"]["prune.allocation"] == 0.0
    assert (out / "sensitivity.json").is_file()


def _study(out: Path):
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name="fulcrum",
        storage=f"sqlite:///{out / 'study.db'}",
        directions=["maximize", "minimize", "minimize"],
    )


def test_a_recipe_drawn_again_after_its_first_trial_was_pruned_is_pruned_again(
    search_dir, monkeypatch
):
    """The second draw of a pruned recipe takes the first's verdict: pruned too (not a failed
    trial missing its figures, and not one trial more than asked for)."""
    from fulcrum.search import trial as trials

    monkeypatch.setattr(trials, "hopeless", lambda curve, seen, floor: "out of reach")
    monkeypatch.setattr(trials, "SCREEN_AFTER", 0)
    out = search_dir / "again"
    recovered = {"use_prune": True, "prune.ratio": 0.5, "prune.importance": "magnitude"}
    recovered |= {"prune.global_pruning": False, "use_lowrank": False, "recovery": "finetune"}
    recovered |= {"finetune.epochs": 3, "finetune.lr": 1e-3, "recovery.holdout": True}
    recovered |= {"use_quantize": False}
    study = _study(out)
    study.enqueue_trial(recovered)
    study.enqueue_trial(recovered)
    main(["search", *search_args(search_dir, "roomy", out, "--trials", "2")])  # both pruned
    result = json.loads((out / "results.json").read_text())
    assert [t["state"] for t in result["trials"]] == ["PRUNED", "PRUNED"]
    second = result["trials"][1]
    assert second["same_as"] == 0 and "error" not in second


def test_the_pick_is_a_runtime_default_when_it_is_faster_than_every_recipe(search_dir, monkeypatch):
    """ONNX Runtime's own default quantizations are measured as candidates and timed again with
    the finalists: set here to be the fastest, one of them is the pick, its files the sweet
    spot's, and the report and the table name it."""
    import dataclasses

    from fulcrum import timing

    real = timing.compare_latency

    def timed(runners, *args, **kwargs):
        times = real(runners, *args, **kwargs)
        return {
            (label, b): dataclasses.replace(v, median_ms=1e-3)
            if label.startswith("ort-static-default@")
            else v
            for (label, b), v in times.items()
        }

    monkeypatch.setattr(timing, "compare_latency", timed)
    out = search_dir / "defaults"
    assert main(["search", *search_args(search_dir, "fast", out, "--trials", "3")]) == 0
    result = json.loads((out / "results.json").read_text())
    assert {d["trial"] for d in result["defaults"]} == {
        "ort-static-default",
        "ort-static-per-channel",
        "ort-dynamic-default",
        "ort-dynamic-per-channel",
        "onnxruntime-baseline",  # the model as it is: never a slower pick
    }
    assert result["pick"]["point"]["trial"] == "ort-static-default"
    assert result["pick"]["point"]["recipe"] == "quantize:preset=ort"
    assert len(result["pick"]["point"]["ratio_range"]) == 2  # timed in several rounds
    assert (out / "sweetspot" / "model.onnx").read_bytes() == (
        out / "defaults" / "ort-static-default" / "model.onnx"
    ).read_bytes()
    assert "Runtime defaults" in (out / "report.html").read_text()


def test_a_search_over_two_targets_keeps_their_baselines_frontiers_and_picks_apart(search_dir):
    """--runtime onnxruntime,torch searches the target too: each trial draws one, each target
    has its baseline (timed in the same rounds) and its own pick among its own candidates, and
    the report shows them side by side."""
    out = search_dir / "targets"
    args = search_args(search_dir, "fast", out, "--trials", "6", "--runtime", "onnxruntime,torch")
    assert main(["search", *args]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["targets"]) == {"onnxruntime", "torch"}
    drawn = {t["runtime"] for t in result["trials"] if t["state"] == "COMPLETE"}
    assert drawn <= {"onnxruntime", "torch"} and drawn  # each trial on one of them
    for target, pick in result["target_picks"].items():
        assert pick["point"]["runtime"] == target  # a target's pick is one of its own
    torch_quantized = [
        t for t in result["trials"] if t.get("runtime") == "torch" and "quantize" in t["recipe"]
    ]
    assert not torch_quantized  # ONNX Runtime's quantization is not drawn for eager PyTorch
    assert "Per target" in (out / "report.html").read_text()
