"""How far long work has got: first-use training, calibration, sensitivity analysis.

Work reports ``step(what, done, total)``; whoever listens shows it. The CLI listens with a bar
and an ETA when attached to a terminal (``fulcrum.cli.progress``). Without a listener, progress
becomes plain log lines (CI logs stay readable): one when a piece of work has run ``PLAIN_EVERY``
seconds since its last line, and one at its end if it took that long at all, so that short work
prints nothing; under ``-v`` (the ``fulcrum`` logger at DEBUG) every step is a line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

log = logging.getLogger("fulcrum")

Listener = Callable[[str, int, int], None]
PLAIN_EVERY = 15.0  # seconds between plain lines of one piece of work

_listener: ContextVar[Listener | None] = ContextVar("fulcrum_progress", default=None)
# per piece of work: (when it started, when its last plain line was written)
_plain: dict[str, tuple[float, float]] = {}
T = TypeVar("T")


def step(what: str, done: int, total: int) -> None:
    """``done`` of ``total`` steps of ``what`` (say, "training the digits baseline (epochs)")
    are done; the first call starts it, ``done == total`` ends it."""
    listener = _listener.get()
    if listener is not None:
        listener(what, done, total)
        return
    now = time.monotonic()
    started, last = _plain.setdefault(what, (now, now))
    finished = done >= total
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: %d/%d", what, done, total)
    elif now - last >= PLAIN_EVERY or (finished and now - started >= PLAIN_EVERY):
        log.info("%s: %d/%d (%.0f s)", what, done, total, now - started)
        _plain[what] = (started, now)
    if finished:
        _plain.pop(what, None)


def each(what: str, items: Sequence[T]) -> Iterator[T]:
    """``items`` one by one, each a step of ``what``; the work ends with the loop, however the
    loop ends."""
    try:
        for done, item in enumerate(items):
            step(what, done, len(items))
            yield item
    finally:
        step(what, len(items), len(items))


@contextmanager
def shown_by(listener: Listener) -> Iterator[None]:
    """Within this block, ``listener`` receives every step instead of the log."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
