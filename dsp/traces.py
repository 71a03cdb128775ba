"""Continuous traces across scans: TIC and extracted-ion traces, a causal streaming filter, and
elution events decided in real time.

Feed scans in order (``TraceProcessor.push`` takes one or many per call); filtering and event
detection are per-sample state machines, so pushing a stream in chunks of any size gives exactly
what pushing it in one call gives (bit for bit: ``scipy.signal.sosfilt`` with its state ``zi``
carried over).

Channels: 0 is the TIC, 1..K the extracted-ion windows, all in counts (baseline-subtracted sums,
``dsp.processor.ScanResult.tic`` and ``.xic``).

Elution events (per channel, on the filtered trace ``y``):

* the trace baseline ``b`` and noise ``s`` are estimated during the first ``warmup`` points (median
  and 1.4826 MAD) and then follow the trace while no peak is open (exponential averages with time
  constant ``baseline_points``; the noise as 1.2533 times the mean absolute deviation);
* a peak opens when ``y - b > on_sigma * s`` for ``confirm`` consecutive points, also rising
  ``on_sigma * s`` above the lowest value since the last peak ended (so a slowly decaying tail
  that hovers between the thresholds does not reopen one); its start is the point after the last
  one at or below ``off_sigma * s`` before that. A START event is emitted then (``confirm``
  points after the trace crossed ``on_sigma``);
* one APEX event per peak, once the trace has stayed ``max(apex_drop * height, apex_sigma * s)``
  below the running maximum for ``confirm`` points (the END event carries the final apex);
* the peak closes when ``y - b <= off_sigma * s`` for ``confirm`` consecutive points (END at the
  first of them), when it falls to a valley below ``valley_fraction`` of the apex height and then
  rises for ``confirm`` points and ``on_sigma * s`` above the valley (END at the valley; a new
  peak opens there), or after
  ``max_points`` points (END with ``truncated``). The END event carries start, apex, end, height and
  area (trapezoids of ``y - b`` over time, counts x s).

Every decision is made at most ``confirm`` points after the point it concerns, and no peak stays
open longer than ``max_points``: the delay is bounded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.signal

__all__ = ["StreamingSOS", "ElutionDetector", "EventParams", "TraceProcessor", "EVENT_DTYPE", "START", "APEX",
           "END", "design_lowpass"]

START, APEX, END = 1, 2, 3

EVENT_DTYPE = np.dtype([
    ("kind", "u1"),           # START, APEX or END
    ("truncated", "?"),       # END forced by max_points
    ("channel", "i2"),        # 0 = TIC, k = XIC window k-1
    ("emitted", "i8"),        # index of the point whose arrival emitted the event
    ("start", "i8"), ("apex", "i8"), ("end", "i8"),                         # point indices (-1: not yet)
    ("start_time", "f8"), ("apex_time", "f8"), ("end_time", "f8"),          # s (NaN: not yet)
    ("height", "f8"),         # apex height above the trace baseline, counts
    ("area", "f8"),           # counts x s (END only)
    ("baseline", "f8"),       # trace baseline at the start, counts
    ("noise", "f8"),          # trace noise sigma at the start, counts
])
"""One elution event. Point indices count pushed scans from 0; times are those pushed."""


def design_lowpass(cutoff: float, order: int = 2) -> np.ndarray:
    """Butterworth low-pass SOS; ``cutoff`` as a fraction of the Nyquist rate of the scan sequence
    (0 < cutoff < 1: 0.2 passes elution peaks wider than about 10 scans)."""
    if not 0 < cutoff < 1:
        raise ValueError(f"cutoff must be in (0, 1) (fraction of Nyquist), got {cutoff!r}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order!r}")
    return scipy.signal.butter(order, cutoff, output="sos")


class StreamingSOS:
    """Causal IIR filtering of C channels in chunks; the state ``zi`` is carried between calls.

    The first sample of each channel sets the initial state to the filter's steady state for that
    value (``sosfilt_zi * x0``), so a trace starting at a high level has no start-up transient.
    """

    def __init__(self, sos, n_channels: int = 1):
        self.sos = np.atleast_2d(np.asarray(sos, dtype=np.float64))
        if self.sos.ndim != 2 or self.sos.shape[1] != 6:
            raise ValueError(f"sos must have shape (n_sections, 6), got {self.sos.shape}")
        if n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {n_channels!r}")
        self.n_channels = n_channels
        self.zi: np.ndarray | None = None     # (n_sections, 2, n_channels)
        self._zi1 = scipy.signal.sosfilt_zi(self.sos)
        if not np.all(self.sos[:, 3] == 1.0):
            raise ValueError("sos sections must be normalised (a0 == 1), as scipy.signal.butter returns them")
        self._rows = [tuple(float(v) for v in row) for row in self.sos]

    def reset(self) -> None:
        self.zi = None

    def __call__(self, x) -> np.ndarray:
        """Filter ``x`` (n, C) or (n,) for one channel; returns float64 of the same shape."""
        a = np.asarray(x, dtype=np.float64)
        one = a.ndim == 1
        if one:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != self.n_channels:
            raise ValueError(f"expected shape (n, {self.n_channels}), got {np.shape(x)}")
        if a.shape[0] == 0:
            return a[:, 0].copy() if one else a.copy()
        if self.zi is None:
            self.zi = self._zi1[:, :, None] * a[0][None, None, :]
        if a.shape[0] == 1:
            y = self._one_point(a)
        else:
            y, self.zi = scipy.signal.sosfilt(self.sos, a, axis=0, zi=self.zi)
        return y[:, 0] if one else y

    def _one_point(self, a: np.ndarray) -> np.ndarray:
        """One sample per channel: the daemon pushes a point per scan, and sosfilt's set-up costs
        30 us per call against ~2 us for these few multiplications. Same recurrence and operation
        order as scipy's sosfilt (transposed direct form II), so the results are identical."""
        zi = self.zi
        y = np.empty_like(a)
        for c in range(self.n_channels):
            v = float(a[0, c])
            for s, (b0, b1, b2, _, a1, a2) in enumerate(self._rows):
                out = b0 * v + float(zi[s, 0, c])
                zi[s, 0, c] = b1 * v - a1 * out + float(zi[s, 1, c])
                zi[s, 1, c] = b2 * v - a2 * out
                v = out
            y[0, c] = v
        return y


