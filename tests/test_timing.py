"""Latency statistics: what ``timing.summarize`` reports of a set of run times."""

import numpy as np
import pytest

from fulcrum import timing


def test_every_statistic_of_a_latency_in_its_units_and_rounding():
    seconds = [0.00111114, 0.00123456, 0.00135794, 0.00199996, 0.00312347, 0.00121213, 0.0017777]
    ms = np.asarray(seconds) * 1e3
    median, (p10, p90, p99) = float(np.median(ms)), np.percentile(ms, [10, 90, 99])
    latency = timing.summarize("onnxruntime", batch_size=8, threads=2, seconds=seconds)
    assert latency == timing.Latency(
        runtime="onnxruntime",
        batch_size=8,
        threads=2,
        runs=7,
        median_ms=round(median, 4),
        p90_ms=round(float(p90), 4),
        p99_ms=round(float(p99), 4),
        min_ms=1.1111,  # of 1.11114
        spread_pct=round((p90 - p10) / median * 100, 2),
        throughput_per_s=round(8 / (median / 1e3), 2),
    )
    assert latency.p90_ms != round(float(np.percentile(ms, 91)), 4)
    assert latency.p99_ms != round(float(ms.max()), 4)
    assert latency.spread_pct != round((p90 - np.percentile(ms, 11)) / median * 100, 2)
    assert (latency.median_ms, latency.throughput_per_s) == (1.3579, 5891.28)


def test_the_reported_latency_is_the_median_run_not_the_mean():
    # one slow run in five (a page fault, a context switch) must not move the typical latency
    seconds = [0.001, 0.001, 0.002, 0.002, 0.100]
    latency = timing.summarize("torch", batch_size=4, threads=1, seconds=seconds)
    assert latency.median_ms == 2.0  # the mean would be 21.2
    assert latency.throughput_per_s == pytest.approx(4 / 0.002)


class Clock:
    """A fake ``time`` module: the clock moves only when a timed callable says it ran."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def runner(self, seconds: float, calls: list[object] | None = None):
        def run(*inputs: object) -> None:
            self.now += seconds
            if calls is not None:
                calls.append(inputs)

        return run


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


@pytest.mark.parametrize(
    ("seconds", "runs"),
    [(3.0, 500), (0.2, 50), (0.01, 30)],  # capped at max_runs, seconds / per run, min_runs
)
def test_interleaved_timing_runs_as_many_rounds_as_the_budget_allows(clock, seconds, runs):
    """Defaults: 5 warm-up calls, one to size the budget, then rounds of one untimed and 5
    timed calls of each callable, as many runs as ``seconds`` allows at the measured speed
    (at least 30, at most 500); each run's own time is recorded."""
    calls: dict[str, list[object]] = {"a": [], "b": []}
    times = timing.time_interleaved(
        {"a": clock.runner(0.001, calls["a"]), "b": clock.runner(0.003, calls["b"])},
        seconds=seconds,
    )
    assert {k: len(v) for k, v in times.items()} == {"a": runs, "b": runs}
    assert times["a"] == pytest.approx([0.001] * runs) and times["b"] == pytest.approx(
        [0.003] * runs
    )
    assert len(calls["a"]) == 5 + 1 + runs // 5 * 6


def test_interleaved_timing_defaults_to_two_seconds_and_a_single_round_is_one_block(clock):
    times = timing.time_interleaved({"a": clock.runner(0.01)})  # 2 s / 10 ms
    assert len(times["a"]) == 200
    one = timing.time_interleaved({"a": clock.runner(0.1)}, min_runs=1, max_runs=1)
    assert len(one["a"]) == 5  # one round of one block, not two


