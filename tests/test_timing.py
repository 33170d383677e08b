"""Latency statistics: what ``timing.summarize`` reports of a set of run times."""

import pytest

from fulcrum import timing


def test_the_reported_latency_is_the_median_run_not_the_mean():
    # one slow run in five (a page fault, a context switch) must not move the typical latency
    seconds = [0.001, 0.001, 0.002, 0.002, 0.100]
    latency = timing.summarize("torch", batch_size=4, threads=1, seconds=seconds)
    assert latency.median_ms == 2.0  # the mean would be 21.2
    assert latency.throughput_per_s == pytest.approx(4 / 0.002)