@dataclass(frozen=True)
class EventParams:
    """Elution-event detection (see the module docstring). Counts in points (scans), thresholds in
    multiples of the trace noise sigma."""

    on_sigma: float = 5.0
    off_sigma: float = 2.0
    confirm: int = 3
    apex_drop: float = 0.05
    apex_sigma: float = 3.0
    valley_fraction: float = 0.5
    max_points: int = 2000
    warmup: int = 20
    baseline_points: int = 200
    min_noise: float = 1e-9

    def __post_init__(self):
        if not self.on_sigma > self.off_sigma >= 0:
            raise ValueError(f"need on_sigma > off_sigma >= 0, got {self.on_sigma!r}, {self.off_sigma!r}")
        if self.confirm < 1:
            raise ValueError(f"confirm must be >= 1 point, got {self.confirm!r}")
        if not 0 <= self.apex_drop < 1 or not 0 < self.valley_fraction < 1 or self.apex_sigma < 0:
            raise ValueError("apex_drop must be in [0, 1) and valley_fraction in (0, 1)")
        if self.max_points < 2 * self.confirm or self.warmup < 3 or self.baseline_points < 1:
            raise ValueError("need max_points >= 2 * confirm, warmup >= 3, baseline_points >= 1")


class ElutionDetector:
    """Causal elution events for one channel; ``update(index, time_s, y)`` per point returns the
    EVENT_DTYPE rows (tuples) decided by that point."""

    IDLE, PEAK = 0, 1

    def __init__(self, channel: int = 0, params: EventParams | None = None):
        self.channel = channel
        self.p = params or EventParams()
        self._warm: list[float] = []
        self.base = 0.0
        self.noise = 0.0
        self.state = self.IDLE
        self._above = 0              # consecutive idle points above on_sigma
        self._last_low = -1          # last idle point at or below off_sigma
        self._pending: list = []     # idle points (index, time, value) since the last low one
        self._trough = 0.0           # lowest value since the last END (a new start must rise on_sigma above it)
        self._reset_peak()

    # -- peak bookkeeping ------------------------------------------------------------------------
    def _reset_peak(self):
        self.start = -1
        self.start_time = float("nan")
        self.apex = -1
        self.apex_time = float("nan")
        self.height = float("nan")
        self.area = 0.0
        self._prev = None            # (time, value) of the previous point of the peak
        self._trail: list = []       # points of the open peak (index, time, value, area so far)
        self._apex_sent = False
        self._drop = 0               # consecutive points clearly below the maximum
        self._below = 0              # consecutive points at or below off_sigma
        self._first_below = None     # (index, time, area) of the first of them
        self._valley = None          # (position in _trail) of the lowest point below valley_fraction
        self._rising = 0
        self.start_base = 0.0
        self.start_noise = 0.0

    def _add(self, i, t, v):
        if self._prev is not None:
            self.area += 0.5 * (self._prev[1] + v) * (t - self._prev[0])
        self._prev = (t, v)
        self._trail.append((i, t, v, self.area))
        if len(self._trail) > self.p.max_points:
            del self._trail[0]
            if self._valley is not None:
                self._valley -= 1
        if not (v <= self.height):   # new maximum (also the first point: height is NaN)
            self.height, self.apex, self.apex_time = v, i, t
            self._valley = None
            self._rising = 0
            self._drop = 0

    def _open(self, points):
        """Open a peak whose first points (index, time, value) are ``points``."""
        self.state = self.PEAK
        self.start, self.start_time = points[0][0], points[0][1]
        self.start_base, self.start_noise = self.base, self.noise
        for i, t, v in points:
            self._add(i, t, v)

    def _event(self, kind, emitted, end=-1, end_time=float("nan"), area=float("nan"), truncated=False):
        return (kind, truncated, self.channel, emitted, self.start, self.apex, end, self.start_time,
                self.apex_time, end_time, self.height, area, self.start_base, self.start_noise)

    def _close(self, index, value):
        self.state = self.IDLE
        self._reset_peak()
        self._above = 0
        self._pending = []
        self._last_low = index
        self._trough = value

    # -- the state machine ------------------------------------------------------------------------
    def update(self, index: int, time_s: float, y: float) -> list:
        p = self.p
        events = []
        if len(self._warm) < p.warmup:
            self._warm.append(y)
            if len(self._warm) == p.warmup:
                w = np.asarray(self._warm)
                self.base = float(np.median(w))
                self.noise = max(1.4826 * float(np.median(np.abs(w - self.base))), p.min_noise)
                self._last_low = index
            return events
        v = y - self.base
        s = max(self.noise, p.min_noise)
        if self.state == self.IDLE:
            if v < self._trough:
                self._trough = v
            if v <= p.off_sigma * s:
                self._above = 0
                self._pending = []
                self._last_low = index
                a = 1.0 / p.baseline_points          # follow baseline and noise while idle
                self.base += a * v
                self.noise += a * (1.2533 * abs(v) - self.noise)
                return events
            self._pending.append((index, time_s, v))
            if len(self._pending) > p.max_points:
                del self._pending[0]
            self._above = self._above + 1 if (v > p.on_sigma * s and v - self._trough > p.on_sigma * s) else 0
            if self._above >= p.confirm:
                self._open(self._pending)
                self._pending = []
                events.append(self._event(START, index))
            return events

        self._add(index, time_s, v)
        if index != self.apex and v <= self.height - max(p.apex_drop * self.height, p.apex_sigma * s):
            self._drop += 1
        elif index != self.apex:
            self._drop = 0
        if not self._apex_sent and self._drop >= p.confirm:
            self._apex_sent = True
            events.append(self._event(APEX, index))
        if v < p.valley_fraction * self.height:
            last = len(self._trail) - 1
            if self._valley is None or v < self._trail[self._valley][2]:
                self._valley = last
                self._rising = 0
            elif v > self._trail[last - 1][2]:
                self._rising += 1
            else:
                self._rising = 0
        if v <= p.off_sigma * s:
            if self._below == 0:
                self._first_below = (index, time_s, self.area)
            self._below += 1
            if self._below >= p.confirm:
                ei, et, ea = self._first_below
                events.append(self._event(END, index, ei, et, ea))
                self._close(index, v)
            return events
        self._below = 0
        if (self._valley is not None and self._rising >= p.confirm
                and v - self._trail[self._valley][2] > p.on_sigma * s):
            vi, vt, vv, va = self._trail[self._valley]
            after = [(i, t, x) for i, t, x, _ in self._trail[self._valley:]]
            events.append(self._event(END, index, vi, vt, va))
            self._reset_peak()
            self._open(after)              # a new peak from the valley on
            events.append(self._event(START, index))
            return events
        if index - self.start + 1 >= p.max_points:
            events.append(self._event(END, index, index, time_s, self.area, truncated=True))
            self._close(index, v)
        return events


