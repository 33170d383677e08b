"""Progress a person can watch: on a terminal, bars with an ETA (the search's trials with the best
trade-off so far, first-use training, calibration, sensitivity); elsewhere plain lines, and
none for short work; nothing but results under -q."""

import io
import logging

import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

from fulcrum import progress
from fulcrum.cli.progress import Display
from fulcrum.train import fit


def _messages() -> list[str]:
    return [
        "measuring the baseline",
        "trial 0: quantize",
        "[1/4] best within budget: trial 0, latency_ms 0.2 (2.00x better), drop 0.10 pt",
        "trial 1: prune:0.5 > quantize",
        "[2/4] best within budget: trial 1, latency_ms 0.1 (4.00x better), drop 0.40 pt",
    ]


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def test_on_a_terminal_the_search_shows_a_bar_with_its_trials_and_an_eta():
    console, out = _terminal()
    with Display(console) as display:
        for message in _messages():
            display.search(message)
        assert display.progress is not None
        task = display.progress.tasks[display.tasks["trials"]]
        assert (task.completed, task.total) == (2, 4)
    text = out.getvalue()
    assert "2/4" in text and "ETA" in text and "4.00x better" in text
    assert "measuring the baseline" in text  # other lines still printed


def test_elsewhere_every_line_is_printed_plainly():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160)
    with Display(console) as display:
        for message in _messages():
            display.search(message)
        assert display.progress is None
    assert out.getvalue().splitlines() == _messages()


def test_quiet_shows_nothing_and_steps_go_nowhere(caplog):
    console, out = _terminal()
    with Display(console, quiet=True) as display, caplog.at_level(logging.INFO, "fulcrum"):
        for message in _messages():
            display.search(message)
        progress.step("calibrating", 1, 1)
        assert display.progress is None
    assert out.getvalue() == "" and caplog.records == []


def test_on_a_terminal_long_work_gets_a_bar_that_goes_when_it_ends():
    console, out = _terminal()
    with Display(console) as display:
        progress.step("training the tiny baseline (batches)", 3, 10)
        assert display.progress is not None
        (task,) = display.progress.tasks
        assert (task.completed, task.total) == (3, 10)
        progress.step("training the tiny baseline (batches)", 10, 10)
        assert display.progress.tasks == [] and display.tasks == {}
    progress.step("after the display", 1, 2)  # the listener is gone with the display
    assert "training the tiny baseline" in out.getvalue()


def test_without_a_listener_long_work_is_plain_lines_and_short_work_none(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.INFO, "fulcrum"):
        for done in range(1, 4):  # short work: nothing
            progress.step("quick", done, 3)
        assert caplog.messages == []
        for done in range(1, 11):  # 5 s a step: a line every 15 s, and the end
            progress.step("slow", done, 10)
            clock[0] += 5.0
    assert caplog.messages == ["slow: 4/10 (15 s)", "slow: 7/10 (30 s)", "slow: 10/10 (45 s)"]


class _Abandoned(Exception):
    pass


def _abandon(epoch: int, _metric: float) -> None:
    if epoch == 1:  # as a search cuts a hopeless trial short
        raise _Abandoned


@pytest.mark.parametrize("abandoned", [False, True])
def test_training_reports_every_batch_and_always_ends(abandoned):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(160, 4), torch.randint(0, 3, (160,)))
    heard: list[tuple[int, int]] = []
    with progress.shown_by(lambda what, done, total: heard.append((done, total))):
        try:
            fit(
                torch.nn.Linear(4, 3),
                DataLoader(data, batch_size=40),
                "multiclass",
                epochs=30,
                patience=100 if abandoned else None,
                on_epoch=_abandon,
                steps="training",
            )
        except _Abandoned:
            assert abandoned
    total = heard[-1][1]
    assert heard[-1] == (total, total)  # ended, cut short or not
    batches = [done for done, _ in heard]
    assert batches == sorted(batches) and batches[0] == 1
    if not abandoned:  # 4 batches an epoch (no holdout), every one reported
        assert batches == list(range(1, 30 * 4 + 1))
    else:  # two epochs of 144 samples (the rest held out: 4 batches each), then the end
        assert batches == [*range(1, 9), total]


def test_work_over_items_ends_however_its_loop_ends():
    heard: list[tuple[int, int]] = []
    with progress.shown_by(lambda what, done, total: heard.append((done, total))):
        for item in progress.each("layers", ["a", "b", "c"]):
            if item == "b":
                break
    assert heard == [(0, 3), (1, 3), (3, 3)]
