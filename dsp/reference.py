"""Plain NumPy/SciPy references of the DSP kernels, for tests and as benchmark baselines.

Obviously correct rather than fast: each follows the algorithm its kernel documents, with NumPy
and SciPy doing the work (``np.partition`` for medians, ``scipy.signal.savgol_filter`` and
``scipy.ndimage.gaussian_filter1d`` for smoothing, ``scipy.signal.find_peaks`` for peaks,
``np.linalg.solve`` for the centroid fits), on float64.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.ndimage
import scipy.signal

from dsp.calibration import mz_at
from dsp.processor import CENTROID_DTYPE, FLAG_ASYM, FLAG_EDGE, FLAG_FIT, ScanParams
from instrument.frames import Calibration

__all__ = ["block_statistics", "baseline_and_noise", "process_scan"]


def _clipped(v, centre, lim):
    d = v - centre
    d = d[np.abs(d) <= lim]
    if d.size == 0:
        return None
    mu = d.mean()
    return centre + mu, float(np.sqrt(max(np.mean(d * d) - mu * mu, 0.0)))


def _block_stat(v: np.ndarray):
    m = v.size
    q = min(m, 32)
    sub = v[np.arange(q) * (m // q)]
    med = np.partition(sub, q // 2)[q // 2]
    mad = np.partition(np.abs(sub - med), q // 2)[q // 2]
    if not mad > 0:
        return float(np.partition(v, m // 2)[m // 2]), 0.0
    r = _clipped(v, med, 3.5 * 1.4826 * mad)
    if r is None or not r[1] > 0:
        return float(med), 1.4826 * float(mad)
    mean, sd = r
    sd /= 0.99694
    r = _clipped(v, mean, 3.0 * sd)
    if r is None:
        return mean, sd
    return r[0], r[1] / 0.98658


def block_statistics(x, block: int = 512, stride: int = 4, noise_floor: float = 0.0):
    """(centres, baseline, noise) per block: the algorithm of dsp.baseline, in NumPy (float64)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    nb = max(n // block, 1)
    raw = np.empty((nb, 2))
    centres = np.empty(nb)
    for b in range(nb):
        lo = b * block
        hi = lo + block if b < nb - 1 else n
        raw[b] = _block_stat(x[lo:hi:stride])
        centres[b] = ((lo + hi) // 2) & ~63
    base = np.empty(nb)
    sig = np.empty(nb)
    for b in range(nb):
        a, z = max(b - 2, 0), min(b + 2, nb - 1)
        base[b] = np.median(raw[a:z + 1, 0])
        sig[b] = np.median(raw[a:z + 1, 1])
    floor = noise_floor
    if floor <= 0 and np.any(sig > 0):
        floor = sig[sig > 0].min()
    sig = np.maximum(sig, floor)
    sig[~(sig > 0)] = 1.0
    return centres, base, sig


def baseline_and_noise(x, block: int = 512, stride: int = 4, noise_floor: float = 0.0):
    """Per-sample baseline and noise: linear between block centres, flat beyond (float64)."""
    c, b, s = block_statistics(x, block, stride, noise_floor)
    i = np.arange(np.asarray(x).size, dtype=np.float64)
    return np.interp(i, c, b), 1.0 / np.interp(i, c, 1.0 / s)


def _fit(u, v, kp, k, lo, hi, sb2, gain):
    """The kernel's Gaussian fit (log-parabola start, two Gauss-Newton steps), in NumPy: (height,
    centre, sigma, asym2) or None; asym2 is the squared z-score of the one-step asymmetry estimate
    from the last pass (the screen before the two-sided fit)."""
    a, b = max(kp - k, lo), min(kp + k, hi)
    uu, vv = u[a:b + 1], v[a:b + 1]
    ok = vv > 0
    if ok.sum() < 3:
        return None
    w = vv[ok] ** 2
    A = np.stack([np.ones(ok.sum()), uu[ok], uu[ok] ** 2], 1)
    try:
        c = np.linalg.solve(A.T @ (A * w[:, None]), A.T @ (w * np.log(vv[ok])))
    except np.linalg.LinAlgError:
        return None
    if not c[2] < 0:
        return None
    lim = (hi - lo) * 0.5 + 1.0
    mu, s = -c[1] / (2 * c[2]), np.sqrt(-1 / (2 * c[2]))
    h = np.exp(c[0] - c[1] ** 2 / (4 * c[2]))
    if not abs(mu) <= lim:
        return None
    uu, vv = u[lo:hi + 1], v[lo:hi + 1]
    for _ in range(2):
        d = uu - mu
        e = np.exp(-0.5 * (d / s) ** 2)
        f = h * e
        wt = 1.0 / (sb2 + gain * np.maximum(f, 0))
        j2 = f * d ** 2 / s ** 3
        J = np.stack([e, f * d / s ** 2, j2, 0.5 * s * np.where(d >= 0, j2, -j2)], 1)
        A = J.T @ (J * wt[:, None])
        b = J.T @ (wt * (vv - f))
        chi = float(np.sum(wt * (vv - f) ** 2))
        try:
            step = np.linalg.solve(A[:3, :3], b[:3])
        except np.linalg.LinAlgError:
            break
        if not (h + step[0] > 0 and s + step[2] > 0 and abs(mu + step[1]) <= lim):
            break
        h, mu, s = h + step[0], mu + step[1], s + step[2]
        if abs(step[1]) < 1e-5 * s:
            break
    asym2 = 0.0
    if uu.size > 4:
        try:
            np.linalg.cholesky(A)
            x = np.linalg.solve(A, b)
            asym2 = x[3] ** 2 / np.linalg.inv(A)[3, 3] / max(chi / (uu.size - 3), 1.0)
        except np.linalg.LinAlgError:
            pass
    return h, mu, s, asym2


def _fit_two_sided(u, v, lo, hi, sb2, gain, zmin, g):
    """The kernel's two-sided Gaussian (height, apex, sigma left, sigma right) over lo..hi from the
    Gaussian ``g``: four Gauss-Newton steps; returned only when ln(sigma_r / sigma_l) is at least
    ``zmin`` standard errors from 0 (covariance scaled by the reduced chi-square when above 1)."""
    uu, vv = u[lo:hi + 1], v[lo:hi + 1]
    n = uu.size
    if n < 7 or not zmin > 0:
        return None
    lim = (hi - lo) * 0.5 + 1.0
    h, mu, sl, sr = g[0], g[1], g[2], g[2]
    for it in range(5):
        d = uu - mu
        left = d < 0
        sd = np.where(left, sl, sr)
        z = d / sd
        e = np.exp(-0.5 * z * z)
        f = h * e
        wt = 1.0 / (sb2 + gain * np.maximum(f, 0))
        j1 = f * d / sd ** 2
        J = np.stack([e, j1, np.where(left, j1 * z, 0.0), np.where(left, 0.0, j1 * z)], 1)
        A = J.T @ (J * wt[:, None])
        if it == 4:
            chi = float(np.sum(wt * (vv - f) ** 2))
            break
        try:
            np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return None
        x = np.linalg.solve(A, J.T @ (wt * (vv - f)))
        if not (h + x[0] > 0 and sl + x[2] > 0 and sr + x[3] > 0 and abs(mu + x[1]) <= lim):
            return None
        h, mu, sl, sr = h + x[0], mu + x[1], sl + x[2], sr + x[3]
    if not 0.25 < sr / sl < 4.0:
        return None
    grad = np.array([0.0, 0.0, -1.0 / sl, 1.0 / sr])
    try:
        np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return None
    var = float(grad @ np.linalg.solve(A, grad)) * max(chi / (n - 4), 1.0)
    if not (var > 0 and np.log(sr / sl) ** 2 > zmin * zmin * var):
        return None
    return h, mu, sl, sr


def process_scan(samples, calibration_or_axis, params: ScanParams | None = None) -> np.ndarray:
    """The per-scan DSP of dsp.processor.ScanProcessor in NumPy/SciPy; returns CENTROID_DTYPE peaks.

    Same algorithm; results agree with the kernel's to float32 rounding of the intermediate trace
    (a peak at the detection threshold may differ).
    """
    p = params or ScanParams()
    x = np.asarray(samples).astype(np.float32).astype(np.float64)
    n = x.size
    if isinstance(calibration_or_axis, Calibration):
        axis = mz_at(calibration_or_axis, np.arange(n))
    else:
        axis = np.asarray(calibration_or_axis, dtype=np.float64)
    base, noise = baseline_and_noise(x, p.block, p.stride, p.noise_floor)
    if p.smoothing == "savgol":
        sm = scipy.signal.savgol_filter(x, p.savgol_window, p.savgol_order)
        c = scipy.signal.savgol_coeffs(p.savgol_window, p.savgol_order)
        gain = float(np.sqrt(np.sum(c * c)))
    elif p.smoothing == "gaussian":
        sm = scipy.ndimage.gaussian_filter1d(x, p.gaussian_sigma)
        lw = int(4.0 * p.gaussian_sigma + 0.5)
        g = np.exp(-0.5 / p.gaussian_sigma ** 2 * np.arange(-lw, lw + 1) ** 2)
        g /= g.sum()
        gain = float(np.sqrt(np.sum(g * g)))
    else:
        sm, gain = x, 1.0
    trace = (sm - base) / noise
    height = max(p.min_snr, p.detect_sigma * gain)
    prom = p.prominence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peaks, props = scipy.signal.find_peaks(trace, height=height, prominence=prom, wlen=p.wlen,
                                               width=p.min_width)
    v = x - base
    out = []
    mh = p.max_halfwidth
    for j, pk in enumerate(peaks):
        vl = _valley(trace, pk, -1, max(int(props["left_bases"][j]), pk - 4 * mh))
        vr = _valley(trace, pk, 1, min(int(props["right_bases"][j]), pk + 4 * mh))
        hw = _half_height_width(trace, pk, vl, vr, props["right_ips"][j] - props["left_ips"][j])
        k = int(min(max(int(p.fit_window * hw + 0.5), 2), mh))
        wl = max(pk - k - 1, vl)
        wr = min(pk + k + 1, vr)
        if wl > pk - 1 and pk > 0:
            wl = pk - 1
        if wr < pk + 1 and pk < n - 1:
            wr = pk + 1
        la = pk
        while la > 0 and pk - la < 2 * mh and trace[la - 1] > p.area_floor and trace[la - 1] <= trace[la]:
            la -= 1
        ra = pk
        while ra < n - 1 and ra - pk < 2 * mh and trace[ra + 1] > p.area_floor and trace[ra + 1] <= trace[ra]:
            ra += 1
        step = (axis[wr] - axis[wl]) / (wr - wl)
        u = (axis - axis[pk]) / step
        flags = FLAG_EDGE if (la == 0 or ra == n - 1) else 0
        r = _fit(u, v, pk, k, wl, wr, noise[pk] ** 2, p.shot_gain)
        two = None
        if r is not None and p.asymmetry_z > 0 and r[3] >= 0.25 * p.asymmetry_z ** 2:
            two = _fit_two_sided(u, v, wl, wr, noise[pk] ** 2, p.shot_gain, p.asymmetry_z, r)
        if two is not None:
            h, mu, sl, sr = two
            mz, fwhm, flags = axis[pk] + mu * step, 1.1774100225154747 * (sl + sr) * abs(step), flags | FLAG_FIT | FLAG_ASYM
            index = pk + mu
        elif r is not None:
            h, mu, s, _ = r
            mz, fwhm, flags = axis[pk] + mu * step, 2.3548200450309493 * s * abs(step), flags | FLAG_FIT
            index = pk + mu
        else:
            sel = slice(wl, wr + 1)
            vv = np.maximum(v[sel], 0)
            off = float(np.sum(vv * (axis[sel] - axis[pk])) / vv.sum()) if vv.sum() > 0 else 0.0
            mz, h, index = axis[pk] + off, float(v[sel].max()), pk + off / step
            fwhm = float("nan")
        vv, aa = v[la:ra + 1], axis[la:ra + 1]
        area = float(np.sum(0.5 * (vv[1:] + vv[:-1]) * np.diff(aa)))
        snr = h / noise[pk]
        if snr >= p.min_snr:
            out.append((mz, h, area, fwhm, snr, noise[pk], index, pk, flags))
    res = np.zeros(len(out), CENTROID_DTYPE)
    for i, row in enumerate(out):
        res[i] = row
    return res[np.argsort(res["mz"], kind="stable")]


def _valley(y: np.ndarray, p: int, step: int, lim: int) -> int:
    """The lowest sample walking from the apex ``p`` by ``step`` before the trace rises again by more
    than max(2, 5 % of the apex) S/N units, no further than ``lim`` (as cext/scan.pyx)."""
    tol = max(2.0, 0.05 * float(y[p]))
    j = best = p
    lo = float(y[p])
    while j != lim:
        j += step
        if y[j] < lo:
            lo, best = float(y[j]), j
        elif y[j] > lo + tol:
            break
    return best


def _half_height_width(y: np.ndarray, p: int, vl: int, vr: int, fallback: float) -> float:
    """FWHM (samples) at half the apex height inside the valleys (as cext/scan.pyx)."""
    half = 0.5 * float(y[p])
    xl = xr = -1.0
    j = p
    while j > vl and y[j - 1] > half:
        j -= 1
    if j > vl:
        xl = (p - j) + (y[j] - half) / (y[j] - y[j - 1])
    j = p
    while j < vr and y[j + 1] > half:
        j += 1
    if j < vr:
        xr = (j - p) + (y[j] - half) / (y[j] - y[j + 1])
    if xl > 0 and xr > 0:
        return xl + xr
    if xl > 0:
        return 2.0 * xl
    if xr > 0:
        return 2.0 * xr
    return fallback
