"""Per-scan work of the pipeline, shared by the daemon, reprocessing and mzML export.

:class:`ScanWork` turns one scan (ring slot or capture record) into a :class:`ProcessedScan`:
DSP (``dsp.processor.ScanProcessor``: baseline, smoothing, peaks, centroids, TIC/XIC) and the
classifier's feature vector. One instance per worker thread: it owns reusable buffers.

:class:`TraceEvents` runs the TIC/XIC points through ``dsp.traces.TraceProcessor`` in scan
order and names its elution events; the daemon's sequencer and ``ionstream reprocess`` both
use it, so live and offline results are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dsp.processor import ScanParams, ScanProcessor
from instrument.frames import HEADER_SIZE, FrameHeader
from instrument.imaging import position_of
from instrument.ring import Slot
from ionstream.client.wire import PEAK_FIELDS
from ionstream.config import DspConfig

__all__ = ["PEAK_FIELDS", "DEFAULT_SMOOTHING", "ProcessedScan", "ScanWork", "TraceEvents", "dsp_params",
           "scan_params", "trace_names"]

# PEAK_FIELDS (name, little-endian dtype), the one list of peak columns, is the wire layout of the
# `peaks` topic: it is defined in ionstream.client.wire so that the client library needs no DSP.

DEFAULT_SMOOTHING: str = DspConfig.smoothing
"""The configuration's default ``[dsp] smoothing``; a preset's own choice wins over it."""


def dsp_params(dsp_config: Any) -> dict[str, Any]:
    """The ScanProcessor parameters of a ``[dsp]`` section (an ionstream.config.DspConfig, or any
    object with ``smoothing``, ``min_snr`` and optionally ``preset``): what the daemon, reprocess and
    the mzML tools give :func:`scan_params`."""
    return {"smoothing": dsp_config.smoothing, "min_snr": dsp_config.min_snr,
            "preset": getattr(dsp_config, "preset", "") or ""}


def trace_names(xic: Any) -> list[str]:
    """Names of the ``trace`` topic's values for these XIC windows (m/z): ``tic``, ``xic:LO-HI``..."""
    return ["tic"] + [f"xic:{lo:g}-{hi:g}" for lo, hi in xic]


@dataclass(slots=True)
class ProcessedScan:
    peaks: dict[str, np.ndarray]           # PEAK_FIELDS arrays, sorted by m/z; owned (fresh per scan)
    tic: float                             # total ion current (counts, baseline removed)
    xic: np.ndarray                        # one value per configured m/z window (counts, float64)
    features: np.ndarray | None            # classifier input (float32), or None without a model
    # (mz, intensity, release): pooled or read-only arrays, never views of a ring slot; call
    # release (or hand it to Publisher.publish) once they are no longer needed.
    spectrum: tuple[np.ndarray, np.ndarray, Callable[[], None]] | None = None
    ms_level: int = 1
    polarity: str = "positive"
    skipped: str = ""                      # why the DSP could not analyse the scan ("" = analysed; dsp.processor)
    position: Any = None                   # instrument.imaging.PixelPosition of an imaging scan, else None
    mz_range: tuple[float, float] | None = None  # first and last m/z of the axis (with features: the model's coverage)


def scan_params(dsp_params: dict[str, Any], xic_windows: list[tuple[float, float]] = ()) -> ScanParams:
    """ScanParams from the configuration's ``[dsp]`` values (``smoothing``, ``min_snr``, ``preset``,
    any other ScanParams field) and the XIC windows (m/z). A wrong name raises TypeError naming it.
    With a preset, ``smoothing`` at the configuration's default ('savgol') leaves the preset's choice."""
    params = dict(dsp_params)
    preset = params.pop("preset", "") or ""
    if preset and params.get("smoothing") == DEFAULT_SMOOTHING:
        del params["smoothing"]
    return ScanParams.for_preset(preset, **params, xic=tuple((float(lo), float(hi)) for lo, hi in xic_windows))


