"""dsp.pick_centroids judged on spectra the project's simulator did not make (tests/independent_spectra.py):
recall against a naive find_peaks + parabola picker, the doublet fit window, centroids in m/z order."""
import numpy as np
import pytest

from dsp import pick_centroids
from dsp.processor import ScanProcessor
from independent_spectra import KINDS, Score, make_spectrum, naive_pick, score

SEEDS = range(8)


def _gauss(mz, centre, fwhm):
    return np.exp(-4.0 * np.log(2.0) * ((mz - centre) / fwhm) ** 2)


class TestIndependentGenerator:
    """Goals on the independent generator: recall >= 99.5 % of unblended true peaks at S/N >= 20,
    false picks <= 0.5 % of picks above S/N 10, median |m/z error| <= 0.3 ppm on symmetric peaks.

    TOF (R 10,000: a FWHM of 100 ppm) misses the 0.3 ppm goal on this generator's S/N mix: its
    median is 0.38-0.40 ppm, 0.4 % of the FWHM (the naive parabola: 2.9 ppm); its bound is 0.45."""

    MEDIAN_PPM = {"tof": 0.45, "orbitrap": 0.3, "fticr": 0.3}

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_goals_per_kind(self, kind):
        total, naive = Score(), Score()
        symmetric = Score()
        for seed in SEEDS:
            s = make_spectrum(kind, seed)
            p = pick_centroids(s.mz, s.intensity)
            total += score(p["mz"], s.truth, picked_snr=p["snr"])
            symmetric += score(p["mz"], s.truth[s.truth["shape"] != "tof"], picked_snr=p["snr"])
            naive += score(naive_pick(s.mz, s.intensity), s.truth)
        assert total.n_true >= 500, total
        assert total.recall >= 0.995, total
        assert total.recall >= naive.recall - 0.001, (total, naive)
        assert total.false_rate <= 0.005, total
        assert symmetric.median_ppm <= self.MEDIAN_PPM[kind], symmetric

    def test_tof_tail_bias_is_what_docs_say(self):
        """A Gaussian fitted to a tailed TOF peak (right half 1.35x wider) sits on the tail side of
        the apex: docs/dsp.md states the bias, 0.05-0.10 FWHM (7 % here); this pins it."""
        errs = []
        for seed in SEEDS:
            s = make_spectrum("tof", seed)
            p = pick_centroids(s.mz, s.intensity)
            t = s.truth[(s.truth["shape"] == "tof") & (s.truth["snr"] >= 50) & ~s.truth["blended"]]
            j = np.clip(np.searchsorted(p["mz"], t["mz"]), 1, p.size - 1)
            k = np.where(np.abs(p["mz"][j] - t["mz"]) < np.abs(p["mz"][j - 1] - t["mz"]), j, j - 1)
            errs += list((p["mz"][k] - t["mz"]) / t["fwhm"])
        assert 0.05 <= np.median(errs) <= 0.10


class TestDoublets:
    """The recall gap: the higher peak of a doublet whose valley lies above half its height."""

    @pytest.mark.parametrize("sep", [1.2, 1.3, 1.4])
    def test_higher_peak_of_a_doublet_is_centred_on_itself(self, sep):
        # the fit window came from find_peaks' width at half prominence, which spans both peaks
        # here: the centre landed 0.44-0.48 FWHM towards the neighbour (half a FWHM = not found)
        mz = 400.0 + np.arange(2048) * 0.001
        fwhm = 0.006
        y = 20.0 + np.random.default_rng(5).normal(0.0, 1.0, mz.size)
        m1 = mz[1000] + 0.0003
        y += 1000.0 * _gauss(mz, m1, fwhm) + 700.0 * _gauss(mz, m1 + sep * fwhm, fwhm)
        p = pick_centroids(mz, y.astype(np.float32))
        assert p.size == 2
        assert abs(p["mz"][0] - m1) < 0.15 * fwhm
        assert abs(p["mz"][1] - (m1 + sep * fwhm)) < 0.15 * fwhm
        assert p["fwhm"][0] < 1.3 * fwhm


class TestSortedByMz:
    """Centroids come out in ascending m/z even when fitted centres of close peaks cross."""

    @staticmethod
    def _clusters(seed):
        rng = np.random.default_rng(seed)
        mz = 500.0 + np.arange(2048) * 0.001
        y = 10.0 + rng.normal(0.0, 1.0, mz.size)
        w = rng.uniform(0.002, 0.01)
        for c in range(100, 1950, 100):        # 2-3 near-coincident peaks, Gaussian to Lorentzian
            for _ in range(int(rng.integers(2, 4))):
                h, ww = rng.uniform(5, 2000), w * rng.uniform(0.5, 2.0)
                d = (mz - mz[c] - rng.uniform(-1.5, 1.5) * w) / ww
                eta = rng.uniform(0, 1)
                y += h * ((1 - eta) * np.exp(-4 * np.log(2) * d * d) + eta / (1 + 4 * d * d))
        return mz, y.astype(np.float32)

    def test_near_coincident_peaks(self):
        procs = [ScanProcessor(), ScanProcessor(smoothing="none", detect_sigma=0, min_width=0, min_snr=1)]
        n_peaks = 0
        for seed in range(100):
            mz, y = self._clusters(seed)
            for proc in procs:
                p = proc.process(y, mz).peaks
                n_peaks += p.size
                assert np.all(np.diff(p["mz"]) >= 0), (seed, proc.params.smoothing)
            assert np.all(np.diff(pick_centroids(mz, y)["mz"]) >= 0), seed
        assert n_peaks > 3000
