"""A minimal progress bar on stderr (count, rate, ETA): enough for a long demo-data run, no dependency."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`update(n)` after each batch; redraws at most every `interval` seconds so it costs nothing per row."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream: TextIO | None = None,
                 width: int = 30, interval: float = 0.2) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._drawn_done = -1
        # A log file or CI pipe gets whole lines (no carriage returns), fewer of them.
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if not self._tty:
            self.interval = max(interval, 5.0)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= self.interval or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.label} [{bar}] {frac * 100:5.1f}% {self.done:,}/{self.total:,} "
                f"{rate:,.0f}/s elapsed {_clock(elapsed)} ETA {_clock(eta)}")

    def _draw(self, now: float) -> None:
        self._drawn_done = self.done
        text = self.line(now)
        if self._tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._drawn_done != self.done:
            self._draw(time.monotonic())
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()