class ScanWork:
    """Callable turning one ring slot into a ProcessedScan (one instance per worker thread)."""

    def __init__(self, *, dsp_params: dict[str, Any], xic_windows: list[tuple[float, float]],
                 feature_spec=None, spectrum_pool=None):
        self._dsp = ScanProcessor(scan_params(dsp_params, xic_windows))
        self._features = None
        if feature_spec is not None:
            from dsp.features import FeatureExtractor

            self._features = FeatureExtractor(feature_spec)
        self._spectrum_pool = spectrum_pool

    @classmethod
    def from_config(cls, dsp_config: Any, *, feature_spec=None, spectrum_pool=None) -> "ScanWork":
        """The ScanWork of a ``[dsp]`` section (see :func:`dsp_params`; ``xic`` gives the windows):
        the one construction the daemon's workers, reprocess and the mzML tools share."""
        return cls(dsp_params=dsp_params(dsp_config), xic_windows=[tuple(w) for w in dsp_config.xic],
                   feature_spec=feature_spec, spectrum_pool=spectrum_pool)

    def __call__(self, slot: Slot) -> ProcessedScan:
        scan = self.process(slot.header, slot.samples(), slot.mz_axis())
        if slot.header.header_size > HEADER_SIZE:  # a longer header may carry a pixel position
            scan.position = position_of(slot.frame, slot.header.header_size)
        return scan

    def process(self, h: FrameHeader, samples: np.ndarray, mz: np.ndarray | None) -> ProcessedScan:
        """One scan: ``samples`` as the frame carries them (counts), ``mz`` the frame's explicit
        axis (float64 m/z) or None for a TOF frame (its calibration gives the axis)."""
        if mz is None:
            result = self._dsp.process(samples, h.calibration)
            if self._features is None and self._spectrum_pool is None:
                axis = None  # nothing below needs it: skip the lookup
            else:
                axis = self._dsp.mz_axis(h.calibration, len(samples))
        else:
            result = self._dsp.process(samples, mz)
            axis = mz
        # result.peaks is a view of the processor's buffer, overwritten by the next scan.
        peaks = {name: np.array(result.peaks[name], dtype=dtype, copy=True) for name, dtype in PEAK_FIELDS}
        # A scan the DSP skipped (too short, axis not increasing) has no features: no class message.
        features = None if self._features is None or result.skipped else self._features(axis, samples)
        spectrum = None
        if self._spectrum_pool is not None and len(samples) <= self._spectrum_pool.shape[0]:
            spectrum = self._spectrum(axis, result.intensity, explicit=mz is not None)
        # result.xic is a fresh float64 array for each scan (not a processor buffer): no copy.
        mz_range = None if features is None else (float(axis[0]), float(axis[-1]))
        return ProcessedScan(peaks, float(result.tic), result.xic, features, spectrum, h.ms_level,
                             h.polarity.name.lower(), result.skipped, mz_range=mz_range)


    def _spectrum(self, axis: np.ndarray, processed: np.ndarray, *,
                  explicit: bool) -> tuple[np.ndarray, np.ndarray, Callable[[], None]]:
        """(mz, intensity, release) for the ``spectrum`` topic, every array safe to send zero-copy.

        The intensity (counts) goes into a pooled float32 buffer. A TOF axis (m/z) is the
        calibration cache's read-only array, shared as it is. An explicit axis is a view of the
        ring slot, which the producer reuses as soon as the DSP worker releases the slot, while
        the message may wait in the publisher's and ZeroMQ's queues much longer: it is copied
        into a pooled float64 buffer that ``release`` returns together with the intensity's.
        """
        pool = self._spectrum_pool
        buf, release = pool.acquire()
        out = buf[: len(processed)]
        out[:] = processed
        if not explicit:
            return axis, out, release
        axis_buf, axis_release = pool.companion(np.float64).acquire()
        owned_axis = axis_buf[: len(axis)]
        owned_axis[:] = axis

        def release_both() -> None:
            release()
            axis_release()

        return owned_axis, out, release_both


class TraceEvents:
    """TIC/XIC through ``dsp.traces.TraceProcessor`` in scan order; elution events as flat dicts.

    Points are pushed with their device time in seconds; the processor's point indices (pushed
    scans, from 0) are mapped back to scan numbers. Each event dict has the scan whose arrival
    emitted it (``scan``), ``trace`` (one of ``names``), ``kind`` (``start``, ``apex``, ``end``),
    ``t_ns`` (device time of the point the event names: its start, apex or end; ns) and
    ``intensity`` (the trace there: baseline + height at the apex, the baseline at start and end;
    counts) for drawing it, ``truncated``, ``start_scan``/``apex_scan``/``end_scan`` (-1: not yet
    known), their device times ``*_time_s`` (NaN: not yet), ``height``, ``area`` (counts x s, END
    only), ``baseline`` and ``noise`` (counts).
    """

    KINDS = {1: "start", 2: "apex", 3: "end"}  # noqa: RUF012 (constant)
    # Point index -> scan number for the last HISTORY points (a ring: a daemon runs for days).
    # 2**20 points is minutes at the fastest scan rates, far longer than an elution peak; an
    # older index reads as -1 (unknown).
    HISTORY = 1 << 20

    def __init__(self, names: list[str]):
        from dsp.traces import TraceProcessor

        self.names = list(names)
        self.processor = TraceProcessor(n_xic=len(names) - 1)
        self._scans = np.full(self.HISTORY, -1, np.int64)
        self._times_ns = np.zeros(self.HISTORY, np.int64)
        self._pushed = 0

    def update(self, scan_number: int, device_time_ns: int, tic: float, xic: np.ndarray) -> list[dict[str, Any]]:
        """Push one scan's point (counts at ``device_time_ns``); returns the events it completed."""
        self._scans[self._pushed % self.HISTORY] = scan_number
        self._times_ns[self._pushed % self.HISTORY] = device_time_ns
        self._pushed += 1
        _, rows = self.processor.push(device_time_ns / 1e9, tic, xic if len(xic) else None)
        return [self._event(r) for r in rows]

    def _kept(self, index: int) -> bool:
        """Whether point ``index`` is still in the history ring."""
        return 0 <= index and index >= self._pushed - self.HISTORY

    def _scan(self, index: int) -> int:
        return int(self._scans[index % self.HISTORY]) if self._kept(index) else -1

    def _time_ns(self, index: int) -> int | None:
        return int(self._times_ns[index % self.HISTORY]) if self._kept(index) else None

    def _event(self, r) -> dict[str, Any]:
        scan = self._scan
        kind = self.KINDS.get(int(r["kind"]), str(int(r["kind"])))
        at = int(r[kind]) if kind in ("start", "apex", "end") else -1   # the point the event names
        level = float(r["baseline"]) + (float(r["height"]) if kind == "apex" else 0.0)
        return {"scan": scan(int(r["emitted"])), "trace": self.names[int(r["channel"])], "kind": kind,
                "t_ns": self._time_ns(at), "intensity": level,
                "truncated": bool(r["truncated"]),
                "start_scan": scan(int(r["start"])), "apex_scan": scan(int(r["apex"])), "end_scan": scan(int(r["end"])),
                "start_time_s": float(r["start_time"]), "apex_time_s": float(r["apex_time"]),
                "end_time_s": float(r["end_time"]), "height": float(r["height"]), "area": float(r["area"]),
                "baseline": float(r["baseline"]), "noise": float(r["noise"])}
