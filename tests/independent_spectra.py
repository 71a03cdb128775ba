"""A second, independent generator of profile spectra with known peaks, and a scorer.

Written apart from ``instrument/spectrum_model`` (it shares no code or law with it) so that the DSP
is judged on data the project's simulator did not make. Pure NumPy, deterministic given a seed.

Axis laws (one per instrument kind, each its own physics):

* ``tof``: sampled uniformly in flight time ``t``; ``m/z = K (t - t_off)**2``; constant resolving
  power R (the FWHM in time grows with ``t``), so samples per FWHM grow as ``sqrt(m/z)``.
* ``orbitrap``: sampled uniformly in frequency ``f``; ``m/z = K / f**2``; a transient of fixed
  length gives a constant FWHM in frequency, so R falls as ``1/sqrt(m/z)``.
* ``fticr``: sampled uniformly in frequency; ``m/z = K / f``; R falls as ``1/(m/z)``.

Peak shapes (all of unit height, FWHM ``w``, apex at ``x0``): ``gauss``; ``lorentz`` (pseudo-Voigt,
40 % Lorentzian: the long tails of FT peaks); ``tof`` (bi-Gaussian, the high-m/z side 1.35x wider:
the tail of TOF peaks). The true m/z of a peak is the apex of its noiseless shape.

Content: isotope envelopes (binomial in 13C, mean ``0.00056 * mass`` heavy atoms, spacing 1.00336/z,
charges 1-3) with log-uniform S/N, plus pairs of near-coincident peaks (0.3-1 FWHM apart) and
close pairs (1.2-2.5 FWHM apart). A sloped, slightly curved baseline. Noise: ``gain * Poisson(signal
/ gain) + Normal(0, read)`` (counts); ``zero_filled`` kinds (Orbitrap-like reduced profiles) set
every sample below a threshold to exactly 0.

S/N of a true peak: its height over the baseline noise sigma ``sqrt(read**2 + gain * baseline)``
at its m/z (for zero-filled data: the sigma before the zeroing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KINDS", "Kind", "Spectrum", "make_spectrum", "naive_pick", "score", "Score"]

TRUTH_DTYPE = np.dtype([("mz", "f8"), ("height", "f8"), ("fwhm", "f8"), ("snr", "f8"), ("blended", "?"),
                        ("shape", "U8")])
C13 = 1.0033548


@dataclass(frozen=True)
class Kind:
    """An instrument kind: axis law, resolving power at ``mz_ref``, sampling, noise."""

    name: str
    law: str                 # 'tof' | 'orbitrap' | 'fticr'
    mz_range: tuple          # (low, high) m/z
    resolving_power: float   # R = m/z / FWHM at mz_ref
    mz_ref: float
    samples_per_fwhm: float  # at the low end of the range
    shapes: tuple            # peak shapes drawn from
    gain: float = 2.0        # counts per ion
    read_noise: float = 3.0  # counts
    baseline: tuple = (40.0, 25.0, 10.0)   # b0 + b1 u + b2 u^2 (counts), u = 0..1 over the axis
    zero_filled: bool = False
    clusters: int = 60
    snr_range: tuple = (3.0, 3000.0)


KINDS = {
    "tof": Kind("tof", "tof", (300.0, 1200.0), 10_000.0, 600.0, 5.0, ("tof", "gauss")),
    "orbitrap": Kind("orbitrap", "orbitrap", (300.0, 1500.0), 60_000.0, 400.0, 4.0, ("gauss", "lorentz"),
                     gain=1.0, read_noise=2.0, baseline=(5.0, 2.0, 0.0), zero_filled=True),
    "fticr": Kind("fticr", "fticr", (400.0, 1600.0), 100_000.0, 400.0, 4.0, ("lorentz", "gauss"),
                  gain=1.0, read_noise=4.0, baseline=(20.0, -10.0, 5.0)),
}


@dataclass
class Spectrum:
    """One generated spectrum: m/z axis (float64), intensities (float32 counts), true peaks."""

    kind: str
    mz: np.ndarray
    intensity: np.ndarray
    truth: np.ndarray        # TRUTH_DTYPE, sorted by m/z
    noise_sigma: np.ndarray  # baseline noise sigma per sample (counts)


# -- axes -----------------------------------------------------------------------------------------

def _axis(kind: Kind) -> np.ndarray:
    lo, hi = kind.mz_range
    w_lo = lo / _resolving_power(kind, lo)           # FWHM in m/z at the low end
    if kind.law == "tof":
        # m/z = K (t - t_off)^2 with t_off = 0.3 us and K = 1 m/z/us^2 scaled; uniform in t
        t_off = 0.3
        t = lambda m: np.sqrt(m) + t_off             # noqa: E731  (K = 1)
        dt = (t(lo + w_lo) - t(lo)) / kind.samples_per_fwhm
        ts = np.arange(t(lo), t(hi), dt)
        return (ts - t_off) ** 2
    k = 1.0e6
    if kind.law == "orbitrap":
        f = lambda m: np.sqrt(k / m)                 # noqa: E731
    else:
        f = lambda m: k / m                          # noqa: E731
    df = (f(lo) - f(lo + w_lo)) / kind.samples_per_fwhm
    fs = np.arange(f(hi), f(lo), df)[::-1].copy()    # descending f = ascending m/z
    return k / fs ** 2 if kind.law == "orbitrap" else k / fs


def _resolving_power(kind: Kind, mz):
    ratio = np.asarray(mz, np.float64) / kind.mz_ref
    if kind.law == "tof":
        return kind.resolving_power * np.ones_like(ratio)
    if kind.law == "orbitrap":
        return kind.resolving_power / np.sqrt(ratio)
    return kind.resolving_power / ratio


# -- shapes ---------------------------------------------------------------------------------------

_G = 4.0 * math.log(2.0)


def _shape(name: str, d: np.ndarray, w: float) -> np.ndarray:
    """Unit-height shape at offsets ``d`` (m/z) from the apex, FWHM ``w``."""
    if name == "gauss":
        return np.exp(-_G * (d / w) ** 2)
    if name == "lorentz":
        return 0.6 * np.exp(-_G * (d / w) ** 2) + 0.4 / (1.0 + 4.0 * (d / w) ** 2)
    if name == "tof":
        hl = w / 2.35                                 # half widths at half maximum: left, right
        hw = np.where(d < 0, hl, 1.35 * hl)          # (hl + 1.35 hl = w)
        return np.exp(-math.log(2.0) * (d / hw) ** 2)
    raise ValueError(f"unknown shape {name!r}")


# -- content --------------------------------------------------------------------------------------

def _binomial_envelope(mass: float, n: int = 6) -> np.ndarray:
    lam = 0.00056 * mass
    p = np.array([math.exp(-lam) * lam ** k / math.factorial(k) for k in range(n)])
    return p / p.max()


def _peaks(kind: Kind, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(m/z, S/N) of every true peak."""
    lo, hi = kind.mz_range
    mzs, snrs = [], []
    for _ in range(kind.clusters):
        z = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        mono = rng.uniform(lo + 2, hi - 8)
        top = math.exp(rng.uniform(*np.log(kind.snr_range)))
        env = _binomial_envelope(mono * z)
        for k, rel in enumerate(env):
            if rel * top >= 0.5:
                mzs.append(mono + k * C13 / z)
                snrs.append(rel * top)
    for _ in range(kind.clusters // 6):              # near-coincident pairs (blended) and close pairs
        m = rng.uniform(lo + 2, hi - 2)
        w = m / float(_resolving_power(kind, m))
        for sep in (rng.uniform(0.3, 1.0), rng.uniform(1.2, 2.5)):
            m = rng.uniform(lo + 2, hi - 2)
            top = math.exp(rng.uniform(math.log(20), math.log(2000)))
            mzs += [m, m + sep * w]
            snrs += [top, top * rng.uniform(0.3, 1.0)]
    mzs, snrs = np.array(mzs), np.array(snrs)
    keep = (mzs > lo + 1) & (mzs < hi - 1)
    return mzs[keep], snrs[keep]


def _blended(mz: np.ndarray, height: np.ndarray, fwhm: np.ndarray, axis: np.ndarray,
             profile: np.ndarray) -> np.ndarray:
    """Peaks (sorted by m/z) no profile picker can resolve: another true peak at least 10 % as high
    lies within 1.5 FWHM, or the noiseless ``profile`` on ``axis`` has no maximum of its own within
    half a FWHM of the peak (a shoulder on a larger neighbour)."""
    out = np.zeros(mz.size, bool)
    for i in range(mz.size):
        j0, j1 = np.searchsorted(mz, [mz[i] - 1.5 * fwhm[i], mz[i] + 1.5 * fwhm[i]])
        near = np.r_[j0:i, i + 1:j1]
        a, b = np.searchsorted(axis, [mz[i] - 0.5 * fwhm[i], mz[i] + 0.5 * fwhm[i]])
        top = a + int(np.argmax(profile[a:b])) if b > a else a
        shoulder = b - a < 3 or top in (a, b - 1)
        out[i] = bool(np.any(height[near] >= 0.1 * height[i])) or shoulder
    return out


def make_spectrum(kind: str | Kind, seed: int) -> Spectrum:
    """One spectrum of ``kind`` ('tof', 'orbitrap', 'fticr' or a :class:`Kind`) for ``seed``."""
    k = KINDS[kind] if isinstance(kind, str) else kind
    rng = np.random.default_rng(seed)
    mz = _axis(k)
    n = mz.size
    u = np.linspace(0.0, 1.0, n)
    b0, b1, b2 = k.baseline
    base = b0 + b1 * u + b2 * u * u
    sigma = np.sqrt(k.read_noise ** 2 + k.gain * base)
    pm, psnr = _peaks(k, rng)
    order = np.argsort(pm)
    pm, psnr = pm[order], psnr[order]
    fwhm = pm / _resolving_power(k, pm)
    height = psnr * np.interp(pm, mz, sigma)
    signal = np.zeros(n)
    shapes = [k.shapes[int(i)] for i in rng.integers(0, len(k.shapes), pm.size)]
    for m, h, w, s in zip(pm, height, fwhm, shapes):
        a, b = np.searchsorted(mz, [m - 8 * w, m + 8 * w])
        signal[a:b] += h * _shape(s, mz[a:b] - m, w)
    expected = base + signal
    counts = k.gain * rng.poisson(expected / k.gain) + rng.normal(0.0, k.read_noise, n)
    if k.zero_filled:
        counts = np.where(counts > base + 3.0 * sigma, counts - base, 0.0)
    truth = np.zeros(pm.size, TRUTH_DTYPE)
    truth["mz"], truth["height"], truth["fwhm"], truth["snr"] = pm, height, fwhm, psnr
    truth["blended"] = _blended(pm, height, fwhm, mz, expected)
    truth["shape"] = shapes
    return Spectrum(k.name, mz, counts.astype(np.float32), truth, sigma)


# -- a naive picker (the yardstick for recall) ---------------------------------------------------

def naive_pick(mz: np.ndarray, y: np.ndarray, *, snr: float = 3.0, block: int = 512) -> np.ndarray:
    """``scipy.signal.find_peaks`` + 3-point parabola: a per-block median baseline and MAD noise,
    peaks with height and prominence >= ``snr`` sigma, centre from a parabola through the apex and
    its neighbours (in m/z). Returns the m/z of each peak."""
    import scipy.signal

    n = y.size
    nb = max(1, n // block)
    edges = np.linspace(0, n, nb + 1).astype(int)
    centres, med, mad = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = y[a:b].astype(np.float64)
        m = np.median(seg)
        centres.append(0.5 * (a + b))
        med.append(m)
        mad.append(1.4826 * np.median(np.abs(seg - m)))
    idx = np.arange(n)
    base = np.interp(idx, centres, med)
    noise = np.maximum(np.interp(idx, centres, mad), 1e-9)
    positive = y[y > 0]
    if positive.size and np.count_nonzero(y) < 0.5 * n:       # zero-filled data: noise from the floor
        noise = np.full(n, float(np.percentile(positive, 5)))
        base = np.zeros(n)
    s = (y - base) / noise
    p, _ = scipy.signal.find_peaks(s, height=snr, prominence=snr)
    p = p[(p > 0) & (p < n - 1)]
    y0, y1, y2 = y[p - 1].astype(np.float64), y[p].astype(np.float64), y[p + 1].astype(np.float64)
    den = y0 - 2 * y1 + y2
    off = np.where(den != 0, 0.5 * (y0 - y2) / np.where(den != 0, den, 1), 0.0)
    off = np.clip(off, -0.5, 0.5)
    step = np.where(off >= 0, mz[np.minimum(p + 1, n - 1)] - mz[p], mz[p] - mz[p - 1])
    return mz[p] + off * step


# -- scoring --------------------------------------------------------------------------------------

@dataclass
class Score:
    """Recall of true unblended peaks at S/N >= ``recall_snr``; false picks among picked peaks of
    picked S/N >= ``false_snr`` (none, or ``None`` for all picks, when the picker gives no S/N);
    |m/z error| (ppm) of found true peaks at S/N >= ``recall_snr``."""

    n_true: int = 0
    n_found: int = 0
    n_picked: int = 0
    n_false: int = 0
    errors_ppm: list = field(default_factory=list)
    missed: list = field(default_factory=list)      # (m/z, S/N) of the missed true peaks

    @property
    def recall(self) -> float:
        return self.n_found / self.n_true if self.n_true else float("nan")

    @property
    def false_rate(self) -> float:
        return self.n_false / self.n_picked if self.n_picked else 0.0

    @property
    def median_ppm(self) -> float:
        return float(np.median(np.abs(self.errors_ppm))) if self.errors_ppm else float("nan")

    def __iadd__(self, o: "Score") -> "Score":
        self.n_true += o.n_true
        self.n_found += o.n_found
        self.n_picked += o.n_picked
        self.n_false += o.n_false
        self.errors_ppm += o.errors_ppm
        self.missed += o.missed
        return self

    def __repr__(self) -> str:
        return (f"Score(recall={self.recall:.4f} ({self.n_found}/{self.n_true}), false_rate={self.false_rate:.4f} "
                f"({self.n_false}/{self.n_picked}), median_ppm={self.median_ppm:.3f})")


def score(picked_mz: np.ndarray, truth: np.ndarray, *, picked_snr: np.ndarray | None = None,
          recall_snr: float = 20.0, false_snr: float = 10.0) -> Score:
    """Score picked m/z against ``truth``: found = a pick within half a FWHM; false = a pick (with
    S/N >= ``false_snr`` when ``picked_snr`` is given) farther than one FWHM from every true peak."""
    s = Score()
    pm = np.sort(np.asarray(picked_mz, np.float64))
    counted = truth[(truth["snr"] >= recall_snr) & ~truth["blended"]]
    s.n_true = int(counted.size)
    if pm.size and counted.size:
        j = np.clip(np.searchsorted(pm, counted["mz"]), 1, max(pm.size - 1, 1))
        near = np.where(np.abs(pm[j] - counted["mz"]) < np.abs(pm[j - 1] - counted["mz"]), j, j - 1)
        d = pm[near] - counted["mz"]
        found = np.abs(d) <= 0.5 * counted["fwhm"]
        s.n_found = int(found.sum())
        s.errors_ppm = list(d[found] / counted["mz"][found] * 1e6)
        s.missed = list(zip(counted["mz"][~found].tolist(), counted["snr"][~found].tolist()))
    else:
        s.missed = list(zip(counted["mz"].tolist(), counted["snr"].tolist()))
    sel = np.asarray(picked_mz, np.float64)
    if picked_snr is not None:
        sel = sel[np.asarray(picked_snr) >= false_snr]
    s.n_picked = int(sel.size)
    if sel.size and truth.size:
        tm = truth["mz"]
        j = np.clip(np.searchsorted(tm, sel), 1, max(tm.size - 1, 1))
        q = np.where(np.abs(tm[j] - sel) < np.abs(tm[j - 1] - sel), j, j - 1)
        s.n_false = int(np.sum(np.abs(tm[q] - sel) > truth["fwhm"][q]))
    elif sel.size:
        s.n_false = int(sel.size)
    return s
