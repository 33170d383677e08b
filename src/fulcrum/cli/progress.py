"""Progress a person can watch: a bar with the trials done and an ETA on a terminal, plain lines
elsewhere (CI logs stay readable).

The search reports through one callback of strings; a line that starts ``[done/total]`` (the
search's per-trial line, ``fulcrum.search.loop.best_so_far``) moves the bar, and its text (the
best trade-off within budget so far) is shown beside it. Every other line is printed above the
bar as before.
"""

from __future__ import annotations

import re
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

STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


class SearchProgress:
    """A context manager whose ``__call__`` is the search's progress callback."""

    def __init__(self, console: Console, what: str = "trials") -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.what = what

    def __enter__(self) -> SearchProgress:
        if self.live:
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
        return self

    def __call__(self, message: str) -> None:
        step = STEP.match(message)
        if step is None or self.progress is None:
            self.console.print(f"[dim]{escape(message)}[/dim]")
            return
        done, total, best = int(step[1]), int(step[2]), step[3]
        if self.task is None:
            self.task = self.progress.add_task(self.what, total=total, best="")
        self.progress.update(self.task, completed=done, total=total, best=escape(best))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
