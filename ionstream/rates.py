"""Small helpers for live figures: rates from cumulative counters, latency percentiles."""
from __future__ import annotations

import threading
import time

import numpy as np


class RateMeter:
    """Per-second rates of cumulative counters, from the last two snapshots."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._last_t = time.monotonic()

    def update(self, counters: dict[str, float]) -> dict[str, float]:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        rates = {k: (v - self._last.get(k, v)) / dt for k, v in counters.items()}
        self._last, self._last_t = dict(counters), now
        return rates


class LatencyWindow:
    """Latencies (ns) of the most recent ``size`` events, in a preallocated circular buffer.

    ``add`` is called by one thread (the one that observes the event); ``percentiles`` may be
    called from another: it copies the window, so a torn read costs at most one sample.
    """

    def __init__(self, size: int = 4096) -> None:
        self._values = np.zeros(size, dtype=np.int64)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, latency_ns: int) -> None:
        self._values[self._count % len(self._values)] = latency_ns
        self._count += 1

    def percentiles(self, qs: tuple[float, ...] = (50, 99)) -> dict[float, float]:
        """Percentiles in milliseconds (NaN when empty)."""
        n = min(self._count, len(self._values))
        if n == 0:
            return {q: float("nan") for q in qs}
        window = self._values[:n].copy()
        return {q: float(v) / 1e6 for q, v in zip(qs, np.percentile(window, qs))}

    def __len__(self) -> int:
        return self._count
