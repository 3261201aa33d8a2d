"""What a long stage says while it works: elapsed time and sizes, for its log lines."""

from __future__ import annotations

import time
from typing import Any


class Stopwatch:
    """Seconds since it was made; formats as `12.3 s` in a log line."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Seconds elapsed."""
        return time.perf_counter() - self.started

    def __str__(self) -> str:
        return f"{self.seconds():.1f} s"


def megabytes(frame: Any) -> str:
    """A pandas object's in-memory size, strings included, as `123 MB`."""
    return f"{frame.memory_usage(deep=True).sum() / 1e6:,.0f} MB"