@dataclass
class TraceProcessor:
    """TIC + extracted-ion traces: streaming low-pass filter, then elution events per channel.

    Parameters
    ----------
    n_xic : int
        Number of extracted-ion windows (channels 1..n_xic; channel 0 is the TIC).
    sos : array (n_sections, 6), optional
        The causal filter; default ``design_lowpass(cutoff, order)``. ``None`` with
        ``cutoff=None``: no filtering.
    cutoff, order : float, int
        Low-pass design when ``sos`` is not given (cutoff: fraction of the scan Nyquist rate).
    events : EventParams
        Elution-event detection.
    """

    n_xic: int = 0
    sos: np.ndarray | None = None
    cutoff: float | None = 0.2
    order: int = 2
    events: EventParams = field(default_factory=EventParams)

    def __post_init__(self):
        if self.n_xic < 0:
            raise ValueError(f"n_xic must be >= 0, got {self.n_xic!r}")
        self.n_channels = 1 + self.n_xic
        if self.sos is None and self.cutoff is not None:
            self.sos = design_lowpass(self.cutoff, self.order)
        self._filter = StreamingSOS(self.sos, self.n_channels) if self.sos is not None else None
        self._detectors = [ElutionDetector(c, self.events) for c in range(self.n_channels)]
        self.count = 0

    def push(self, times, tic, xic=None):
        """Add points (scans) in order.

        Parameters
        ----------
        times : float or array (n,)
            Scan times, s (increasing).
        tic : float or array (n,)
            TIC per scan, counts.
        xic : array (n, n_xic) or (n_xic,), optional
            Extracted-ion sums per scan, counts.

        Returns
        -------
        filtered : ndarray (n, 1 + n_xic)
            The filtered traces (float64).
        events : ndarray of EVENT_DTYPE
            Events decided by these points, in order.
        """
        t = np.atleast_1d(np.asarray(times, dtype=np.float64))
        n = t.size
        x = np.empty((n, self.n_channels))
        x[:, 0] = np.broadcast_to(np.asarray(tic, dtype=np.float64), (n,))
        if self.n_xic:
            if xic is None:
                raise ValueError(f"{self.n_xic} extracted-ion values per scan expected, got none")
            x[:, 1:] = np.asarray(xic, dtype=np.float64).reshape(n, self.n_xic)
        y = self._filter(x) if self._filter is not None else x
        rows = []
        for k in range(n):
            idx = self.count + k
            for c, det in enumerate(self._detectors):
                rows.extend(det.update(idx, float(t[k]), float(y[k, c])))
        self.count += n
        return y, np.array(rows, dtype=EVENT_DTYPE) if rows else np.zeros(0, EVENT_DTYPE)

    def push_result(self, time_s: float, result):
        """Add one :class:`dsp.processor.ScanResult` (its ``tic`` and ``xic``)."""
        return self.push(time_s, result.tic, result.xic if self.n_xic else None)
