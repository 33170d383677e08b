"""Progress a person can watch: on a terminal the search shows a bar with its trials done, an
ETA and the best trade-off so far; elsewhere it prints plain lines."""

import io

from rich.console import Console

from fulcrum.cli.progress import SearchProgress


def _messages() -> list[str]:
    return [
        "measuring the baseline",
        "trial 0: quantize",
        "[1/4] best within budget: trial 0, latency_ms 0.2 (2.00x better), drop 0.10 pt",
        "trial 1: prune:0.5 > quantize",
        "[2/4] best within budget: trial 1, latency_ms 0.1 (4.00x better), drop 0.40 pt",
    ]


def test_on_a_terminal_the_search_shows_a_bar_with_its_trials_and_an_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    with SearchProgress(console) as progress:
        for message in _messages():
            progress(message)
        assert progress.progress is not None and progress.task is not None
        task = progress.progress.tasks[progress.task]
        assert (task.completed, task.total) == (2, 4)
    text = out.getvalue()
    assert "2/4" in text and "ETA" in text and "4.00x better" in text
    assert "measuring the baseline" in text  # other lines still printed


def test_elsewhere_every_line_is_printed_plainly():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160)
    with SearchProgress(console) as progress:
        for message in _messages():
            progress(message)
        assert progress.progress is None
    assert out.getvalue().splitlines() == _messages()