def test_compare_latency_labels_each_batch_size_and_splits_the_budget(clock, monkeypatch):
    """Each runner gets its own inputs at each batch size, its Latency names it, and the timing
    budget is ``seconds`` per batch size; threads default to the process's cores."""
    import torch

    from fulcrum import runtimes

    budgets: list[float] = []
    real = timing.time_interleaved

    def spy(calls, **kwargs):
        budgets.append(kwargs["seconds"])
        return real(calls, **kwargs)

    monkeypatch.setattr(timing, "time_interleaved", spy)
    shapes: list[object] = []
    found = timing.compare_latency(
        {"base": clock.runner(0.002, shapes), "small": clock.runner(0.001)},
        (torch.zeros(1, 3),),
        batch_sizes=(1, 4),
    )
    assert budgets == [2.0 * 2]  # default seconds, times two batch sizes
    assert {(x[0].shape[0]) for x in shapes} == {1, 4}  # type: ignore[index]
    assert found[("small", 4)].runtime == "small" and found[("base", 1)].batch_size == 1
    assert found[("base", 1)].median_ms == 2.0 and found[("small", 1)].median_ms == 1.0
    assert {lat.threads for lat in found.values()} == {runtimes.default_threads()}


class FakeSession:
    """A session on a runtime that tunes threads (ONNX Runtime's name): t threads take 2/t ms."""

    runtime = "onnxruntime"

    def __init__(self, clock: Clock, threads: int, made: list[int]) -> None:
        self.clock, self.threads, self.made = clock, threads, made

    def __call__(self, *inputs: object) -> None:
        self.clock.now += 0.002 / self.threads

    def with_threads(self, threads: int) -> "FakeSession":
        self.made.append(threads)
        return FakeSession(self.clock, threads, self.made)

    def artifact_bytes(self) -> int:
        return 0


def test_only_the_sessions_named_in_tune_try_other_thread_counts(clock):
    """A tuned session is timed at each thread count up to ``threads`` and reported at its
    fastest; an untuned one, and a plain PyTorch callable, keep the count they came with (a
    callable without one: the process's)."""
    import torch

    made_tuned: list[int] = []
    made_kept: list[int] = []
    eager = clock.runner(0.001)
    session_threads = type("Eager", (), {"threads": 3, "__call__": lambda self, *x: eager(*x)})()
    found = timing.compare_tuned(
        {
            "tuned": FakeSession(clock, 1, made_tuned),
            "kept": FakeSession(clock, 1, made_kept),
            "plain": eager,
            "torch": session_threads,
        },
        (torch.zeros(1, 2),),
        tune=["tuned"],
        batch_sizes=(1,),
        threads=4,
        seconds=0.05,
    )
    assert sorted(made_tuned) == [2, 4] and made_kept == []
    assert {k[1] for k in found} == {1}  # only the batch sizes asked for
    assert found[("tuned", 1)][1] == 4 and found[("tuned", 1)][0].median_ms == 0.5
    assert found[("kept", 1)][1] == 1 and found[("kept", 1)][0].median_ms == 2.0
    assert found[("plain", 1)][1] == 4 and found[("torch", 1)][1] == 3


def test_the_tuned_budget_is_per_runner_and_the_thread_count_is_the_callers(clock, monkeypatch):
    """compare_tuned gives compare_latency ``seconds`` for each runner and thread count (halved:
    compare_latency's is per batch size of two), at the caller's thread count."""
    import torch

    seen: list[dict[str, object]] = []
    real = timing.compare_latency

    def spy(runners, inputs, **kwargs):
        seen.append({"runners": len(runners), **kwargs})
        return real(runners, inputs, **kwargs)

    monkeypatch.setattr(timing, "compare_latency", spy)
    found = timing.compare_tuned(
        {"tuned": FakeSession(clock, 1, []), "plain": clock.runner(0.001)},
        (torch.zeros(1, 2),),
        tune=["tuned"],
        batch_sizes=(1,),
        threads=4,
        seconds=0.3,
    )
    assert seen == [{"runners": 4, "batch_sizes": (1,), "threads": 4, "seconds": 0.3 * 4 / 2}]
    assert {latency.threads for latency, _ in found.values()} == {4}
