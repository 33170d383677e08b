"""Progress a person can watch: bars with an ETA on a terminal, plain lines elsewhere (CI logs
stay readable).

One ``Display`` per command shows two kinds of progress in one live area (a terminal has room
for one): the steps of long work reported through ``fulcrum.progress`` (first-use training,
calibration, sensitivity analysis), a bar each while it runs; and the search's progress
callback of strings, where a line that starts ``[done/total]`` (the search's per-trial line,
``fulcrum.search.loop.best_so_far``) moves the trials' bar, its text (the best trade-off
within budget so far) shown beside it, and every other line is printed above the bars.
Off a terminal the steps are left to the log's plain lines, and the search's lines are printed
as they come. Under ``-q`` nothing but warnings and the results is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fulcrum import progress as steps

STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


class Display:
    """A context manager: the command's live area, started at its first bar and stopped at the
    end; within it, ``fulcrum.progress`` steps come here (on a terminal)."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Display:
        self._listening = self._listen()
        self._listening.__enter__()
        return self

    @contextmanager
    def _listen(self) -> Iterator[None]:
        if self.quiet:
            with steps.shown_by(lambda _what, _done, _total: None):
                yield
        elif self.live:
            with steps.shown_by(self.step):
                yield
        else:  # the log's plain lines
            yield

    def _bars(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[best]}"),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        return self.progress

    def step(self, what: str, done: int, total: int) -> None:
        """A ``fulcrum.progress`` listener: a bar per piece of work, gone when it ends."""
        bars = self._bars()
        if what not in self.tasks:
            self.tasks[what] = bars.add_task(escape(what), total=total, best="")
        bars.update(self.tasks[what], completed=done, total=total)
        if done >= total:
            bars.remove_task(self.tasks.pop(what))

    def say(self, message: str) -> None:
        """A line of what is being done (above the bars on a terminal); nothing under -q."""
        if not self.quiet:
            self.console.print(f"[dim]{escape(message)}[/dim]")

    def search(self, message: str) -> None:
        """The search's progress callback (see the module's text)."""
        found = STEP.match(message)
        if found is None or not self.live:
            self.say(message)
            return
        done, total, best = int(found[1]), int(found[2]), found[3]
        bars = self._bars()
        if "trials" not in self.tasks:
            self.tasks["trials"] = bars.add_task("trials", total=total, best="")
        bars.update(self.tasks["trials"], completed=done, total=total, best=escape(best))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
        self._listening.__exit__(kind, error, trace)
