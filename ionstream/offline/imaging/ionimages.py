"""Ion images: m/z windows summed per pixel, and per-label mean spectra (the Dask workers' work).

An ion image at a window [lo, hi] (m/z) holds, per pixel, the counts summed over the samples
whose m/z lies in the window, less a local baseline: the window's width (samples) times the
lower of the mean levels of its two flanks (as wide as the window, left and right). The TIC
image holds each pixel's summed counts (no baseline removed).

Speed: for each m/z axis (a TOF calibration, or a continuous imzML axis) the window and flank
edges are turned into sample indices once; a pixel then costs one ``np.add.reduceat`` over
its samples (one pass, which also yields the TIC) and a few operations per window.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionstream.offline.imaging.pixels import iter_part

DEFAULT_TOLERANCE_PPM = 500.0
"""Half-width of a window given as a bare m/z (``--mz 760.58``), ppm of the m/z."""
_WINDOW = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?::\s*([0-9]*\.?[0-9]+)\s*(ppm|da)?)?\s*$", re.I)


@dataclass(frozen=True)
class IonWindow:
    """An m/z window: centre ``mz`` and ``half_width`` (m/z units)."""

    mz: float
    half_width: float

    @property
    def lo(self) -> float:
        return self.mz - self.half_width

    @property
    def hi(self) -> float:
        return self.mz + self.half_width

    @property
    def name(self) -> str:
        """Its column/file name, e.g. ``mz760.58``."""
        return f"mz{self.mz:.6g}"

    @classmethod
    def parse(cls, text: str) -> IonWindow:
        """``760.58`` (+-500 ppm), ``760.58:0.2`` (+-0.2 m/z) or ``760.58:50ppm``; ValueError says the forms."""
        m = _WINDOW.match(text)
        if not m or float(m.group(1)) <= 0:
            raise ValueError(f"m/z window {text!r} is not understood; write MZ, MZ:HALFWIDTH (m/z) or MZ:TOLppm, "
                             "e.g. 760.58, 760.58:0.2 or 760.58:50ppm")
        mz = float(m.group(1))
        if m.group(2) is None:
            return cls(mz, mz * DEFAULT_TOLERANCE_PPM * 1e-6)
        tol = float(m.group(2))
        if tol <= 0:
            raise ValueError(f"m/z window {text!r}: the half-width must be > 0 (MZ:HALFWIDTH or MZ:TOLppm)")
        return cls(mz, mz * tol * 1e-6 if (m.group(3) or "").lower() == "ppm" else tol)


class WindowSums:
    """Window sums for pixels on one m/z axis: the edges as sample indices, computed once."""

    def __init__(self, axis: np.ndarray, windows: list[IonWindow]):
        n = len(axis)
        lo = np.searchsorted(axis, [w.lo for w in windows], "left")
        hi = np.searchsorted(axis, [w.hi for w in windows], "right")
        width = hi - lo
        left = np.maximum(lo - width, 0)
        right = np.minimum(hi + width, n)
        edges = np.unique(np.concatenate([[0, n], left, lo, hi, right]))
        self._starts = edges[:-1]          # reduceat over these sums each stretch between two edges
        pos = {int(e): i for i, e in enumerate(edges)}  # index into the prefix sums P
        self._pos = np.array([[pos[int(a)], pos[int(b)], pos[int(c)], pos[int(d)]]
                              for a, b, c, d in zip(left, lo, hi, right)], np.intp).reshape(-1, 4)
        self._width = width.astype(np.float64)
        self._nl = (lo - left).astype(np.float64)
        self._nr = (right - hi).astype(np.float64)
        self.n = n

    def __call__(self, samples: np.ndarray, out: np.ndarray) -> None:
        """``out[0]`` = TIC, ``out[1 + j]`` = window j less its baseline (float64 counts)."""
        prefix = np.empty(len(self._starts) + 1)
        prefix[0] = 0.0
        if self.n:
            np.cumsum(np.add.reduceat(samples, self._starts, dtype=np.float64), out=prefix[1:])
        out[0] = prefix[-1]
        if not len(self._pos):
            return
        p = prefix[self._pos]
        inside = p[:, 2] - p[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            lmean = (p[:, 1] - p[:, 0]) / self._nl
            rmean = (p[:, 3] - p[:, 2]) / self._nr
        base = np.fmin(lmean, rmean)  # fmin: a missing flank (NaN) gives way to the other
        out[1:] = inside - self._width * np.nan_to_num(base)


def image_part(part: dict[str, Any], windows: list[IonWindow]) -> dict[str, Any]:
    """Ion-image values of every pixel in one part (runs in a Dask worker).

    Returns ``x``, ``y`` (int32), ``values`` (n x (1 + windows) float64: TIC, then each
    window) and ``counts`` (scans read, scans without a position, and the task's wall and
    thread CPU time in s: on a shared machine their ratio shows how much of a core it got).
    """
    t_wall, t_cpu = time.perf_counter(), time.thread_time()
    counts: dict[str, Any] = {}
    xs, ys, rows = [], [], []
    cache: dict[Any, WindowSums] = {}
    for px in iter_part(part, counts):
        sums = cache.get(px.axis_key) if px.axis_key is not None else None
        if sums is None:
            sums = WindowSums(px.mz, windows)
            if px.axis_key is not None:
                cache[px.axis_key] = sums
        row = np.empty(1 + len(windows))
        sums(px.intensity, row)
        xs.append(px.x)
        ys.append(px.y)
        rows.append(row)
    values = np.array(rows).reshape(len(rows), 1 + len(windows))
    counts["task_wall_s"] = time.perf_counter() - t_wall
    counts["task_cpu_s"] = time.thread_time() - t_cpu
    return {"x": np.array(xs, np.int32), "y": np.array(ys, np.int32), "values": values, "counts": counts}


def spectra_part(part: dict[str, Any], labels: dict[str, np.ndarray], axis: np.ndarray,
                 axis_key: Any) -> dict[str, Any]:
    """Summed spectra per label of each label image (runs in a Dask worker).

    ``labels``: name -> (height x width) int32 label image (0 = none). Spectra on ``axis``
    (the run's reference axis, key ``axis_key``) are added as they are; others are binned onto
    it (each sample to the nearest reference point). Returns name -> (sums (labels+1) x len(axis)
    float64, pixel counts per label).
    """
    out = {name: (np.zeros((int(img.max()) + 1, len(axis))), np.zeros(int(img.max()) + 1, np.int64))
           for name, img in labels.items()}
    edges = (axis[1:] + axis[:-1]) / 2 if len(axis) > 1 else np.zeros(0)
    for px in iter_part(part):
        if px.axis_key == axis_key and axis_key is not None:
            spectrum = px.intensity
        else:
            spectrum = np.bincount(np.searchsorted(edges, px.mz), weights=px.intensity, minlength=len(axis))
        for name, img in labels.items():
            if not (0 <= px.y < img.shape[0] and 0 <= px.x < img.shape[1]):
                continue
            label = int(img[px.y, px.x])
            if label:
                sums, n = out[name]
                np.add(sums[label], spectrum, out=sums[label], casting="unsafe")
                n[label] += 1
    return out


def first_axis(part: dict[str, Any]) -> tuple[Any, np.ndarray] | None:
    """(axis_key, a copy of the m/z axis) of the first pixel of a part, or None if it has none."""
    for px in iter_part(part):
        return px.axis_key, np.array(px.mz, np.float64)
    return None
