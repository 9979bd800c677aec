"""An injected clock for unit tests: time moves only when the test says so."""

from __future__ import annotations


class Clock:
    """A monotonic clock (seconds) that only moves when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
