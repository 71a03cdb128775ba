"""dsp.pick_centroids judged on spectra the project's simulator did not make (tests/independent_spectra.py):
recall against a naive find_peaks + parabola picker, the doublet fit window, centroids in m/z order."""
import numpy as np
import pytest

from dsp import pick_centroids
from dsp.processor import FLAG_ASYM, ScanProcessor
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

    @pytest.mark.parametrize("kind", ["orbitrap", "fticr"])
    def test_goals_with_the_kinds_preset(self, kind):
        """The FT presets do not smooth (apodised FT noise is band-limited). On this generator's
        white Poisson + read noise that reported noise maxima on the Lorentzian tails of strong
        peaks: fticr false rate 2.9 % (54/1864), 1.4-4 FWHM from S/N ~1000 peaks, prominence 3-5.
        pick_centroids now smooths when the noise is white at the sample scale."""
        total = Score()
        for seed in SEEDS:
            s = make_spectrum(kind, seed)
            p = pick_centroids(s.mz, s.intensity, preset=kind)
            total += score(p["mz"], s.truth, picked_snr=p["snr"])
        assert total.n_true >= 500, total
        assert total.recall >= 0.995, total
        assert total.false_rate <= 0.005, total
        assert total.median_ppm <= 0.3, total

    def test_tailed_tof_peaks_are_centred_on_their_apex(self):
        """A Gaussian fitted to a tailed TOF peak (right half 1.35x wider) put its centre on the tail
        side of the apex, 7 % of the FWHM (7 ppm at R 10,000) for every peak whatever its S/N. The
        two-sided fit reports the apex once the tail is significant (docs/dsp.md, "Tailed peaks")."""
        errs, flagged = [], []
        for seed in SEEDS:
            s = make_spectrum("tof", seed)
            p = pick_centroids(s.mz, s.intensity)
            t = s.truth[(s.truth["shape"] == "tof") & (s.truth["snr"] >= 200) & ~s.truth["blended"]]
            j = np.clip(np.searchsorted(p["mz"], t["mz"]), 1, p.size - 1)
            k = np.where(np.abs(p["mz"][j] - t["mz"]) < np.abs(p["mz"][j - 1] - t["mz"]), j, j - 1)
            errs += list((p["mz"][k] - t["mz"]) / t["fwhm"])
            flagged += list(p["flags"][k] & FLAG_ASYM != 0)
        assert len(errs) >= 100
        assert abs(np.median(errs)) <= 0.01          # was 0.07
        assert np.median(np.abs(errs)) <= 0.015
        assert np.mean(flagged) >= 0.9

    def test_symmetric_peaks_keep_the_gaussian(self):
        """The two-sided fit's extra parameter costs a symmetric peak 2.6x in centre error: it is used
        only when the asymmetry is significant, so few symmetric peaks take it."""
        n = asym = 0
        for seed in SEEDS:
            s = make_spectrum("orbitrap", seed)
            p = pick_centroids(s.mz, s.intensity)
            n += p.size
            asym += int(np.sum(p["flags"] & FLAG_ASYM != 0))
        assert n >= 1000 and asym <= 0.05 * n


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
        # the neighbour's flank reads as a tail: the two-sided fit takes it (centres 0.05 FWHM off
        # instead of the Gaussian's 0.12) and widens the right half; a fit over both peaks: ~2x
        assert p["fwhm"][0] < 1.45 * fwhm


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


class TestTwoSidedFitReference:
    def test_kernel_equals_numpy_reference_on_tailed_peaks(self):
        """The two-sided fit (and the one-step screen before it) as dsp/reference.py does it in
        NumPy: the same peaks, flags (FLAG_ASYM included) and centres on tailed TOF spectra."""
        from dsp import reference

        n_asym = 0
        for seed in range(3):
            s = make_spectrum("tof", seed)
            got = ScanProcessor().process(s.intensity, s.mz).peaks
            want = reference.process_scan(s.intensity, s.mz)
            np.testing.assert_array_equal(got["apex"], want["apex"])
            np.testing.assert_array_equal(got["flags"], want["flags"])
            np.testing.assert_allclose(got["mz"], want["mz"], rtol=1e-9)
            np.testing.assert_allclose(got["fwhm"], want["fwhm"], rtol=1e-4)
            np.testing.assert_allclose(got["intensity"], want["intensity"], rtol=1e-4)
            n_asym += int(np.sum(got["flags"] & FLAG_ASYM != 0))
        assert n_asym >= 100


class TestNoiseWhiteness:
    """The lag-1 autocorrelation of the noise that decides whether an FT preset smooths."""

    @staticmethod
    def _white(mz, y):
        from dsp.processor import _noise_is_white, spectrum_params

        proc = ScanProcessor(spectrum_params(y, preset="fticr"))
        return _noise_is_white(proc, proc.process(y, mz))

    def test_generated_noise_is_white(self):
        for kind in ("tof", "fticr"):
            s = make_spectrum(kind, 0)
            assert self._white(s.mz, s.intensity)

    def test_band_limited_noise_is_not(self):
        # the same noise through a 3-tap moving average (lag-1 correlation 2/3), as apodisation does
        s = make_spectrum("fticr", 0)
        rng = np.random.default_rng(1)
        e = rng.normal(0.0, 5.0, s.mz.size + 2)
        y = 50.0 + (e[:-2] + e[1:-1] + e[2:]) / np.sqrt(3.0)
        assert not self._white(s.mz, y.astype(np.float32))
        assert self._white(s.mz, (50.0 + e[1:-1]).astype(np.float32))

    def test_real_ft_profiles_are_not_white(self):
        from pathlib import Path

        from ionstream.offline import spectra as mzml

        data = Path(__file__).parents[1] / "data"
        for name in ("small_ltqft.mzML", "openms_ftms.mzML"):
            s = next(x for x in mzml.read_mzml_spectra(data / name) if not x.centroided and x.ms_level == 1)
            assert not self._white(s.mz, s.intensity), name
