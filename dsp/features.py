"""Feature vectors for the classifier: a calibrated profile spectrum binned onto the model's m/z grid.

The model bundle's ``model.json`` carries an ``input`` spec (:class:`FeatureSpec`): an m/z range,
a number of bins and a normalisation. A feature vector is computed from m/z, never from sample
index, so a model trained on one instrument's sampling works on any other's (TOF, explicit axes,
coarser or finer sampling).

Binning
-------
Each bin holds the *mean intensity* of the profile over its m/z interval ``[e_b, e_b+1)``: every
segment between two samples carries its trapezoid area, spread evenly over the segment's m/z
width, and a bin collects the area that falls inside it, divided by its width (m/z). Area is
conserved and the result does not depend on how densely the spectrum is sampled: a wide bin
gets the average over many samples, a bin narrower than the sample spacing the mean of the
segment it lies in. Bins outside the spectrum's m/z coverage are 0.

With ``S_i`` the trapezoid area of segment ``i`` (samples ``i`` to ``i + 1``), the integral up to
an edge in segment ``i`` at fraction ``t`` is ``sum(S_j, j < i) + t * S_i``, so bin ``b`` with edges
in segments ``i0``, ``i1`` at fractions ``t0``, ``t1`` integrates ``sum(S_i0 .. S_i1-1) + t1*S_i1 - t0*S_i0``.
The segment index and fraction of every edge depend only on the m/z axis (:class:`BinPlan`), so
a batch of spectra sharing one calibration shares one plan; inference/gpu.py runs the same
formula on the GPU. One spectrum (:func:`feature_vector`, :class:`FeatureExtractor`) goes through
the Cython kernel cext/features.pyx in a single call without the GIL; :meth:`BinPlan.bin` and
:func:`normalise` are the NumPy reference (:func:`feature_vector_reference`) and serve batches.

Normalisation (applied per spectrum, in this order)
---------------------------------------------------
``baseline``  ``"tophat"``: subtract the morphological opening of the binned spectrum (a running
              minimum then a running maximum, each ``baseline_window`` bins wide, edges clamped:
              scipy.ndimage ``mode="nearest"``), which removes a smoothly varying baseline
              (pedestal, drift, chemical continuum) and keeps peaks narrower than the window;
              ``"min"``: subtract the smallest bin value (a constant offset); ``"none"``.
``scale``     ``"max"``: divide by the largest bin (base peak = 1); ``"sum"``: divide by the sum
              (total ion current = 1); ``"none"``.
``transform`` ``"sqrt"``: square root, which compresses the dynamic range so minor peaks and
              isotopes count (the same variance-stabilising step as for counting noise); ``"none"``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from cext import features as _kernel

FEATURE_VERSION = 1
"""Version of the binning + normalisation definition above; model.json records it."""

BASELINES = ("tophat", "min", "none")
SCALES = ("max", "sum", "none")
TRANSFORMS = ("sqrt", "none")
SPACINGS = ("linear",)

_TINY = 1e-30

_BASELINE_CODE = {"none": _kernel.BASELINE_NONE, "tophat": _kernel.BASELINE_TOPHAT, "min": _kernel.BASELINE_MIN}
_SCALE_CODE = {"none": _kernel.SCALE_NONE, "max": _kernel.SCALE_MAX, "sum": _kernel.SCALE_SUM}
_TRANSFORM_CODE = {"none": _kernel.TRANSFORM_NONE, "sqrt": _kernel.TRANSFORM_SQRT}
# The kernel is compiled for these (native byte order); other spectra are converted to float64 first.
_KERNEL_DTYPES = frozenset(np.dtype(t) for t in (np.uint16, np.int16, np.int32, np.float32, np.float64))


class FeatureSpecError(ValueError):
    """An input spec that this feature code cannot produce (names the key and the rule)."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What the model expects as input: ``bins`` float32 values over ``[mz_min, mz_max)`` (m/z).

    Bins are equally wide in m/z (``spacing="linear"``); the normalisation is described in the
    module docstring.
    """

    mz_min: float
    mz_max: float
    bins: int
    spacing: str = "linear"
    baseline: str = "tophat"
    baseline_window: int = 31
    scale: str = "max"
    transform: str = "sqrt"
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.bins, int) and not isinstance(self.bins, bool) and self.bins >= 2):
            problems.append(f"bins must be an integer >= 2, got {self.bins!r}")
        for key in ("mz_min", "mz_max"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                problems.append(f"{key} must be a finite m/z >= 0, got {v!r}")
        if not problems and not self.mz_min < self.mz_max:
            problems.append(f"mz_min must be < mz_max, got {self.mz_min!r} >= {self.mz_max!r}")
        for key, allowed in (("spacing", SPACINGS), ("baseline", BASELINES), ("scale", SCALES),
                             ("transform", TRANSFORMS)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        w = self.baseline_window
        if not (isinstance(w, int) and not isinstance(w, bool) and w >= 1 and w % 2 == 1):
            problems.append(f"baseline_window must be an odd integer >= 1 (bins), got {w!r}")
        if self.version != FEATURE_VERSION:
            problems.append(f"version {self.version!r} is not supported by this ionstream "
                            f"(feature version {FEATURE_VERSION})")
        if problems:
            raise FeatureSpecError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict, source: str = "input spec") -> "FeatureSpec":
        """Build from model.json's ``input`` object; errors name ``source`` and the key."""
        if not isinstance(d, dict):
            raise FeatureSpecError(f"{source}: expected an object, got {type(d).__name__}")
        norm = d.get("normalisation", {})
        if not isinstance(norm, dict):
            raise FeatureSpecError(f"{source}: 'normalisation' must be an object, got {norm!r}")
        missing = [k for k in ("mz_min", "mz_max", "bins") if k not in d]
        if missing:
            raise FeatureSpecError(f"{source}: missing key(s) {', '.join(missing)}")
        known = {"mz_min", "mz_max", "bins", "spacing", "normalisation", "version", "dtype", "name"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FeatureSpecError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        unknown = sorted(set(norm) - {"baseline", "baseline_window", "scale", "transform"})
        if unknown:
            raise FeatureSpecError(f"{source}: unknown normalisation key(s) {', '.join(unknown)}")
        if d.get("dtype", "float32") != "float32":
            raise FeatureSpecError(f"{source}: dtype must be float32, got {d.get('dtype')!r}")
        try:
            return cls(mz_min=d["mz_min"], mz_max=d["mz_max"], bins=d["bins"],
                       spacing=d.get("spacing", "linear"), baseline=norm.get("baseline", "tophat"),
                       baseline_window=norm.get("baseline_window", 31),
                       scale=norm.get("scale", "max"), transform=norm.get("transform", "sqrt"),
                       version=d.get("version", FEATURE_VERSION))
        except FeatureSpecError as exc:
            raise FeatureSpecError(f"{source}: {exc}") from None

    def to_dict(self) -> dict:
        """The ``input`` object of model.json (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        return {"mz_min": d["mz_min"], "mz_max": d["mz_max"], "bins": d["bins"], "spacing": d["spacing"],
                "dtype": "float32", "version": d["version"],
                "normalisation": {"baseline": d["baseline"], "baseline_window": d["baseline_window"],
                                  "scale": d["scale"], "transform": d["transform"]}}

    @property
    def edges(self) -> np.ndarray:
        """``bins + 1`` bin edges (m/z, float64)."""
        return np.linspace(self.mz_min, self.mz_max, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (m/z, float64)."""
        e = self.edges
        return 0.5 * (e[1:] + e[:-1])

    def plan(self, mz: np.ndarray) -> "BinPlan":
        """The binning plan for spectra on the m/z axis ``mz`` (reusable for every scan on it)."""
        return BinPlan(self, mz)

    def __call__(self, mz: np.ndarray, intensity: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Feature vector of one spectrum; shorthand for :func:`feature_vector`."""
        return feature_vector(mz, intensity, self, out=out)


def _as_axis(mz) -> np.ndarray:
    mz = np.ascontiguousarray(mz, dtype=np.float64)
    if mz.ndim != 1:
        raise ValueError(f"`mz` must be 1-D, got shape {mz.shape}")
    if mz.size < 2:
        raise ValueError(f"`mz` must have at least 2 samples, got {mz.size}")
    if not np.all(np.diff(mz) > 0):
        raise ValueError("`mz` must be strictly increasing (m/z)")
    return mz


class BinPlan:
    """Where each bin edge of a :class:`FeatureSpec` falls on one m/z axis.

    ``index[k]`` is the segment (between samples ``index[k]`` and ``index[k] + 1``) holding edge
    ``k`` and ``frac[k]`` its fraction along it, clamped so edges below the first sample integrate
    to 0 and above the last to the whole spectrum. Computing it costs a search per edge; reuse
    it for every scan with the same calibration.
    """

    __slots__ = ("spec", "n_samples", "index", "frac", "lo", "hi", "dmz", "width", "empty",
                 "mz_first", "mz_last")

    def __init__(self, spec: FeatureSpec, mz: np.ndarray):
        mz = _as_axis(mz)
        n = mz.size
        edges = spec.edges
        idx = np.clip(np.searchsorted(mz, edges, side="right") - 1, 0, n - 2)
        frac = np.clip((edges - mz[idx]) / (mz[idx + 1] - mz[idx]), 0.0, 1.0)
        self.spec = spec
        self.n_samples = n
        self.index = idx.astype(np.int64)   # segment of each edge (absolute), bins + 1
        self.frac = frac                    # fraction of that segment below the edge, bins + 1
        self.lo = int(idx[0])               # only segments lo..hi matter
        self.hi = int(idx[-1])
        self.dmz = np.diff(mz[self.lo:self.hi + 2])   # their widths (m/z)
        self.width = np.diff(edges)         # bin widths (m/z), bins
        self.empty = idx[1:] == idx[:-1]    # bins whose both edges lie in one segment
        self.mz_first = float(mz[0])
        self.mz_last = float(mz[-1])

    def matches(self, mz: np.ndarray) -> bool:
        """Cheap check that ``mz`` is (very likely) the axis this plan was made for."""
        return (mz.shape == (self.n_samples,) and float(mz[0]) == self.mz_first
                and float(mz[-1]) == self.mz_last)

    def bin(self, intensity: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Mean intensity per bin, for one spectrum (``(n,)``) or a batch (``(rows, n)``), float64."""
        y = np.asarray(intensity)
        if y.shape[-1] != self.n_samples or y.ndim not in (1, 2):
            raise ValueError(f"`intensity` must have shape ({self.n_samples},) or (rows, {self.n_samples}) "
                             f"to match the m/z axis, got {y.shape}")
        y = y[..., self.lo:self.hi + 2].astype(np.float64)
        seg = y[..., 1:]
        seg += y[..., :-1]
        seg *= 0.5 * self.dmz                                        # trapezoid areas S_i
        rel = self.index - self.lo
        whole = np.add.reduceat(seg, rel, axis=-1)[..., :-1]        # sum of S over [idx_b, idx_b+1)
        whole[..., self.empty] = 0.0                                 # (reduceat gives S_idx there)
        part = self.frac * seg[..., rel]                             # t_k * S_idx_k
        whole += part[..., 1:]
        whole -= part[..., :-1]
        whole /= self.width
        if out is not None:
            out[...] = whole
            return out
        return whole


def normalise(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Apply ``spec``'s normalisation in place to binned values ``x`` (``(bins,)`` or ``(rows, bins)``)."""
    if spec.baseline == "tophat":
        opened = maximum_filter1d(minimum_filter1d(x, spec.baseline_window, axis=-1, mode="nearest"),
                                  spec.baseline_window, axis=-1, mode="nearest")
        x -= opened
    elif spec.baseline == "min":
        x -= x.min(axis=-1, keepdims=True)
    if spec.scale == "max":
        x /= np.maximum(np.abs(x).max(axis=-1, keepdims=True), _TINY)
    elif spec.scale == "sum":
        s = x.sum(axis=-1, keepdims=True)
        x /= np.where(np.abs(s) > _TINY, s, 1.0)
    if spec.transform == "sqrt":
        np.maximum(x, 0.0, out=x)
        np.sqrt(x, out=x)
    return x


def _samples(plan: BinPlan, intensity) -> np.ndarray:
    """``intensity`` as the kernel takes it: 1-D, C-contiguous, one of its dtypes (others to float64,
    as BinPlan.bin converts them)."""
    y = np.asarray(intensity)
    if y.ndim != 1:
        raise ValueError(f"`intensity` must be 1-D, got shape {y.shape}")
    if y.shape[0] != plan.n_samples:
        raise ValueError(f"`intensity` must have shape ({plan.n_samples},) or (rows, {plan.n_samples}) "
                         f"to match the m/z axis, got {y.shape}")
    if y.dtype not in _KERNEL_DTYPES:
        return y.astype(np.float64)
    return np.ascontiguousarray(y)


def _check_out(out: np.ndarray, spec: FeatureSpec) -> None:
    if out.shape != (spec.bins,) or out.dtype != np.float32:
        raise ValueError(f"`out` must be float32 of shape ({spec.bins},), got {out.dtype} {out.shape}")


def _writable(out: np.ndarray) -> bool:
    """Whether the kernel can write ``out`` directly (else it goes through a temporary)."""
    return out.flags.c_contiguous and out.flags.writeable


def _run(plan: BinPlan, y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    spec = plan.spec
    _kernel.feature_vector(y, plan.index, plan.frac, plan.dmz, plan.width, plan.lo, plan.hi,
                           _BASELINE_CODE[spec.baseline], spec.baseline_window, _SCALE_CODE[spec.scale],
                           _TRANSFORM_CODE[spec.transform], out, scratch)


def _scratch(spec: FeatureSpec) -> np.ndarray:
    return np.empty(_kernel.scratch_len(spec.bins, spec.baseline_window), np.float64)


def _plan_for(mz, spec: FeatureSpec, plan: BinPlan | None) -> BinPlan:
    """``plan`` if it was made for ``spec`` and this axis, else a new one."""
    if plan is None or plan.spec != spec or not plan.matches(np.asarray(mz)):
        plan = BinPlan(spec, mz)
    return plan


def _compute(plan: BinPlan, intensity, out: np.ndarray | None, scratch: np.ndarray,
             tmp: np.ndarray | None = None) -> np.ndarray:
    """Run the kernel for one spectrum into ``out`` (new when None; through ``tmp``, or a new
    temporary, when the kernel cannot write ``out`` directly)."""
    spec = plan.spec
    y = _samples(plan, intensity)
    if out is None:
        out = np.empty(spec.bins, np.float32)   # the caller keeps it: never a reused buffer
    else:
        _check_out(out, spec)
    if _writable(out):
        _run(plan, y, out, scratch)
        return out
    if tmp is None:
        tmp = np.empty(spec.bins, np.float32)
    _run(plan, y, tmp, scratch)
    out[:] = tmp
    return out


def feature_vector(mz: np.ndarray, intensity: np.ndarray, spec: FeatureSpec, out: np.ndarray | None = None,
                   plan: BinPlan | None = None) -> np.ndarray:
    """The model's input vector for one calibrated profile spectrum.

    Computed by the nogil kernel cext/features.pyx; :func:`feature_vector_reference` is the same
    definition in NumPy (the two agree to float32 rounding, see the kernel's docstring).

    Parameters
    ----------
    mz : (n,) array_like
        Strictly increasing m/z of each sample (e.g. from the frame's TOF calibration).
    intensity : (n,) array_like
        Profile intensities (counts or any linear unit; the normalisation removes the scale).
    spec : FeatureSpec
        The model's input spec (``bundle.feature_spec``).
    out : (bins,) float32 array, optional
        Written in place and returned (lets a worker reuse one buffer).
    plan : BinPlan, optional
        A plan for this m/z axis from ``spec.plan(mz)``, to skip recomputing it.

    Returns
    -------
    (bins,) float32 array
    """
    return _compute(_plan_for(mz, spec, plan), intensity, out, _scratch(spec))


def feature_vector_reference(mz: np.ndarray, intensity: np.ndarray, spec: FeatureSpec,
                             out: np.ndarray | None = None, plan: BinPlan | None = None) -> np.ndarray:
    """:func:`feature_vector` in NumPy/SciPy (:meth:`BinPlan.bin` then :func:`normalise`): the
    reference the kernel is tested against; same arguments and result."""
    plan = _plan_for(mz, spec, plan)
    intensity = np.asarray(intensity)
    if intensity.ndim != 1:
        raise ValueError(f"`intensity` must be 1-D, got shape {intensity.shape}")
    x = normalise(plan.bin(intensity), spec)
    if out is None:
        return x.astype(np.float32)
    _check_out(out, spec)
    out[:] = x
    return out


def feature_batch(mz: np.ndarray, intensities: np.ndarray, spec: FeatureSpec,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Feature vectors of ``(rows, n)`` spectra sharing one m/z axis; ``(rows, bins)`` float32."""
    intensities = np.asarray(intensities)
    if intensities.ndim != 2:
        raise ValueError(f"`intensities` must be 2-D (rows, samples), got shape {intensities.shape}")
    x = normalise(BinPlan(spec, mz).bin(intensities), spec)
    if out is None:
        return x.astype(np.float32)
    out[...] = x
    return out


class FeatureExtractor:
    """Per-thread feature computation that keeps the plan of the last m/z axis it saw.

    A DSP worker owns one: ``vec = extractor(mz, intensity)`` (or ``out=`` a reused buffer).
    The plan is rebuilt when the axis changes (different length or end points). The extractor
    keeps the kernel's scratch, so with ``out=`` a call allocates no arrays for C-contiguous
    uint16, int16, int32, float32 or float64 spectra; not thread-safe.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self._plan: BinPlan | None = None
        self._scratch = _scratch(spec)
        self._tmp = np.empty(spec.bins, np.float32)   # for an `out` the kernel cannot write

    def __call__(self, mz: np.ndarray, intensity: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        self._plan = _plan_for(mz, self.spec, self._plan)
        return _compute(self._plan, intensity, out, self._scratch, self._tmp)
