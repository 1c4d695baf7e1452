"""Time behind a small protocol, so the daemon's schedule and backoff are testable."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, UTC (report timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (schedules and backoff)."""
        ...

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`; returns early when `wake()` is called (signals)."""
        ...

    def wake(self) -> None: ...


class SystemClock:
    def __init__(self) -> None:
        self._event = threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._event.wait(seconds)
        self._event.clear()

    def wake(self) -> None:
        self._event.set()


class FakeClock:
    """A clock that only moves when waited on: `wait(s)` advances both clocks by `s`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self.waits: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def wait(self, seconds: float) -> None:
        step = max(seconds, 0.0)
        self.waits.append(step)
        self._mono += step
        self._now += timedelta(seconds=step)

    def wake(self) -> None:
        pass
