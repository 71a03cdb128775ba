"""Spectrum model shared by the simulator, the tests and model training.

Pure NumPy, deterministic given a seed, no global state (the only module-level cache is a
memo of immutable default :class:`InstrumentModel` objects, keyed by ``n_samples``).

Instrument axis (TOF)
---------------------
Sample ``i`` has flight time ``t = t0_ns + i * dt_ns`` (ns) and
``sqrt(m/z) = c0 + c1 * t_us + c2 * t_us**2`` with ``t_us = t / 1000``.
:func:`default_calibration` chooses coefficients so that ``n_samples`` samples cover
m/z 95 .. 2100 (the frame's :class:`~instrument.frames.Calibration`). The law itself is
:mod:`instrument.calibration` (``mz_axis``, ``mz_to_index``, ``mz_per_sample`` are re-exported here).

Peak shape and resolving power
------------------------------
Peaks are Gaussian in m/z with ``FWHM = m/z / R(m/z)`` and ``R(m/z) = R0 * (m/z / m0) ** k``.
The default is a TOF law (k = 0.5: constant peak width in flight time), R0 = 5500 at m0 = 1000,
i.e. R = 1740 at m/z 100, 5500 at 1000 and 7780 at 2000. On the default 65536-sample axis that
gives 5.4 samples per FWHM at every m/z (:meth:`InstrumentModel.samples_per_fwhm`). R = 20000 at
constant R would need about 720 000 samples over 100..2000 for 5 samples per FWHM at m/z 100;
pass ``resolving_power=`` / ``n_samples=`` to trade them (fewer samples give fewer samples per FWHM).

Intensities and noise (all in ADC counts)
-----------------------------------------
``sample = pedestal + drift(t) * D(i) + continuum(m/z) + peaks + noise``, then digitised: rounded
and clipped to 0..65535 for uint16 (int16: -32768..32767; float32: neither). ``noise`` is
Gaussian with variance ``detector_noise**2 + gain * (continuum + peaks)``: detector/ADC noise plus
shot noise (the normal approximation of Poisson ion statistics, ``gain`` counts per ion).
:attr:`ScanTruth.noise_sigma` and the per-peak ``snr`` use the noise of the baseline alone,
``sqrt(detector_noise**2 + gain * continuum)`` at the peak.

Compound classes (:data:`CLASS_LABELS`)
---------------------------------------
0 background   blank: only baseline, chemical background and contaminant ions (siloxanes, phthalates)
1 peptide      tryptic peptides 800..4000 Da, charges 1..3 (mostly 2+/3+), averagine isotope
               envelopes (mass defect ~ +0.5 per kDa), immonium/y1 marker ions (110, 120, 136, 147, 175)
2 lipid        PC/PE/SM glycerophospholipids, singly charged [M+H]+/[M+Na]+, high mass defect,
               head-group fragments (184.0733, 104.1070) or neutral losses (-141.0191, -183.0660)
3 small_molecule  drug-like C8..C32 formulas with N, O, S, F, Cl (Cl isotope M+2), [M+H]+ /
               [M+Na]+ / water loss / fragments, marker fragments (105.0699, 121.0648, 163.0754)
4 polymer      PEG (44.0262), PPG (58.0419) or PDMS (74.0188) oligomer series, H+/NH4+/Na+ adducts,
               some 2+ series

Scan label rule
---------------
A compound is *detected* in a scan when the expected apex height of its base peak is at least
``LABEL_MIN_SNR`` (10) times the baseline noise sigma at that m/z. The scan's label is the class of
the detected compound with the highest base peak (in counts: the compound that owns the
scan's most intense analyte ion); with no detected compound the label is 0 (background).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from instrument.calibration import mz_axis, mz_per_sample, mz_to_index, time_us_for_mz  # the TOF law
from instrument.frames import Calibration

CLASS_LABELS: tuple[str, ...] = ("background", "peptide", "lipid", "small_molecule", "polymer")
BACKGROUND = 0
LABEL_MIN_SNR = 10.0
"""Base-peak S/N at or above which a compound counts as detected for the scan label."""

MZ_MIN = 95.0
MZ_MAX = 2100.0
DEFAULT_N_SAMPLES = 65536

PROTON = 1.007276467
ELECTRON = 0.000548580
C13_SPACING = 1.0033548378
"""m/z spacing of isotope peaks at charge 1 (13C - 12C); at charge z it is this / z."""

MONO = {
    "C": 12.0, "H": 1.00782503207, "N": 14.0030740048, "O": 15.99491461956, "P": 30.97376163,
    "S": 31.97207100, "F": 18.99840322, "Cl": 34.96885268, "Na": 22.9897692809, "Si": 27.9769265325,
}
ADDUCTS = {  # mass added to the neutral per charge
    "H": PROTON,
    "Na": MONO["Na"] - ELECTRON,
    "NH4": MONO["N"] + 4 * MONO["H"] - ELECTRON,
}
# Heavy-isotope probabilities relative to the light isotope (Poisson rates per atom).
_P_PLUS1 = {"C": 0.010816, "H": 0.000115, "N": 0.003660, "O": 0.000381, "S": 0.007893, "Si": 0.050790}
_P_PLUS2 = {"O": 0.002055, "S": 0.044740, "Si": 0.033480}
_CL37 = 0.319896  # 37Cl / 35Cl
_DM_PLUS2 = 1.9970  # mean mass step of the +2 heavy isotopes (18O, 34S, 30Si)
_DM_CL = 1.99705

ION_DTYPE = np.dtype([("mz", "f8"), ("rel_height", "f8"), ("isotope", "i2"), ("charge", "i2")])
"""One ion peak of a compound: m/z, apex height relative to the compound's base peak (= 1),
isotope index (0 = monoisotopic), charge."""

PEAK_DTYPE = np.dtype([
    ("mz", "f8"),           # true centre, m/z
    ("height", "f4"),       # expected apex height above baseline, counts
    ("area", "f4"),         # height * sigma_mz * sqrt(2 pi), counts * m/z
    ("fwhm", "f4"),         # m/z
    ("snr", "f4"),          # height / baseline noise sigma at the peak
    ("compound", "i4"),     # compound id; -1 chemical background ion, -2 random contaminant
    ("class_index", "i2"),  # index into CLASS_LABELS (0 for background ions)
    ("isotope", "i2"),      # 0 = monoisotopic
    ("charge", "i2"),
    ("blended", "?"),       # another true peak >= 10 % as high within one FWHM, or others add >= 5 % at the centre
])
"""Ground-truth peaks of one scan (ScanTruth.peaks), sorted by m/z."""

COMPOUND_DTYPE = np.dtype([("compound", "i4"), ("class_index", "i2"), ("height", "f4"),
                           ("total", "f4"), ("snr", "f4")])
"""Compounds present in a scan: id, class, base-peak apex height (counts), total expected counts
over all samples, base-peak S/N."""


# --------------------------------------------------------------------------------------------
# Axis
# --------------------------------------------------------------------------------------------

_DEFAULT_C = (0.012, 0.9995, 1.5e-6)  # c0, c1 (per us), c2 (per us^2)


def default_calibration(n_samples: int = DEFAULT_N_SAMPLES, mz_min: float = MZ_MIN,
                        mz_max: float = MZ_MAX) -> Calibration:
    """Calibration whose ``n_samples`` samples span m/z ``mz_min`` .. ``mz_max``."""
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples!r}")
    if not 0 < mz_min < mz_max:
        raise ValueError(f"need 0 < mz_min < mz_max, got {mz_min!r}, {mz_max!r}")
    c0, c1, c2 = _DEFAULT_C
    t_lo = time_us_for_mz(mz_min, c0, c1, c2) * 1000.0
    t_hi = time_us_for_mz(mz_max, c0, c1, c2) * 1000.0
    return Calibration(t0_ns=t_lo, dt_ns=(t_hi - t_lo) / (n_samples - 1), c0=c0, c1=c1, c2=c2)


# --------------------------------------------------------------------------------------------
# Instrument model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstrumentModel:
    """Axis, resolving power and noise of the simulated TOF. Intensities in ADC counts.

    Parameters
    ----------
    n_samples : samples per scan.
    calibration : TOF law; default :func:`default_calibration` (m/z 95..2100).
    resolving_power : R0 (m/z / FWHM) at ``reference_mz``.
    resolving_power_exponent : k in R = R0 * (m/z / reference_mz) ** k (0.5 = TOF, 0 = constant R).
    pedestal : ADC offset, counts.  detector_noise : detector/ADC noise sigma, counts.
    gain : counts per ion (shot-noise variance = gain * signal).
    continuum : chemical-background continuum level, counts (about 2x this at low m/z, 0.5x at high).
    drift_amplitude : baseline drift amplitude, counts; drift_period_s : its main period, s.
    background_seed : seed of the fixed chemical-background ion set ("grass").
    """

    n_samples: int = DEFAULT_N_SAMPLES
    calibration: Calibration | None = None
    resolving_power: float = 5500.0
    reference_mz: float = 1000.0
    resolving_power_exponent: float = 0.5
    pedestal: float = 100.0
    detector_noise: float = 3.0
    gain: float = 0.1
    continuum: float = 20.0
    drift_amplitude: float = 15.0
    drift_period_s: float = 45.0
    n_grass: int = 400
    background_seed: int = 12345

    def __post_init__(self) -> None:
        if self.n_samples < 16:
            raise ValueError(f"n_samples must be >= 16, got {self.n_samples!r}")
        if self.calibration is None:
            object.__setattr__(self, "calibration", default_calibration(self.n_samples))
        if self.resolving_power <= 0:
            raise ValueError(f"resolving_power must be > 0, got {self.resolving_power!r}")

    # --- axis and widths -------------------------------------------------------------------
    @cached_property
    def axis(self) -> np.ndarray:
        """m/z of every sample (float64); read-only."""
        a = mz_axis(self.calibration, self.n_samples)
        a.flags.writeable = False
        return a

    @property
    def mz_range(self) -> tuple[float, float]:
        return float(self.axis[0]), float(self.axis[-1])

    def fwhm(self, mz) -> np.ndarray:
        """Peak FWHM in m/z at ``mz``."""
        mz = np.asarray(mz, dtype=np.float64)
        r = self.resolving_power * (mz / self.reference_mz) ** self.resolving_power_exponent
        return mz / r

    def sigma_mz(self, mz) -> np.ndarray:
        return self.fwhm(mz) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def samples_per_fwhm(self, mz) -> np.ndarray:
        """How many samples one FWHM spans at ``mz`` (>= 5 wanted for good centroids)."""
        return self.fwhm(mz) / mz_per_sample(self.calibration, mz)

    # --- baseline and noise ----------------------------------------------------------------
    def continuum_at(self, mz) -> np.ndarray:
        """Chemical-background continuum (counts) at ``mz``: higher at low m/z."""
        mz = np.asarray(mz, dtype=np.float64)
        return self.continuum * (0.5 + 1.5 * np.exp(-(mz - MZ_MIN) / 300.0))

    def noise_sigma_at(self, mz) -> np.ndarray:
        """Baseline noise sigma (counts) at ``mz``: detector noise and continuum shot noise."""
        return np.sqrt(self.detector_noise ** 2 + self.gain * self.continuum_at(mz))

    @cached_property
    def continuum_array(self) -> np.ndarray:
        a = self.continuum_at(self.axis)
        a.flags.writeable = False
        return a

    @cached_property
    def noise_sigma_array(self) -> np.ndarray:
        a = np.sqrt(self.detector_noise ** 2 + self.gain * self.continuum_array)
        a.flags.writeable = False
        return a

    @cached_property
    def noise_sigma(self) -> float:
        """Median baseline noise sigma over the axis, counts."""
        return float(np.median(self.noise_sigma_array))

    @cached_property
    def drift_shape(self) -> np.ndarray:
        """D(i): smooth shape of the baseline drift along the axis (1.6 at the start, 0.4 at the end)."""
        a = 1.0 + 0.6 * np.cos(np.linspace(0.0, math.pi, self.n_samples))
        a.flags.writeable = False
        return a

    def drift(self, time_s: float) -> float:
        """Baseline drift (counts, multiplies drift_shape) at run time ``time_s``."""
        p = self.drift_period_s
        return self.drift_amplitude * (math.sin(2 * math.pi * time_s / p)
                                       + 0.5 * math.sin(2 * math.pi * time_s / (2.7 * p) + 1.0))

    def baseline(self, drift: float = 0.0) -> np.ndarray:
        """Expected baseline (float64 counts): pedestal + drift * D(i) + continuum."""
        return self.pedestal + drift * self.drift_shape + self.continuum_array

    # --- rendering ---------------------------------------------------------------------------
    def render(self, mz, height, *, halfwidth_sigma: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """Sample Gaussian peaks (centre ``mz``, apex ``height`` counts) on the axis.

        Returns ``(index, values)``: sorted unique sample indices (int64) and the summed expected
        counts there (float64). Each peak is evaluated out to ``halfwidth_sigma`` sigmas.
        """
        mz = np.asarray(mz, dtype=np.float64).ravel()
        height = np.asarray(height, dtype=np.float64).ravel()
        keep = (mz > self.axis[0]) & (mz < self.axis[-1]) & (height > 0)
        mz, height = mz[keep], height[keep]
        if mz.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        centre = mz_to_index(self.calibration, mz)
        sig = self.sigma_mz(mz)
        sig_samples = sig / mz_per_sample(self.calibration, mz)
        hw = np.ceil(halfwidth_sigma * sig_samples).astype(np.int64) + 1
        hmax = int(hw.max())
        offsets = np.arange(-hmax, hmax + 1)
        idx = np.rint(centre).astype(np.int64)[:, None] + offsets[None, :]
        valid = (np.abs(offsets)[None, :] <= hw[:, None]) & (idx >= 0) & (idx < self.n_samples)
        idx_c = np.clip(idx, 0, self.n_samples - 1)
        x = (self.axis[idx_c] - mz[:, None]) / sig[:, None]
        vals = height[:, None] * np.exp(-0.5 * x * x)
        idx, vals = idx[valid], vals[valid]
        uniq, inverse = np.unique(idx, return_inverse=True)
        return uniq, np.bincount(inverse, weights=vals, minlength=uniq.size)


@functools.lru_cache(maxsize=8)
def default_model(n_samples: int = DEFAULT_N_SAMPLES) -> InstrumentModel:
    """The default :class:`InstrumentModel` for ``n_samples`` (memoised; it is immutable)."""
    return InstrumentModel(n_samples=n_samples)


# --------------------------------------------------------------------------------------------
# Isotopes and compounds
# --------------------------------------------------------------------------------------------

def isotope_pattern(composition: dict[str, float], max_peaks: int = 8,
                    min_rel: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Isotope envelope of a composition at unit resolution.

    +1 heavy isotopes (13C, 2H, 15N, 17O, 33S, 29Si) are Poisson with rate sum(n_e p_e) at the
    13C spacing; +2 isotopes (18O, 34S, 30Si) Poisson at 1.997; 37Cl binomial at 1.99705. Fine
    structure of the same nominal shift is merged (abundance-weighted mean mass shift), as a
    TOF of this resolving power sees it.

    Returns ``(delta_mass, abundance)`` for nominal shifts 0, 1, 2, ... (neutral mass shift, Da;
    abundance relative to the most abundant = 1), truncated below ``min_rel``.
    """
    lam1 = sum(composition.get(e, 0.0) * p for e, p in _P_PLUS1.items())
    lam2 = sum(composition.get(e, 0.0) * p for e, p in _P_PLUS2.items())
    n_cl = int(round(composition.get("Cl", 0.0)))
    p1 = _poisson(lam1, max_peaks)
    p2 = _poisson(lam2, max_peaks // 2 + 1)
    pc = [math.comb(n_cl, j) * _CL37 ** j for j in range(n_cl + 1)]
    abundance = [0.0] * max_peaks
    moment = [0.0] * max_peaks
    for a, pa in enumerate(p2):
        for c, pcc in enumerate(pc):
            base = 2 * a + 2 * c
            for n1 in range(max_peaks - base):
                w = pa * pcc * p1[n1]
                abundance[base + n1] += w
                moment[base + n1] += w * (n1 * C13_SPACING + a * _DM_PLUS2 + c * _DM_CL)
    top = max(abundance)
    last = max(i for i, v in enumerate(abundance) if v >= min_rel * top) + 1
    delta = np.array([moment[i] / abundance[i] if abundance[i] > 0 else i * C13_SPACING for i in range(last)])
    return delta, np.array(abundance[:last]) / top


def _poisson(lam: float, n: int) -> list[float]:
    """Poisson probabilities of 0 .. n-1 at rate ``lam``."""
    out = [math.exp(-lam)]
    for k in range(1, n):
        out.append(out[-1] * lam / k)
    return out


def formula_mass(composition: dict[str, float]) -> float:
    """Monoisotopic neutral mass (Da) of an elemental composition."""
    return float(sum(MONO[e] * n for e, n in composition.items()))


def averagine(mass: float) -> dict[str, float]:
    """Averagine (Senko 1995) peptide composition for a neutral mass (Da)."""
    u = mass / 111.1254
    return {"C": 4.9384 * u, "H": 7.7583 * u, "N": 1.3577 * u, "O": 1.4773 * u, "S": 0.0417 * u}


@dataclass(frozen=True)
class Compound:
    """One analyte: its ion peaks (ION_DTYPE, base peak rel_height = 1) and its class."""

    compound_id: int
    class_index: int
    name: str
    ions: np.ndarray

    @property
    def class_label(self) -> str:
        return CLASS_LABELS[self.class_index]


class _IonList:
    """Collects species (neutral composition + adduct + charge + abundance) into ION_DTYPE rows."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, int, int]] = []

    def add(self, neutral_mass: float, composition: dict[str, float], abundance: float,
            adduct: str = "H", charge: int = 1, isotopes: bool = True) -> None:
        if isotopes:
            delta, rel = isotope_pattern(composition)
            rel = rel / rel.sum()
        else:
            delta, rel = np.zeros(1), np.ones(1)
        mz0 = (neutral_mass + charge * ADDUCTS[adduct]) / charge
        for i, (d, r) in enumerate(zip(delta, rel)):
            self.rows.append((mz0 + d / charge, abundance * r, i, charge))

    def add_ion(self, mz: float, abundance: float, charge: int = 1) -> None:
        self.rows.append((mz, abundance, 0, charge))

    def finish(self, model: InstrumentModel) -> np.ndarray:
        ions = np.array(self.rows, dtype=ION_DTYPE)
        lo, hi = model.mz_range
        ions = ions[(ions["mz"] > lo) & (ions["mz"] < hi)]
        # Ion abundance is area; the apex height of a Gaussian is area / (sigma_samples sqrt(2 pi)).
        sig_samples = model.sigma_mz(ions["mz"]) / mz_per_sample(model.calibration, ions["mz"])
        h = ions["rel_height"] / sig_samples
        ions["rel_height"] = h / h.max()
        ions = ions[ions["rel_height"] >= 1e-3]
        return np.sort(ions, order="mz")


def _peptide(rng: np.random.Generator, ions: _IonList) -> str:
    comp = averagine(rng.uniform(800.0, 4000.0))
    mono = formula_mass(comp)  # mass defect ~ +0.5 per kDa
    zs = np.arange(1, 4)
    pref = np.exp(-(((mono / zs) - 750.0) / 380.0) ** 2)
    pref /= pref.sum()
    for z, p in zip(zs, pref):
        if p > 0.04:
            ions.add(mono, comp, p * rng.uniform(0.7, 1.3), "H", int(z))
    # Tryptic C-terminus (y1 K or R) and immonium ions: the class's marker ions.
    y1 = 147.112804 if rng.random() < 0.55 else 175.118952
    ions.add_ion(y1, rng.uniform(0.03, 0.12))
    for mz in rng.choice([110.071333, 120.080776, 136.075690, 129.102239], size=2, replace=False):
        ions.add_ion(float(mz), rng.uniform(0.01, 0.06))
    return f"peptide {mono:.4f} Da"


def _lipid(rng: np.random.Generator, ions: _IonList) -> str:
    kind = rng.choice(["PC", "PE", "SM"], p=[0.55, 0.25, 0.20])
    chains = int(rng.integers(28, 41))
    dbl = int(rng.integers(0, 7))
    if kind == "PC":
        comp = {"C": chains + 8, "H": 2 * chains - 2 * dbl + 16, "N": 1, "O": 8, "P": 1}
    elif kind == "PE":
        comp = {"C": chains + 5, "H": 2 * chains - 2 * dbl + 10, "N": 1, "O": 8, "P": 1}
    else:
        comp = {"C": chains + 5, "H": 2 * chains - 2 * dbl + 13, "N": 2, "O": 6, "P": 1}
    mono = formula_mass(comp)
    ions.add(mono, comp, 1.0, "H")
    ions.add(mono, comp, rng.uniform(0.05, 0.4), "Na")
    if kind in ("PC", "SM"):
        ions.add_ion(184.073321, rng.uniform(0.05, 0.35))   # phosphocholine
        ions.add_ion(104.106990, rng.uniform(0.01, 0.06))   # choline
        loss = {"C": comp["C"] - 5, "H": comp["H"] - 13, "N": comp["N"] - 1, "O": comp["O"] - 4}
        ions.add(mono - 183.066046, loss, rng.uniform(0.01, 0.08), "H")
    else:
        loss = {"C": comp["C"] - 2, "H": comp["H"] - 8, "O": comp["O"] - 4}
        ions.add(mono - 141.019094, loss, rng.uniform(0.3, 0.9), "H")  # PE neutral loss of 141
    ions.add_ion(124.999822, rng.uniform(0.005, 0.03))  # C2H6O4P+
    return f"{kind} {chains}:{dbl}"


def _small_molecule(rng: np.random.Generator, ions: _IonList) -> str:
    while True:
        c = int(rng.integers(8, 33))
        n = int(rng.integers(0, 5))
        o = int(rng.integers(0, 6))
        s = int(rng.random() < 0.25)
        cl = int(rng.choice([0, 0, 0, 1, 2]))
        f = int(rng.choice([0, 0, 1, 3]))
        h = int(round(c * rng.uniform(0.8, 1.6))) + n - cl - f
        if h > 0 and c - (h + cl + f) / 2 + n / 2 + 1 >= 0:
            break
    comp = {"C": c, "H": h, "N": n, "O": o, "S": s, "Cl": cl, "F": f}
    mono = formula_mass(comp)
    ions.add(mono, comp, 1.0, "H")
    ions.add(mono, comp, rng.uniform(0.02, 0.3), "Na")
    if o:
        water = dict(comp, H=h - 2, O=o - 1)
        ions.add(mono - 18.010565, water, rng.uniform(0.02, 0.3), "H")
    for _ in range(int(rng.integers(1, 4))):  # in-source fragments
        frac = rng.uniform(0.35, 0.8)
        fc = {e: round(v * frac) for e, v in comp.items()}
        fmono = formula_mass(fc)
        if fmono > 60:
            ions.add(fmono, fc, rng.uniform(0.03, 0.5), "H")
    for mz in rng.choice([105.069877, 121.064791, 163.075356], size=2, replace=False):
        ions.add_ion(float(mz), rng.uniform(0.02, 0.15))  # class marker fragments
    return f"C{c}H{h}N{n}O{o}S{s}Cl{cl}F{f}"


_POLYMERS = {  # repeat composition, end-group composition
    "PEG": ({"C": 2, "H": 4, "O": 1}, {"H": 2, "O": 1}),
    "PPG": ({"C": 3, "H": 6, "O": 1}, {"H": 2, "O": 1}),
    "PDMS": ({"C": 2, "H": 6, "O": 1, "Si": 1}, {}),  # cyclic siloxanes
}


def _polymer(rng: np.random.Generator, ions: _IonList) -> str:
    kind = str(rng.choice(list(_POLYMERS), p=[0.6, 0.25, 0.15]))
    rep, end = _POLYMERS[kind]
    n_mean = rng.uniform(7, 26)
    width = rng.uniform(2.5, 5.0)
    adducts = {"H": 1.0, "NH4": rng.uniform(0.2, 1.0), "Na": rng.uniform(0.1, 0.6)}
    two_plus = rng.uniform(0.1, 0.4) if kind == "PEG" else 0.0
    for n in range(max(3, int(n_mean - 3 * width)), int(n_mean + 3 * width) + 1):
        comp = {e: n * rep.get(e, 0) + end.get(e, 0) for e in set(rep) | set(end)}
        mono = formula_mass(comp)
        a = math.exp(-0.5 * ((n - n_mean) / width) ** 2)
        for adduct, ab in adducts.items():
            ions.add(mono, comp, a * ab, adduct)
        if two_plus and n > 14:
            ions.add(mono, comp, a * two_plus, "NH4", 2)
    return f"{kind} n~{n_mean:.0f}"


_CLASS_BUILDERS: dict[int, Callable[[np.random.Generator, _IonList], str]] = {
    1: _peptide, 2: _lipid, 3: _small_molecule, 4: _polymer,
}


def make_compound(class_index: int, rng: np.random.Generator, compound_id: int = 0,
                  model: InstrumentModel | None = None) -> Compound:
    """A random compound of class ``class_index`` (1..len(CLASS_LABELS)-1)."""
    if class_index not in _CLASS_BUILDERS:
        raise ValueError(f"class_index must be one of {sorted(_CLASS_BUILDERS)} "
                         f"({', '.join(CLASS_LABELS[1:])}), got {class_index!r}")
    model = model or default_model()
    ions = _IonList()
    name = _CLASS_BUILDERS[class_index](rng, ions)
    return Compound(compound_id, class_index, name, ions.finish(model))


# Known contaminant ions (m/z of [M+H]+ etc.) present in every blank, with heights in noise sigmas.
_CONTAMINANTS = [
    (149.023321, 12.0), (279.159086, 8.0), (301.141030, 5.0), (338.341747, 15.0), (371.101233, 25.0),
    (391.284286, 30.0), (413.266230, 10.0), (445.120025, 20.0), (519.138815, 10.0), (536.165364, 6.0),
]


def background_ions(model: InstrumentModel, rng: np.random.Generator,
                    n_grass: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chemical-background ions: known contaminants (with isotopes) and random low "grass".

    Returns ``(mz, height, isotope)`` (height in counts).
    """
    n_grass = model.n_grass if n_grass is None else n_grass
    mzs, hs, isos = [], [], []
    for mz, snr in _CONTAMINANTS:
        delta, rel = isotope_pattern({"C": mz / 14.0, "H": mz / 7.0, "O": mz / 80.0})
        h = snr * model.noise_sigma_at(mz) * rel
        mzs.append(mz + delta)
        hs.append(h)
        isos.append(np.arange(len(rel)))
    u = rng.random(n_grass)
    lo, hi = model.mz_range
    mz = lo * (hi / lo) ** (u ** 1.4)  # denser at low m/z
    mzs.append(mz)
    hs.append(model.noise_sigma_at(mz) * rng.lognormal(0.0, 0.7, n_grass))
    isos.append(np.zeros(n_grass, np.int64))
    return np.concatenate(mzs), np.concatenate(hs), np.concatenate(isos)


# --------------------------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class ScanTruth:
    """Ground truth of one simulated scan.

    ``peaks`` (PEAK_DTYPE, sorted by m/z) lists every true peak whose expected apex height is at
    least ``min_snr`` (0.3) times the baseline noise there. It is built on first access.
    ``label`` follows the rule in the module docstring. ``noise_sigma`` is the median baseline
    noise sigma over the axis (counts); each peak's ``snr`` uses the local value.
    ``baseline()`` is the expected baseline (float64, counts) the peaks sit on.
    """

    scan_number: int
    time_s: float
    label: int
    noise_sigma: float
    drift: float
    compounds: np.ndarray
    dominant_compound: int = -1
    saturated: bool = False
    mz_shift_ppm: float = 0.0
    _peaks: np.ndarray | None = field(default=None, repr=False)
    _build_peaks: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _build_baseline: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def peaks(self) -> np.ndarray:
        if self._peaks is None:
            self._peaks = self._build_peaks() if self._build_peaks else np.zeros(0, PEAK_DTYPE)
            self._build_peaks = None
        return self._peaks

    def baseline(self) -> np.ndarray:
        return self._build_baseline()


def _peak_table(mz, height, fwhm, noise, compound, class_index, isotope, charge,
                min_snr: float) -> np.ndarray:
    snr = height / noise
    keep = snr >= min_snr
    order = np.argsort(mz[keep], kind="stable")
    p = np.empty(order.size, PEAK_DTYPE)
    for name, v in (("mz", mz), ("height", height), ("fwhm", fwhm), ("snr", snr), ("compound", compound),
                    ("class_index", class_index), ("isotope", isotope), ("charge", charge)):
        p[name] = np.broadcast_to(v, mz.shape)[keep][order]
    p["area"] = p["height"] * p["fwhm"] * (math.sqrt(2 * math.pi) / (2 * math.sqrt(2 * math.log(2))))
    blended = _blended(p["mz"], p["height"].astype(np.float64), p["fwhm"].astype(np.float64))
    p["blended"] = blended
    return p


def _blended(mz: np.ndarray, height: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Peaks (sorted by m/z) that another true peak disturbs: one at least 10 % as high lies within
    one FWHM, or the others together add at least 5 % of the peak's height at its centre."""
    n = mz.size
    close = np.zeros(n, bool)
    extra = np.zeros(n)
    if n < 2:
        return close
    i = np.arange(n)
    span = int(max((np.searchsorted(mz, mz + 3 * fwhm, "right") - i).max(),
                   (i - np.searchsorted(mz, mz - 3 * fwhm, "left")).max()))
    k = 4.0 * math.log(2.0)
    for d in range(1, min(span, n - 1) + 1):
        a, b = slice(0, n - d), slice(d, n)
        dist = mz[b] - mz[a]
        extra[a] += height[b] * np.exp(-k * (dist / fwhm[b]) ** 2)
        extra[b] += height[a] * np.exp(-k * (dist / fwhm[a]) ** 2)
        close[a] |= (dist < fwhm[a]) & (height[b] >= 0.1 * height[a])
        close[b] |= (dist < fwhm[b]) & (height[a] >= 0.1 * height[b])
    return close | (extra >= 0.05 * height)


def scan_label(compounds: np.ndarray) -> tuple[int, int]:
    """(label, dominant compound id) for a COMPOUND_DTYPE array, by the module's label rule."""
    detected = compounds[compounds["snr"] >= LABEL_MIN_SNR]
    if detected.size == 0:
        return BACKGROUND, -1
    best = detected[int(np.argmax(detected["height"]))]
    return int(best["class_index"]), int(best["compound"])


# --------------------------------------------------------------------------------------------
# Independent labelled spectra (training, tests)
# --------------------------------------------------------------------------------------------

def random_spectrum(class_index: int, rng: np.random.Generator, n_samples: int = DEFAULT_N_SAMPLES,
                    augment: bool = True, dtype=np.uint16,
                    model: InstrumentModel | None = None) -> tuple[np.ndarray, ScanTruth]:
    """One independent spectrum whose label is ``class_index``, with its truth.

    A dominant compound of the class (base-peak S/N log-uniform in 15 .. 3000: the intensity
    scaling) plus background; with ``augment`` also nuisance variation: m/z shift (normal,
    sigma 3 ppm), detector noise and continuum level (x0.6 .. 1.6), pedestal and drift, 0 .. 2
    minor compounds of any class (base peak 2 .. 60 % as high as the dominant one's) and 0 .. 8
    random contaminant peaks (S/N 3 .. 8, under the detection threshold, so that they never pass
    for a labelled compound). For class 0: no compound, or up to 2 at base-peak S/N 1 .. 5.

    Returns ``(intensity, truth)``: ``intensity`` has ``dtype`` (uint16, int16 or float32) and
    the axis of ``model`` (default :func:`default_model` for ``n_samples``).
    """
    if not 0 <= class_index < len(CLASS_LABELS):
        raise ValueError(f"class_index must be in 0..{len(CLASS_LABELS) - 1}, got {class_index!r}")
    model = model or default_model(n_samples)
    n = model.n_samples
    axis = model.axis
    shift_ppm = float(rng.normal(0.0, 3.0)) if augment else 0.0
    noise_f = float(rng.uniform(0.6, 1.6)) if augment else 1.0
    cont_f = float(rng.uniform(0.6, 1.6)) if augment else 1.0
    pedestal = model.pedestal + (float(rng.uniform(-30, 30)) if augment else 0.0)
    drift = float(rng.uniform(-1.5, 1.5)) * model.drift_amplitude if augment else 0.0

    continuum = model.continuum_array * cont_f
    det = model.detector_noise * noise_f
    noise_arr = np.sqrt(det * det + model.gain * continuum)

    cols: dict[str, list] = {k: [] for k in ("mz", "height", "compound", "class", "isotope", "charge")}
    comp_rows = []

    def add(mz, height, compound, cls, isotope, charge):
        cols["mz"].append(np.asarray(mz, np.float64))
        cols["height"].append(np.asarray(height, np.float64))
        m = len(cols["mz"][-1])
        for key, v in (("compound", compound), ("class", cls), ("isotope", isotope), ("charge", charge)):
            cols[key].append(np.broadcast_to(np.asarray(v), (m,)))

    def add_compound(cls: int, cid: int, snr: float | None = None, height: float | None = None) -> float:
        """Add a compound of class ``cls`` with its base peak at ``snr`` or ``height``; returns the height."""
        c = make_compound(cls, rng, cid, model)
        base = c.ions[int(np.argmax(c.ions["rel_height"]))]
        sigma = float(np.interp(base["mz"], axis, noise_arr))
        h = snr * sigma if height is None else height
        heights = c.ions["rel_height"] * h
        # total counts of a Gaussian peak: height * sigma_samples * sqrt(2 pi)
        sig_samples = model.sigma_mz(c.ions["mz"]) / mz_per_sample(model.calibration, c.ions["mz"])
        total = float(np.sum(heights * sig_samples) * math.sqrt(2 * math.pi))
        add(c.ions["mz"], heights, cid, cls, c.ions["isotope"], c.ions["charge"])
        comp_rows.append((cid, cls, h, total, h / sigma))
        return h

    if class_index != BACKGROUND:
        main_h = add_compound(class_index, 0, snr=math.exp(rng.uniform(math.log(15.0), math.log(3000.0))))
        for cid in range(1, 1 + (int(rng.integers(0, 3)) if augment else 0)):
            # weaker compounds of any class: base peak 2 % .. 60 % of the dominant one's
            add_compound(int(rng.integers(1, len(CLASS_LABELS))), cid,
                         height=main_h * math.exp(rng.uniform(math.log(0.02), math.log(0.6))))
    else:
        for cid in range(int(rng.integers(0, 3)) if augment else 0):
            add_compound(int(rng.integers(1, len(CLASS_LABELS))), cid, snr=float(rng.uniform(1.0, 5.0)))

    bg_mz, bg_h, bg_iso = background_ions(model, rng)
    add(bg_mz, bg_h * (cont_f if augment else 1.0), -1, 0, bg_iso, 1)
    if augment:
        k = int(rng.integers(0, 9))
        mz = rng.uniform(*model.mz_range, size=k)
        add(mz, rng.uniform(3.0, 8.0, size=k) * np.interp(mz, axis, noise_arr), -2, 0, 0, 1)

    mz = np.concatenate(cols["mz"]) * (1.0 + shift_ppm * 1e-6)
    height = np.concatenate(cols["height"])
    comps = np.array(comp_rows, dtype=COMPOUND_DTYPE)

    idx, vals = model.render(mz, height)
    signal = np.zeros(n, np.float64)
    signal[idx] = vals
    expected = pedestal + drift * model.drift_shape + continuum + signal
    sigma = np.sqrt(det * det + model.gain * (continuum + signal))
    data = expected + sigma * rng.standard_normal(n)
    out, saturated = _digitise(data, np.dtype(dtype))

    label, dominant = scan_label(comps)
    peaks = _peak_table(mz, height, model.fwhm(mz), np.interp(mz, axis, noise_arr),
                        np.concatenate(cols["compound"]), np.concatenate(cols["class"]),
                        np.concatenate(cols["isotope"]), np.concatenate(cols["charge"]), 0.3)
    base = pedestal + drift * model.drift_shape + continuum
    # noise_arr falls monotonically along the axis, so its median is its middle value.
    noise_sigma = float(0.5 * (noise_arr[(n - 1) // 2] + noise_arr[n // 2]))
    return out, ScanTruth(scan_number=0, time_s=0.0, label=label, noise_sigma=noise_sigma,
                          drift=drift, compounds=comps, dominant_compound=dominant, saturated=saturated,
                          mz_shift_ppm=shift_ppm, _peaks=peaks, _build_baseline=lambda: base)


def _digitise(data: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    if dtype == np.uint16 or dtype == np.int16:
        info = np.iinfo(dtype)
        saturated = bool(data.max() >= info.max)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype), saturated
    if dtype == np.float32 or dtype == np.float64:
        return data.astype(dtype), False
    raise ValueError(f"dtype must be uint16, int16 or float32, got {dtype}")


# --------------------------------------------------------------------------------------------
# Chromatographic run: the simulator's fast scan generator
# --------------------------------------------------------------------------------------------

ELUTION_DTYPE = np.dtype([("compound", "i4"), ("class_index", "i2"), ("rt_s", "f8"), ("sigma_s", "f8"),
                          ("tau_s", "f8"), ("height", "f8")])
"""Elution of one compound: retention time of the Gaussian centre, its sigma and the exponential
tail tau (s), and the base-peak apex height (counts) at the elution maximum."""

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a stateless hash used to pick noise-bank rows per scan."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def emg_profile(t: np.ndarray, rt: float, sigma: float, tau: float) -> np.ndarray:
    """Exponentially modified Gaussian elution profile at times ``t`` (s), normalised to max 1
    over ``t``. ``rt``: Gaussian centre, ``sigma``: its width, ``tau``: exponential tail (s)."""
    x = (np.asarray(t, dtype=np.float64) - rt) / sigma
    r = sigma / tau
    z = (r - x) / math.sqrt(2.0)
    erfc = np.frompyfunc(math.erfc, 1, 1)
    # exp(r^2/2 - x r) * erfc(z); the exponent stays bounded because r <= 5 and x >= -8 here.
    f = np.exp(np.minimum(0.5 * r * r - x * r, 700.0)) * erfc(z).astype(np.float64)
    peak = f.max()
    return f / peak if peak > 0 else f


class ScanGenerator:
    """Scans of a looping chromatographic run, fast: about 10 us of Python per eluting compound.

    Everything costly is precomputed once: each compound's ion peaks rendered on the axis as a
    sparse template (sample indices + expected counts at base-peak height 1) plus ``shot_bank``
    matching shot-noise rows ``sqrt(gain * template) * N(0, 1)``; the elution profiles of all
    compounds on a 10 ms grid; and ``noise_bank`` full-length arrays holding pedestal, chemical
    continuum, background ions and their noise (detector + shot). A scan is then one bank array
    (+ drift), plus ``w * template + sqrt(w) * shot_row`` for each eluting compound, digitised.

    Approximation (documented in docs/simulator.md): noise is not drawn afresh per scan. The bank
    row and each compound's shot row are picked per scan by a hash of (seed, scan number), so a
    given noise realisation recurs in about 1/noise_bank of scans (1/shot_bank per compound), and
    the continuum's shot noise does not follow the (small) drift. Each scan's noise has the right
    distribution; only scan-to-scan independence is approximate. Shot noise is the normal
    approximation of Poisson counting.

    Parameters
    ----------
    model : InstrumentModel (default :func:`default_model`).
    seed : run seed: compounds, elution and noise banks follow from it.
    cycle_s : run length, s; scan times loop over it.
    n_compounds : compounds in the run (classes 1..4 in equal shares).
    dtype : output samples: uint16 (default), int16 or float32.
    """

    GRID_S = 0.01
    ACTIVE_COUNTS = 0.25
    """A compound whose base-peak height is below this (counts, << the noise) is left out of a scan."""
    """Time step (s) of the precomputed elution profiles (linear interpolation between); finer
    when the run is so short that elution peaks are narrower than 5 steps."""

    def __init__(self, model: InstrumentModel | None = None, *, seed: int = 1, cycle_s: float = 60.0,
                 n_compounds: int = 32, dtype=np.uint16, noise_bank: int = 32, shot_bank: int = 8):
        if cycle_s <= 0:
            raise ValueError(f"cycle_s must be > 0, got {cycle_s!r}")
        if noise_bank < 1 or shot_bank < 1:
            raise ValueError("noise_bank and shot_bank must be >= 1")
        self.model = model = model or default_model()
        self.seed = int(seed)
        self.cycle_s = float(cycle_s)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be uint16, int16 or float32, got {self.dtype}")
        n = model.n_samples
        rng = np.random.default_rng([self.seed, 0x5EED])

        # Compounds and their elution.
        classes = 1 + (np.arange(n_compounds) % (len(CLASS_LABELS) - 1))
        rng.shuffle(classes)
        self.compounds = [make_compound(int(c), rng, i, model) for i, c in enumerate(classes)]
        s = self.cycle_s / 60.0
        el = np.zeros(n_compounds, ELUTION_DTYPE)
        el["compound"] = np.arange(n_compounds)
        el["class_index"] = classes
        # Compounds elute over the gradient, 6 % .. 78 % of the run; the rest is the blank start and
        # the wash/re-equilibration at the end, where only background is seen.
        el["rt_s"] = rng.uniform(0.06, 0.78, n_compounds) * self.cycle_s
        el["sigma_s"] = rng.uniform(0.4, 1.2, n_compounds) * s
        el["tau_s"] = el["sigma_s"] * rng.uniform(0.3, 2.0, n_compounds)
        self._base_sigma = np.array([float(model.noise_sigma_at(c.ions["mz"][np.argmax(c.ions["rel_height"])]))
                                     for c in self.compounds])
        el["height"] = np.exp(rng.uniform(np.log(15.0 * self._base_sigma), np.log(30000.0)))
        self.elution = el

        grid_s = min(self.GRID_S, float(el["sigma_s"].min()) / 5.0)  # short runs need a finer grid
        n_grid = max(int(round(self.cycle_s / grid_s)), 16)
        self._grid_s = self.cycle_s / n_grid
        prof = np.zeros((n_grid + 1, n_compounds), np.float64)
        for j, e in enumerate(el):
            # The profile on the grid; a tail still running at the end of the run is cut there.
            k0 = int(math.floor((e["rt_s"] - 8 * e["sigma_s"]) / self._grid_s))
            k1 = int(math.ceil((e["rt_s"] + 8 * e["sigma_s"] + 25 * e["tau_s"]) / self._grid_s))
            k = np.arange(max(k0, 0), min(k1, n_grid) + 1)
            prof[k, j] = emg_profile(k * self._grid_s, e["rt_s"], e["sigma_s"], e["tau_s"])
        self._elution_grid = (prof * el["height"]).astype(np.float32)

        # Sparse templates and shot-noise rows.
        self._templates = []
        self._total = np.zeros(n_compounds)
        self._peak_bound = np.zeros((n_compounds, 2))  # max template value, max |shot-noise row|
        for j, c in enumerate(self.compounds):
            idx, vals = model.render(c.ions["mz"], c.ions["rel_height"])
            # Row 0: the template; rows 1..shot_bank: shot-noise realisations sqrt(gain * template) N(0, 1).
            rows = np.empty((1 + shot_bank, idx.size), np.float32)
            rows[0] = vals
            rows[1:] = np.sqrt(model.gain * vals) * rng.standard_normal((shot_bank, idx.size))
            contiguous = idx.size > 0 and idx[-1] - idx[0] + 1 == idx.size
            where = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx.astype(np.intp)
            self._templates.append((where, rows, np.empty(idx.size, np.float32)))
            self._total[j] = vals.sum()
            self._peak_bound[j] = (vals.max(), np.abs(rows[1:]).max())

        # Background and noise bank.
        bg_mz, bg_h, bg_iso = background_ions(model, np.random.default_rng(model.background_seed))
        idx, vals = model.render(bg_mz, bg_h)
        bg = np.zeros(n, np.float64)
        bg[idx] = vals
        self._bg_truth = (bg_mz, bg_h, bg_iso)
        expected = model.pedestal + model.continuum_array + bg
        if self.dtype == np.uint16:
            expected = expected + 0.5  # so that truncation in the float->uint16 cast rounds
        sigma = np.sqrt(model.detector_noise ** 2 + model.gain * (model.continuum_array + bg))
        self._bank = np.empty((noise_bank, n), np.float32)
        for k in range(noise_bank):
            self._bank[k] = expected + sigma * rng.standard_normal(n)
        self._bank_range = np.stack([self._bank.min(axis=1), self._bank.max(axis=1)], axis=1).astype(np.float64)
        self._drift_shape = model.drift_shape.astype(np.float32)
        self._drift_range = (float(model.drift_shape.min()), float(model.drift_shape.max()))
        self._work = np.empty(n, np.float32)
        self._coef = np.zeros(1 + shot_bank, np.float32)
        self._shot_bank = shot_bank
        if self.dtype == np.uint16:
            self._limits = (0.0, 65535.0)
        elif self.dtype == np.int16:
            self._limits = (-32768.0, 32767.0)
        else:
            self._limits = None

    @property
    def n_samples(self) -> int:
        return self.model.n_samples

    def elution_heights(self, time_s: float) -> np.ndarray:
        """Base-peak apex height (counts) of every compound at run time ``time_s`` (no spray noise)."""
        g = (time_s % self.cycle_s) / self._grid_s
        i = min(int(g), self._elution_grid.shape[0] - 2)
        f = g - i
        return self._elution_grid[i] * np.float32(1.0 - f) + self._elution_grid[i + 1] * np.float32(f)

    def generate(self, scan_number: int, time_s: float,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, ScanTruth]:
        """The scan at ``time_s`` (s since run start) and its truth; writes into ``out`` if given.

        ``scan_number`` picks the noise realisation; the same (scan_number, time_s) always gives
        the same samples.
        """
        w = self.elution_heights(time_s)
        w *= np.float32(self.spray(scan_number))
        return self.render(scan_number, time_s, w, out)

    def spray(self, scan_number: int) -> float:
        """Spray instability factor of scan ``scan_number``: 1 +- 3 % (Box-Muller on a hash)."""
        h = _mix64((self.seed << 32) ^ (scan_number & 0xFFFFFFFF))
        u1 = ((h >> 11) + 1) / float(1 << 53)
        u2 = (h & 0xFFFFFFFF) / float(1 << 32)
        return 1.0 + 0.03 * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def render(self, scan_number: int, time_s: float, w: np.ndarray,
               out: np.ndarray | None = None) -> tuple[np.ndarray, ScanTruth]:
        """The scan whose compounds have base-peak heights ``w`` (float32 counts, one per compound;
        the imaging mode sets them per pixel) and its truth; ``scan_number`` picks the noise,
        ``time_s`` the baseline drift. ``generate`` is this with the elution heights."""
        model = self.model
        h = _mix64((self.seed << 32) ^ (scan_number & 0xFFFFFFFF))
        active = np.flatnonzero(w > self.ACTIVE_COUNTS)
        drift = model.drift(time_s)

        buf = self._work
        np.multiply(self._drift_shape, np.float32(drift), out=buf)
        bank = h % self._bank.shape[0]
        buf += self._bank[bank]
        coef = self._coef
        for c in active.tolist():
            where, rows, tmp = self._templates[c]
            wc = float(w[c])
            j = 1 + ((h >> 16) + 3 * c) % self._shot_bank
            coef[0] = wc
            coef[j] = math.sqrt(wc)
            np.dot(coef, rows, out=tmp)  # w * template + sqrt(w) * shot row j
            coef[j] = 0.0
            buf[where] += tmp

        if out is None:
            out = np.empty(model.n_samples, self.dtype)
        saturated = False
        if self._limits is None:
            np.copyto(out, buf)
        else:
            if self.dtype == np.int16:
                np.rint(buf, out=buf)
            lo, hi = self._limits
            # Clip only when the scan may reach the ADC limits (a cheap bound from precomputed maxima).
            wa = w[active].astype(np.float64)
            pb = self._peak_bound[active]
            spread = abs(drift) * self._drift_range[1]
            upper = self._bank_range[bank, 1] + spread + float(wa @ pb[:, 0] + np.sqrt(wa) @ pb[:, 1])
            lower = self._bank_range[bank, 0] - spread - float(np.sqrt(wa) @ pb[:, 1])
            if upper >= hi or lower < lo + 1.0:
                saturated = bool(buf.max() >= hi)
                np.clip(buf, lo, hi, out=buf)
            np.copyto(out, buf, casting="unsafe")

        wa = w[active].astype(np.float64)
        comps = np.empty(active.size, COMPOUND_DTYPE)
        comps["compound"] = active
        comps["class_index"] = self.elution["class_index"][active]
        comps["height"] = wa
        comps["total"] = wa * self._total[active]
        comps["snr"] = wa / self._base_sigma[active]
        label, dominant = scan_label(comps)
        return out, ScanTruth(
            scan_number=scan_number, time_s=time_s, label=label, noise_sigma=model.noise_sigma,
            drift=drift, compounds=comps, dominant_compound=dominant, saturated=saturated,
            _build_peaks=functools.partial(self._truth_peaks, active, wa),
            _build_baseline=functools.partial(model.baseline, drift))

    def _truth_peaks(self, active: np.ndarray, heights: np.ndarray, min_snr: float = 0.3) -> np.ndarray:
        model = self.model
        parts = [(self._bg_truth[0], self._bg_truth[1], -1, 0, self._bg_truth[2], 1)]
        for c, wc in zip(active.tolist(), heights.tolist()):
            ions = self.compounds[c].ions
            parts.append((ions["mz"], ions["rel_height"] * wc, c, self.compounds[c].class_index,
                          ions["isotope"], ions["charge"]))
        cols = list(zip(*[(p[0], p[1], np.broadcast_to(p[2], p[0].shape), np.broadcast_to(p[3], p[0].shape),
                           p[4], np.broadcast_to(p[5], p[0].shape)) for p in parts]))
        mz, height, comp, cls, iso, charge = (np.concatenate(x) for x in cols)
        return _peak_table(mz, height, model.fwhm(mz), model.noise_sigma_at(mz), comp, cls, iso, charge,
                           min_snr)
