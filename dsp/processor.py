"""Per-scan processing: calibrate, baseline, smooth, pick peaks, centroid, extracted-ion sums.

``ScanProcessor(params).process(samples, calibration_or_axis)`` runs the whole per-scan DSP in one
kernel call with the GIL released (``cext.scan.ScanKernel``; the steps are listed in its module
docstring) and reuses its buffers: in steady state a scan allocates nothing but the small
:class:`ScanResult`. One processor per DSP worker thread (a processor is not thread-safe).

``pick_centroids(mz, intensity, **params)`` is the stable public entry point for one profile
spectrum with an explicit m/z axis (any spacing): it returns a fresh structured array.

Units: samples for widths and windows, counts for intensities, S/N (multiples of the local noise
sigma) for detection thresholds, m/z for positions and peak widths in the output.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from cext.scan import CENTROID_DTYPE, FLAG_ASYM, FLAG_EDGE, FLAG_FIT, ScanKernel
from cext.smooth import MODES
from dsp.calibration import AxisCache, mz_to_index
from dsp.smoothing import gaussian_weights, savgol_weights
from instrument.frames import Calibration

__all__ = ["ScanParams", "ScanProcessor", "ScanResult", "pick_centroids", "CENTROID_DTYPE", "FLAG_FIT",
           "FLAG_EDGE", "FLAG_ASYM", "PRESETS",
           "spectrum_params"]

SMOOTHING = ("savgol", "gaussian", "none")

PRESETS: dict[str, dict] = {
    # TOF: noisy, ~5 samples per FWHM or more; the defaults (Savitzky-Golay 7/3, detection at 5 sigma
    # of the smoothed trace, one-sample spikes rejected by min_width)
    "tof": {},
    # Orbitrap and FT-ICR profiles are apodised transforms, already smooth, often 3-4 samples per
    # FWHM and noise-suppressed: no smoothing (it would merge close peaks and ring across zero gaps),
    # every local maximum of the trace at or above min_snr (OpenMS PeakPickerHiRes does the same).
    "orbitrap": {"smoothing": "none", "detect_sigma": 0.0, "min_width": 0.0},
    "fticr": {"smoothing": "none", "detect_sigma": 0.0, "min_width": 0.0},
}
"""Parameter sets per instrument kind (docs/dsp.md, "Presets"); given fields override them."""


DEFAULT_PROMINENCE = 3.0
"""Prominence (S/N) a peak needs when ``min_prominence`` is None and ``min_snr`` is higher. The
prominence tells a peak from a noise bump on its neighbour's flank; the reporting threshold is
``min_snr``. Tying the two (the prominence was ``min_snr``) made a higher ``min_snr`` drop peaks
well above it that sit next to a larger one (an S/N 7 peak with a valley 2 sigma deep, found at
``min_snr=1``, vanished at ``min_snr=3``)."""


@dataclass(frozen=True)
class ScanParams:
    """Parameters of the per-scan DSP. Defaults suit ~5 samples per FWHM (the simulator's TOF);
    :meth:`for_peak_width` scales the sample-based ones for other instruments.

    Attributes
    ----------
    smoothing : 'savgol' | 'gaussian' | 'none'
        Smoothing of the trace peaks are detected on (centroids use unsmoothed samples).
    savgol_window, savgol_order : int
        Savitzky-Golay window (samples, odd) and polynomial order; edges as savgol_filter's 'interp'.
    gaussian_sigma : float
        Gaussian sigma (samples); edges as ndimage's 'reflect'.
    block, stride : int
        Baseline/noise statistics blocks (samples) and sample stride within a block (dsp.baseline).
    noise_floor : float
        Lowest noise sigma (counts); 0 = the smallest positive block noise.
    min_snr : float
        Report peaks whose fitted height is at least this many noise sigmas.
    detect_sigma : float
        Detection height on the S/N trace: ``max(min_snr, detect_sigma * g)``, g the smoothing's
        noise gain (the trace's own noise sigma: 0.58 for Savitzky-Golay 7/3, 1 without smoothing).
        5 keeps noise maxima out (a white-noise sample exceeds 5 sigma once in 3.5 million).
    min_prominence : float or None
        Prominence (S/N units) a peak needs on the S/N trace within ``wlen``; None = the lower of
        ``min_snr`` and DEFAULT_PROMINENCE (3): a noise test, not the reporting threshold.
    wlen : int
        Window (samples) for the prominence (find_peaks' ``wlen``).
    min_width : float
        Width at half prominence (samples) a peak needs on the S/N trace: rejects one-sample spikes
        and noise bumps on the flanks of large peaks.
    fit_window : float
        Half-width of the centroid fit, in FWHMs (as measured on the S/N trace); one more sample
        each side enters the Gauss-Newton steps.
    asymmetry_z : float
        A two-sided Gaussian (left and right widths) is fitted after the Gaussian; when its
        asymmetry ln(sigma_right / sigma_left) is at least this many standard errors from 0 the
        peak is tailed and the two-sided fit's apex, height and FWHM are reported (``FLAG_ASYM``).
        Symmetric peaks keep the Gaussian, whose centre is 2.6x more precise. 0 = Gaussian only.
    shot_gain : float
        Counts per ion: the centroid fit weights samples by 1 / (noise**2 + shot_gain * signal).
        0 (default) treats the noise as additive; the instrument's value is a little more precise.
    area_floor : float
        The area integrates down to this S/N (or to a valley, or ``max_halfwidth`` samples further).
    max_halfwidth : int
        At most this many samples each side of the apex enter the fit, twice as many the area.
    xic : tuple of (mz_low, mz_high)
        Extracted-ion windows (m/z, inclusive) summed per scan (baseline-subtracted counts).
    max_peaks : int
        Peaks per scan written to the result; more are counted in ``ScanResult.dropped``.
    """

    smoothing: str = "savgol"
    savgol_window: int = 7
    savgol_order: int = 3
    gaussian_sigma: float = 1.0
    block: int = 512
    stride: int = 4
    noise_floor: float = 0.0
    min_snr: float = 3.0
    detect_sigma: float = 5.0
    min_prominence: float | None = None
    wlen: int = 64
    min_width: float = 1.5
    fit_window: float = 0.75
    asymmetry_z: float = 3.0
    shot_gain: float = 0.0
    area_floor: float = 1.0
    max_halfwidth: int = 16
    xic: tuple = field(default=())
    max_peaks: int = 4096

    def __post_init__(self):
        if self.smoothing not in SMOOTHING:
            raise ValueError(f"smoothing must be one of {', '.join(SMOOTHING)}, got {self.smoothing!r}")
        if self.smoothing == "savgol":
            savgol_weights(self.savgol_window, self.savgol_order)   # validates
        if self.smoothing == "gaussian" and not self.gaussian_sigma > 0:
            raise ValueError(f"gaussian_sigma must be > 0 (samples), got {self.gaussian_sigma!r}")
        if self.block < 128:
            raise ValueError(f"block must be >= 128 samples, got {self.block!r}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride!r}")
        if self.noise_floor < 0:
            raise ValueError(f"noise_floor must be >= 0 (counts), got {self.noise_floor!r}")
        if not self.min_snr >= 0:
            raise ValueError(f"min_snr must be >= 0, got {self.min_snr!r}")
        if not self.detect_sigma >= 0:
            raise ValueError(f"detect_sigma must be >= 0, got {self.detect_sigma!r}")
        if self.min_prominence is not None and not self.min_prominence >= 0:
            raise ValueError(f"min_prominence must be >= 0 (S/N), got {self.min_prominence!r}")
        if self.wlen < 3:
            raise ValueError(f"wlen must be >= 3 samples, got {self.wlen!r}")
        if not self.min_width >= 0:
            raise ValueError(f"min_width must be >= 0 (samples), got {self.min_width!r}")
        if not self.fit_window > 0:
            raise ValueError(f"fit_window must be > 0 (FWHMs), got {self.fit_window!r}")
        if not self.asymmetry_z >= 0:
            raise ValueError(f"asymmetry_z must be >= 0 (standard errors; 0 = Gaussian only), got {self.asymmetry_z!r}")
        if not self.shot_gain >= 0:
            raise ValueError(f"shot_gain must be >= 0 (counts per ion), got {self.shot_gain!r}")
        if self.max_halfwidth < 1:
            raise ValueError(f"max_halfwidth must be >= 1 sample, got {self.max_halfwidth!r}")
        if self.max_peaks < 0:
            raise ValueError(f"max_peaks must be >= 0, got {self.max_peaks!r}")
        windows = []
        for i, w in enumerate(self.xic):
            try:
                lo, hi = (float(v) for v in w)
            except (TypeError, ValueError):
                raise ValueError(f"xic[{i}]: expected (mz_low, mz_high), got {w!r}") from None
            if not 0 < lo < hi:
                raise ValueError(f"xic[{i}]: need 0 < mz_low < mz_high, got {w!r}")
            windows.append((lo, hi))
        object.__setattr__(self, "xic", tuple(windows))

    @classmethod
    def for_peak_width(cls, fwhm_samples: float, **overrides) -> "ScanParams":
        """Parameters for peaks ``fwhm_samples`` samples wide (FWHM); ``overrides`` win.

        Scales the smoothing window (about 1.3 FWHM, odd, >= 5), the Gaussian sigma (0.2 FWHM),
        ``wlen`` (12 FWHM), ``min_width`` (0.3 FWHM) and ``max_halfwidth`` (3 FWHM).
        """
        f = float(fwhm_samples)
        if not f > 0:
            raise ValueError(f"fwhm_samples must be > 0, got {fwhm_samples!r}")
        window = max(5, int(round(1.3 * f)) | 1)
        p = dict(savgol_window=window, savgol_order=3 if window >= 7 else 2, gaussian_sigma=max(0.5, 0.2 * f),
                 wlen=max(16, int(math.ceil(12 * f))), min_width=0.3 * f,
                 max_halfwidth=max(4, int(math.ceil(3 * f))))
        p.update(overrides)
        return cls(**p)

    @classmethod
    def for_preset(cls, preset: str | None, **overrides) -> "ScanParams":
        """Parameters of the instrument kind ``preset`` (a key of :data:`PRESETS`, or None/'' for
        the defaults); ``overrides`` win."""
        return cls(**{**preset_params(preset), **overrides})

    @property
    def prominence(self) -> float:
        """The prominence (S/N) a peak needs: ``min_prominence``, or when None the lower of
        ``min_snr`` and :data:`DEFAULT_PROMINENCE`."""
        if self.min_prominence is not None:
            return float(self.min_prominence)
        return min(float(self.min_snr), DEFAULT_PROMINENCE)

    def replace(self, **changes) -> "ScanParams":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["xic"] = [list(w) for w in self.xic]
        return d


class ScanResult:
    """What :meth:`ScanProcessor.process` made of one scan.

    ``peaks`` is a CENTROID_DTYPE array sorted by m/z (a view into the processor's buffer unless an
    ``out`` array was given: valid until the processor's next scan; ``copy()`` keeps it).
    ``n_detected`` peaks of the S/N trace passed the find_peaks conditions, ``n_found`` of them also
    the final S/N test on the fitted height, ``dropped`` of those did not fit into the output. ``tic``: sum of the
    baseline-subtracted samples (counts); ``raw_sum``: sum of the samples; ``xic``: one
    baseline-subtracted sum per configured window (float64, counts); ``noise`` and ``baseline``:
    medians over the scan (counts); ``intensity``: the samples minus the baseline (float32, computed
    on first access, valid until the processor's next scan).

    ``skipped`` is "" for an analysed scan, else why the scan could not be analysed (fewer than
    3 samples, or an m/z axis that is not strictly increasing): such a scan is valid input, not
    an error, and its result is empty: no peaks, ``tic`` and ``xic`` 0, ``noise`` and
    ``baseline`` 0, ``intensity`` zeros (``raw_sum`` is still the sum of the samples).
    """

    __slots__ = ("peaks", "n_found", "dropped", "tic", "raw_sum", "xic", "noise", "baseline", "n_samples",
                 "n_detected", "skipped", "_owner", "_serial", "_intensity")

    def __init__(self, peaks, n_found, tic, raw_sum, xic, noise, baseline, n_samples, n_detected,
                 owner=None, serial=0, intensity=None, skipped: str = ""):
        self.skipped = skipped
        self._owner = owner
        self._serial = serial
        self._intensity = intensity
        self.peaks = peaks
        self.n_found = n_found
        self.dropped = n_found - peaks.size
        self.tic = tic
        self.raw_sum = raw_sum
        self.xic = xic
        self.noise = noise
        self.baseline = baseline
        self.n_samples = n_samples
        self.n_detected = n_detected

    @property
    def n_peaks(self) -> int:
        return int(self.peaks.size)

    @property
    def intensity(self) -> np.ndarray:
        """The scan's samples minus its baseline (float32, counts): the processed spectrum.

        Computed on first access (one pass) into the processor's buffer: a view, valid until the
        processor's next scan; ``copy()`` after reading it keeps a copy.
        """
        if self._intensity is None:
            owner = self._owner
            if owner is None or owner._serial != self._serial:
                raise RuntimeError("the processor has processed another scan since; read intensity "
                                   "before that (or copy() the result after reading it)")
            self._intensity = owner._kernel.subtract_baseline()
        return self._intensity

    def copy(self) -> "ScanResult":
        """A result that no longer depends on the processor's buffers (peaks, xic and, if it was
        read, intensity are copied)."""
        return ScanResult(self.peaks.copy(), self.n_found, self.tic, self.raw_sum, self.xic.copy(), self.noise,
                          self.baseline, self.n_samples, self.n_detected, None, 0,
                          None if self._intensity is None else self._intensity.copy(), self.skipped)

    def __repr__(self) -> str:
        return (f"ScanResult(n_peaks={self.n_peaks}, dropped={self.dropped}, tic={self.tic:.6g}, "
                f"noise={self.noise:.4g}, baseline={self.baseline:.6g}, n_samples={self.n_samples})")


_NO_INDEX = np.zeros(0, np.intp)

MIN_SAMPLES = 3
"""Fewest samples a scan needs to be analysed (a peak needs a sample on each side of its apex).
The device protocol allows 0- to 2-sample scans: they give an empty result, not an error."""


class ScanProcessor:
    """Per-scan DSP with reused buffers (one per worker thread).

    Parameters
    ----------
    params : ScanParams, optional
        Defaults: ``ScanParams()``.
    **overrides
        Fields of ScanParams that replace those of ``params``.
    """

    def __init__(self, params: ScanParams | None = None, **overrides):
        params = params or ScanParams()
        if overrides:
            params = params.replace(**overrides)
        self.params = params
        self._kernel = ScanKernel()
        if params.smoothing == "savgol":
            sm = savgol_weights(params.savgol_window, params.savgol_order, "interp")
        elif params.smoothing == "gaussian":
            sm = gaussian_weights(float(params.gaussian_sigma), 4.0, None, "reflect")
        else:
            sm = None
        self.smoother = sm
        gain = 1.0 if sm is None else sm.noise_gain
        self.detection_height = max(params.min_snr, params.detect_sigma * gain)
        self._kernel.configure(
            None if sm is None else sm.half, MODES["interp"] if sm is None else sm.mode,
            None if sm is None else sm.left, None if sm is None else sm.right,
            params.block, params.stride, params.noise_floor, params.min_snr, self.detection_height,
            params.prominence,
            params.wlen, params.min_width, params.area_floor, params.max_halfwidth, params.shot_gain,
            params.fit_window, params.asymmetry_z)
        self._peaks = np.empty(params.max_peaks, CENTROID_DTYPE)
        k = len(params.xic)
        self._xic_mz = np.array(params.xic, np.float64).reshape(k, 2)
        self._xic_cache: dict = {}
        self._xic_lo = np.zeros(k, np.intp)
        self._xic_hi = np.zeros(k, np.intp)
        self._axes = AxisCache()
        self._serial = 0
        self._tof_increasing: dict = {}          # (calibration, n) -> its m/z axis is strictly increasing
        self._cmp = np.empty(0, np.bool_)        # reused comparison buffer for explicit axes

    # -- public --------------------------------------------------------------------------------
    def process(self, samples, calibration_or_axis, out: np.ndarray | None = None) -> ScanResult:
        """Process one scan.

        Parameters
        ----------
        samples : ndarray, 1-D
            uint16, int16, int32, float32 or float64 samples (counts); other dtypes are converted
            to float32.
        calibration_or_axis : Calibration or ndarray
            The frame's TOF calibration, or an explicit float64 m/z axis (increasing, one value
            per sample).
        out : ndarray, optional
            CENTROID_DTYPE array to write the peaks into (its length caps them); default: the
            processor's buffer (``max_peaks``), overwritten by the next scan.
        """
        s = samples
        if not (isinstance(s, np.ndarray) and s.ndim == 1 and s.flags.c_contiguous
                and s.dtype in (np.uint16, np.int16, np.int32, np.float32, np.float64)
                and s.dtype.isnative):
            s = np.ascontiguousarray(s)
            if s.ndim != 1:
                raise ValueError(f"samples must be 1-D, got {s.ndim} dimensions")
            if s.dtype not in (np.uint16, np.int16, np.int32, np.float32, np.float64) or not s.dtype.isnative:
                s = s.astype(np.float32)
        n = s.shape[0]
        if isinstance(calibration_or_axis, Calibration):
            axis = None
            cal = calibration_or_axis
            if n < MIN_SAMPLES:
                return self._skipped(s, out, f"fewer than {MIN_SAMPLES} samples ({n})")
            if not self._tof_axis_increasing(cal, n):
                return self._skipped(s, out, "the calibration's m/z axis is not strictly increasing")
            t0, dt, c0, c1, c2 = cal.t0_ns, cal.dt_ns, cal.c0, cal.c1, cal.c2
            if self._xic_mz.shape[0]:
                self._xic_for_calibration(cal, n)
        else:
            axis = calibration_or_axis
            if not (isinstance(axis, np.ndarray) and axis.dtype == np.float64 and axis.flags.c_contiguous):
                axis = np.ascontiguousarray(axis, dtype=np.float64)
            if axis.shape != (n,):
                raise ValueError(f"the m/z axis has shape {axis.shape}, the samples ({n},)")
            if n < MIN_SAMPLES:
                return self._skipped(s, out, f"fewer than {MIN_SAMPLES} samples ({n})")
            if not self._increasing(axis):
                return self._skipped(s, out, "the m/z axis is not strictly increasing")
            t0 = dt = c0 = c1 = c2 = 0.0
            if self._xic_mz.shape[0]:
                self._xic_lo[:] = np.searchsorted(axis, self._xic_mz[:, 0], "left")
                self._xic_hi[:] = np.searchsorted(axis, self._xic_mz[:, 1], "right")
        buf = self._peaks if out is None else out
        xic = np.empty(self._xic_lo.shape[0], np.float64)
        kern = self._kernel
        self._serial += 1
        written = kern.run(s, axis, t0, dt, c0, c1, c2, self._xic_lo, self._xic_hi, xic, buf)
        return ScanResult(buf[:written], kern.n_found, kern.tic, kern.raw_sum, xic, kern.noise_median,
                          kern.baseline_median, n, kern.n_detected, self, self._serial)

    @property
    def trace(self) -> np.ndarray:
        """The last scan's S/N trace (smoothed, baseline-subtracted, divided by the noise; float32
        view, overwritten by the next scan). Its peaks are exactly ``scipy.signal.find_peaks(trace,
        height=detection_height, prominence=..., wlen=..., width=min_width)``."""
        return self._kernel.trace

    @property
    def samples_f32(self) -> np.ndarray:
        """The last scan's samples as float32 (view, overwritten by the next scan)."""
        return self._kernel.samples_f32

    def baseline_blocks(self):
        """(centres, baseline, noise) per statistics block of the last scan (float64 copies)."""
        return self._kernel.baseline_blocks()

    def mz_axis(self, calibration: Calibration, n_samples: int) -> np.ndarray:
        """The whole m/z axis for a calibration (cached, read-only float64)."""
        return self._axes.get(calibration, n_samples)

    # -- internals -------------------------------------------------------------------------------
    def _skipped(self, s: np.ndarray, out: np.ndarray | None, reason: str) -> ScanResult:
        """The empty result of a scan that cannot be analysed (see ScanResult.skipped)."""
        buf = self._peaks if out is None else out
        self._serial += 1
        n = s.shape[0]
        return ScanResult(buf[:0], 0, 0.0, float(np.sum(s, dtype=np.float64)), np.zeros(self._xic_lo.shape[0]),
                          0.0, 0.0, n, 0, None, 0, np.zeros(n, np.float32), reason)

    def _increasing(self, axis: np.ndarray) -> bool:
        """True if every m/z is larger than the one before (NaN fails), without allocating per scan."""
        m = axis.shape[0] - 1
        if self._cmp.shape[0] < m:
            self._cmp = np.empty(m, np.bool_)
        cmp = self._cmp[:m]
        np.greater(axis[1:], axis[:-1], out=cmp)
        return bool(cmp.all())

    def _tof_axis_increasing(self, cal: Calibration, n: int) -> bool:
        """Whether the TOF law gives a strictly increasing axis over n samples (once per calibration)."""
        key = (cal, n)
        ok = self._tof_increasing.get(key)
        if ok is None:
            if len(self._tof_increasing) > 16:
                self._tof_increasing.clear()
            ok = self._tof_increasing[key] = self._increasing(self.mz_axis(cal, n))
        return ok

    def _xic_for_calibration(self, cal: Calibration, n: int) -> None:
        key = (cal, n)
        ranges = self._xic_cache.get(key)
        if ranges is None:
            with np.errstate(invalid="ignore"):
                lo = np.ceil(mz_to_index(cal, self._xic_mz[:, 0]))
                hi = np.floor(mz_to_index(cal, self._xic_mz[:, 1])) + 1
            lo = np.clip(np.nan_to_num(lo, nan=n), 0, n).astype(np.intp)
            hi = np.clip(np.nan_to_num(hi, nan=0), 0, n).astype(np.intp)
            hi = np.maximum(hi, lo)
            if len(self._xic_cache) > 16:
                self._xic_cache.clear()
            ranges = self._xic_cache[key] = (lo, hi)
        self._xic_lo[:] = ranges[0]
        self._xic_hi[:] = ranges[1]


def preset_params(preset: str | None) -> dict:
    """The ScanParams fields of an instrument-kind preset (empty for None or '')."""
    if not preset:
        return {}
    try:
        return dict(PRESETS[preset])
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None


def _noise_suppressed_floor(intensity: np.ndarray) -> float:
    """For data whose noise was removed (mostly exact zeros, e.g. reduced Orbitrap profiles): a noise
    sigma such that the weakest retained points are at S/N 1 (the 5th percentile of the positive
    values). 0 when the data are not mostly zeros."""
    nz = np.count_nonzero(intensity)
    if nz == 0 or nz > 0.5 * intensity.size:
        return 0.0
    pos = intensity[intensity > 0]
    return float(np.percentile(pos, 5)) if pos.size else 0.0


def _spectrum_params(y: np.ndarray, preset: str | None, params: dict) -> dict:
    """ScanParams fields for one spectrum: the preset, then ``params``, then for noise-suppressed
    data (mostly exact zeros) a noise floor, no smoothing and detect_sigma 0 unless given."""
    params = {**preset_params(preset), **params}
    if "noise_floor" not in params:
        floor = _noise_suppressed_floor(y)
        if floor > 0:
            params["noise_floor"] = floor
            params.setdefault("smoothing", "none")
            params.setdefault("detect_sigma", 0.0)    # no noise left to raise false alarms
    params.setdefault("max_peaks", max(4096, y.size // 4))
    return params


def spectrum_params(intensity, *, preset: str | None = None, **params) -> ScanParams:
    """The parameters :func:`pick_centroids` starts from for this spectrum (before an automatic
    peak-width rescaling, which keeps the baseline and noise settings): the preset, ``params``, and
    the noise floor of noise-suppressed data."""
    return ScanParams(**_spectrum_params(np.asarray(intensity), preset, params))


def pick_centroids(mz, intensity, *, preset: str | None = None, **params) -> np.ndarray:
    """Centroids of one profile spectrum: a structured array sorted by m/z.

    Parameters
    ----------
    mz : array_like, 1-D
        m/z of each sample, float64, strictly increasing (any spacing).
    intensity : array_like, 1-D
        Intensities (counts), float32 or float64 (other types are converted).
    preset : 'tof' | 'orbitrap' | 'fticr', optional
        Defaults for that instrument kind (:data:`PRESETS`); ``params`` override them.
    **params
        Fields of :class:`ScanParams` (``min_snr``, ``smoothing``, ``wlen``, ...), plus
        ``fwhm_samples`` (typical peak width in samples, or ``"auto"``, the default).

    Returns
    -------
    ndarray of CENTROID_DTYPE
        ``mz`` (centre, m/z), ``intensity`` (apex height above baseline, counts), ``area``
        (counts x m/z), ``fwhm`` (m/z), ``snr`` (height / local noise sigma), ``noise`` (counts),
        ``index`` (fractional sample index), ``apex`` (sample index of the detected maximum),
        ``flags`` (FLAG_FIT: fitted; FLAG_ASYM: with it, the apex of a two-sided fit of a tailed peak;
        FLAG_EDGE: reaches the first or last sample).

    Notes
    -----
    Defaults for real data. With ``fwhm_samples="auto"`` a first pass with the default parameters
    (5 samples per FWHM) measures the median FWHM, in samples, of its peaks above S/N 10; if that is
    more than 1.5x off, the spectrum is processed again with :meth:`ScanParams.for_peak_width`.
    Noise-suppressed data (mostly exact zeros, such as reduced Orbitrap profiles) get a noise floor
    at the 5th percentile of the positive intensities unless ``noise_floor`` is given, no smoothing
    unless ``smoothing`` is given (smoothing across the zero gaps would ring), and ``detect_sigma=0``
    (there is no noise left to raise false alarms; ``min_snr`` alone decides).

    The orbitrap and fticr presets do not smooth: apodised FT profiles have band-limited noise
    (neighbouring samples correlated), and smoothing would only merge close peaks. When the noise
    of the spectrum is white at the sample scale instead (lag-1 autocorrelation below
    :data:`WHITE_NOISE_LAG1`), one-sample noise maxima on the flanks and tails of strong peaks
    would be reported, so the detection trace is smoothed (Savitzky-Golay over ~1.3 FWHM) unless
    ``smoothing`` is given.
    """
    m = np.ascontiguousarray(mz, dtype=np.float64)
    y = np.asarray(intensity)
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float64)
    y = np.ascontiguousarray(y)
    if m.ndim != 1 or y.ndim != 1:
        raise ValueError("mz and intensity must be 1-D")
    if m.shape != y.shape:
        raise ValueError(f"mz and intensity differ in length: {m.size} and {y.size}")
    if y.size < 3:
        return np.zeros(0, CENTROID_DTYPE)
    if not np.all(np.diff(m) > 0):
        raise ValueError("mz must be strictly increasing")
    given = dict(params)
    fwhm = given.pop("fwhm_samples", "auto")
    params = _spectrum_params(y, preset, given)
    # a preset's "no smoothing" assumes band-limited (apodised FT) noise; white noise gets smoothed
    check_noise = "smoothing" not in given and params.get("smoothing") == "none" and "noise_floor" not in params
    if fwhm != "auto" and not check_noise:
        return _processor(ScanParams.for_peak_width(float(fwhm), **params)).process(y, m).peaks.copy()
    proc = _processor(ScanParams(**params))
    first = proc.process(y, m)
    est = _median_fwhm_samples(first.peaks, m) if fwhm == "auto" else float(fwhm)
    smoothed = check_noise and _noise_is_white(proc, first)
    if smoothed:
        window = max(5, int(round(1.3 * (est or 4.0))) | 1)
        params.update(smoothing="savgol", savgol_window=window, savgol_order=3 if window >= 7 else 2)
    if est is not None and (fwhm != "auto" or est > 7.5 or est < 3.3):
        return _processor(ScanParams.for_peak_width(est, **params)).process(y, m).peaks.copy()
    if smoothed:
        return _processor(ScanParams(**params)).process(y, m).peaks.copy()
    return first.peaks.copy()


_local = threading.local()
_CACHED_PROCESSORS = 8


def _processor(params: ScanParams) -> ScanProcessor:
    """This thread's processor for ``params``: kept between pick_centroids calls (up to
    _CACHED_PROCESSORS per thread), so that a call neither configures a kernel nor allocates and
    first-touches its buffers again (~100 us of a 64k-point spectrum's ~300). Safe because
    pick_centroids returns copies and a thread runs one call at a time."""
    cache = getattr(_local, "processors", None)
    if cache is None:
        cache = _local.processors = {}
    proc = cache.pop(params, None)
    if proc is None:
        proc = ScanProcessor(params)
        if len(cache) >= _CACHED_PROCESSORS:
            del cache[next(iter(cache))]     # the least recently used
    cache[params] = proc
    return proc


def _median_fwhm_samples(peaks: np.ndarray, mz: np.ndarray) -> float | None:
    """Median FWHM, in samples, of the fitted peaks above S/N 10 (the sample spacing at each
    apex); None with fewer than 3."""
    strong = peaks[(peaks["snr"] >= 10) & ((peaks["flags"] & FLAG_FIT) != 0)]
    if strong.size < 3:
        return None
    i = np.clip(strong["apex"], 0, mz.size - 2)
    return float(np.median(strong["fwhm"] / (mz[i + 1] - mz[i])))


WHITE_NOISE_LAG1 = 0.25
"""Lag-1 autocorrelation of the noise below which it counts as white at the sample scale. Measured
(docs/dsp.md, "Presets"): white Poisson + read noise (both generators) 0.01-0.04; apodised FT
profiles (LTQ FT, FTMS of tests/data) 0.49-0.65; the MALDI-TOF profile 0.75."""


def _noise_is_white(proc: ScanProcessor, result: ScanResult, min_pairs: int = 1000) -> bool:
    """Whether the last scan's noise is white at the sample scale: the lag-1 autocorrelation of
    (sample - baseline) / noise over neighbouring non-zero samples both within 3 sigma of the
    baseline is below WHITE_NOISE_LAG1 (False with fewer than ``min_pairs`` such pairs)."""
    v = np.asarray(result.intensity, np.float64)
    centres, _, sigma = proc.baseline_blocks()
    r = v * np.interp(np.arange(v.size, dtype=np.float64), centres, 1.0 / sigma)
    ok = (np.abs(r) < 3.0) & (proc.samples_f32 != 0)
    pair = ok[:-1] & ok[1:]
    if np.count_nonzero(pair) < min_pairs:
        return False
    a, b = r[:-1][pair], r[1:][pair]
    a, b = a - a.mean(), b - b.mean()
    rho = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return rho < WHITE_NOISE_LAG1
