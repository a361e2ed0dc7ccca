"""Progress of long work (training, import, simulation, evaluation, the demo), the same everywhere:
a tqdm bar with rate and time left on a terminal, plain log lines elsewhere (CI logs, files: no
carriage returns), and one summary line at the end saying what, how many, how long and how fast.

    with progress("rank", total=epochs * batches, unit="batches") as bar:
        for batch in ...:
            bar.update(1, epoch=epoch)

Callers pass totals and units (plural: "batches", "rows", "users"); everything goes to stderr, so
a command's own output on stdout stays clean for pipes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LINE_EVERY_FRACTION = 0.1  # off a terminal: a line each tenth of the total ...
LINE_EVERY_S = 30.0  # ... or after this long without one (also when the total is unknown)


def _is_lead_process() -> bool:
    """False in the other processes of a torchrun / DDP job: one bar per job, not one per GPU."""
    return os.environ.get("RANK", "0") == "0"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


class Progress:
    """One piece of long work: `update` as it advances, `close` (or the `progress` context) ends
    it with the summary line. `lines=True` draws each update as its own line even on a terminal,
    for work whose steps print output of their own between updates (the demo)."""

    def __init__(
        self,
        what: str,
        total: float | None,
        unit: str,
        stream: TextIO | None = None,
        enabled: bool = True,
        lines: bool = False,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream: TextIO = sys.stderr if stream is None else stream
        self.enabled = enabled and _is_lead_process()
        self.n: float = 0
        self.notes: dict[str, object] = {}
        self.started = time.perf_counter()
        self._last_line_at, self._last_line_n = self.started, 0.0
        self._closed = False
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_update = lines  # a line per update, not per tenth
        self._bar: tqdm | None = None
        if self.enabled and self.terminal and not lines:
            self._bar = tqdm(total=total, unit=f" {unit}", desc=what, file=self.stream, leave=False)

    def update(self, n: float = 1, **notes: object) -> None:
        """`n` more units done; `notes` (epoch=3, loss=0.41) are shown beside the count."""
        self.n += n
        self.notes |= notes
        if not self.enabled:
            return
        if self._bar is not None:
            if notes:
                self._bar.set_postfix(self.notes, refresh=False)
            self._bar.update(n)
        elif self._line_due():
            self._line()

    def note(self, **notes: object) -> None:
        """Notes shown beside the count from now on (epoch=3, loss=0.41), the summary included."""
        self.update(0, **notes)

    def set_total(self, total: float) -> None:
        """A better estimate of the total (an import that learns its row count as it reads)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar is taken off the terminal for the block (work that prints or draws bars of its
        own, like a retrain between simulated days) and drawn again after it."""
        if self._bar is None:
            yield
            return
        self._bar.clear()
        try:
            yield
        finally:
            self._bar.refresh()

    def close(self, summary: bool = True) -> None:
        """Ends the bar and prints the summary line (once); `summary=False`: work that failed."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.enabled and summary:
            print(self.summary(), file=self.stream, flush=True)

    def summary(self) -> str:
        seconds = time.perf_counter() - self.started
        rate = self.n / seconds if seconds > 0 else 0.0
        line = (
            f"{self.what}: {_count(self.n)} {self.unit} in {_duration(seconds)} "
            f"({_rate(rate)} {self.unit}/s)"
        )
        return line + self._notes_text()

    def _notes_text(self) -> str:
        return "".join(f", {key} {value}" for key, value in self.notes.items())

    def _line_due(self) -> bool:
        now = time.perf_counter()
        if self.every_update:
            return True
        if now - self._last_line_at >= LINE_EVERY_S:
            return True
        if not self.total:
            return False
        step = self.total * LINE_EVERY_FRACTION
        return self.n // step > self._last_line_n // step

    def _line(self) -> None:
        now = time.perf_counter()
        self._last_line_at, self._last_line_n = now, self.n
        seconds = now - self.started
        if self.terminal:  # the bar drawn as a line of its own (lines=True on a terminal)
            meter = tqdm.format_meter(
                self.n, self.total, seconds, ncols=100, prefix=self.what, unit=f" {self.unit}"
            )
            print(meter + self._notes_text(), file=self.stream, flush=True)
            return
        rate = self.n / seconds if seconds > 0 else 0.0
        if self.total:
            done = f"{_count(self.n)}/{_count(self.total)} {self.unit} ({self.n / self.total:.0%})"
            left = (self.total - self.n) / rate if rate > 0 else None
            eta = f", {_duration(max(left, 0.0))} left" if left is not None else ""
        else:
            done, eta = f"{_count(self.n)} {self.unit}", ""
        print(
            f"{self.what}: {done}, {_rate(rate)} {self.unit}/s{eta}{self._notes_text()}",
            file=self.stream,
            flush=True,
        )


@contextmanager
def progress(
    what: str,
    total: float | None,
    unit: str,
    stream: TextIO | None = None,
    enabled: bool = True,
    lines: bool = False,
) -> Iterator[Progress]:
    """A `Progress` that ends with its summary line when the block completes (without one when
    it raises: the error says what happened)."""
    bar = Progress(what, total, unit, stream, enabled, lines)
    try:
        yield bar
    except BaseException:
        bar.close(summary=False)
        raise
    bar.close()


def track(
    items: Iterable[T],
    what: str,
    unit: str,
    total: float | None = None,
    stream: TextIO | None = None,
    enabled: bool = True,
) -> Iterator[T]:
    """`items` with a progress bar (one unit each); `total` defaults to len(items)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress(what, total, unit, stream, enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
