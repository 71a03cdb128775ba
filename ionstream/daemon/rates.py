"""Small helpers for live figures: rates from cumulative counters, latency percentiles."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RateWindow:
    """Per-second rates of cumulative counters over a fixed trailing window.

    One owner (the daemon's status tick) calls :meth:`sample`; readers get the rates that tick
    computed, so who asks and how often never changes the figure (a monitor polling every 5 s
    and the status line see the same scans/s).
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def sample(self, counters: dict[str, float], now: float | None = None) -> dict[str, float]:
        """Add the counters read at ``now`` (monotonic seconds); return rates over the window."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, first = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return {k: 0.0 for k in counters}
        return {k: (v - first.get(k, v)) / dt for k, v in counters.items()}


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
