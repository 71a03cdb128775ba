"""OpenMS PeakPickerHiRes (pyopenms, the `[test]` extra) as an outside oracle for peak picking.

``openms_centroids(mz, intensity, snr)``: PeakPickerHiRes with ``signal_to_noise = snr`` (its
S/N: the intensity over the median intensity of a sliding window, SignalToNoiseEstimatorMedianRapid;
ours: the height above the baseline over the baseline's noise sigma; docs/dsp.md compares them).
``agreement(ours_mz, theirs_mz)``: the share of OpenMS centroids with one of ours within 5 ppm.
``apex_snr(mz, intensity, centroids_mz, params)``: the S/N of each centroid's apex by our definition
(height above our baseline over our noise sigma), so that both pickers are held to one S/N
definition (docs/dsp.md, "Comparing with OpenMS").
"""
from __future__ import annotations

import numpy as np


def openms_centroids(mz: np.ndarray, intensity: np.ndarray, snr: float) -> np.ndarray:
    """m/z of PeakPickerHiRes's centroids of one profile spectrum at S/N ``snr``."""
    import pyopenms as oms

    spec = oms.MSSpectrum()
    spec.set_peaks((np.array(mz, np.float64), np.array(intensity, np.float32)))   # writeable copies
    picker = oms.PeakPickerHiRes()
    params = picker.getParameters()
    params.setValue("signal_to_noise", float(snr))
    picker.setParameters(params)
    out = oms.MSSpectrum()
    picker.pick(spec, out)
    return np.asarray(out.get_peaks()[0], np.float64)


def agreement(ours_mz: np.ndarray, theirs_mz: np.ndarray, ppm: float = 5.0) -> tuple[int, int]:
    """(matched, total): OpenMS centroids with one of ours within ``ppm``."""
    theirs = np.asarray(theirs_mz, np.float64)
    ours = np.sort(np.asarray(ours_mz, np.float64))
    if theirs.size == 0 or ours.size == 0:
        return 0, int(theirs.size)
    j = np.clip(np.searchsorted(ours, theirs), 1, max(ours.size - 1, 1))
    d = np.minimum(np.abs(ours[j] - theirs), np.abs(ours[j - 1] - theirs))
    return int(np.sum(d <= ppm * 1e-6 * theirs)), int(theirs.size)


def apex_snr(mz: np.ndarray, intensity: np.ndarray, centroids_mz: np.ndarray, params) -> np.ndarray:
    """Our S/N of the apex of each centroid at ``centroids_mz``: the higher of the two samples
    around it, minus our baseline, over our noise sigma (dsp.reference.baseline_and_noise with the
    ``params``' block, stride and noise floor: the baseline and noise that pick_centroids uses)."""
    from dsp.reference import baseline_and_noise

    y = np.asarray(intensity, np.float64)
    base, noise = baseline_and_noise(y, params.block, params.stride, params.noise_floor)
    k = np.clip(np.searchsorted(mz, centroids_mz), 1, y.size - 1)
    apex = np.where(y[k - 1] > y[k], k - 1, k)
    return (y[apex] - base[apex]) / noise[apex]
