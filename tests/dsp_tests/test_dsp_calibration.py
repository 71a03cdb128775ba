"""instrument.calibration (the TOF law, its inverse) and dsp.calibration (calibrant fits, axis cache)."""
import numpy as np
import pytest

from dsp.calibration import AxisCache, fit_calibration, mz_at, mz_axis, mz_to_index, refit_calibration
from instrument.frames import Calibration
from instrument.spectrum_model import default_calibration, mz_axis as model_axis


class TestLaw:
    def test_one_law_for_simulator_and_dsp(self):
        """The simulator and the DSP use instrument.calibration's law, not copies of it."""
        import instrument.calibration as law
        import instrument.spectrum_model as model

        assert mz_axis is law.mz_axis and model_axis is law.mz_axis
        assert mz_to_index is law.mz_to_index and model.mz_to_index is law.mz_to_index

    def test_axis_is_mz_at_bit_for_bit(self):
        for n in (16, 65536, 1 << 20):
            cal = default_calibration(n)
            assert np.array_equal(mz_axis(cal, n), mz_at(cal, np.arange(n)))
        cal = Calibration(t0_ns=1000.0, dt_ns=0.5, c0=0.1, c1=1.0, c2=0.0)
        assert np.array_equal(mz_axis(cal, 100), mz_at(cal, np.arange(100)))

    def test_scan_kernel_inline_law_is_this_law(self):
        """cext/scan.pyx evaluates the TOF law inline (mz_at in the kernel, no axis array): a scan
        processed on its calibration gives bit-identical peaks to the same scan on the explicit axis
        instrument.calibration.mz_axis computes, which the kernel reads as it is."""
        from dsp.processor import ScanParams, ScanProcessor
        from instrument.spectrum_model import default_model, random_spectrum

        model = default_model(8192)
        rng = np.random.default_rng(7)
        for cls in (1, 2, 3):
            samples = random_spectrum(cls, rng, n_samples=8192, model=model)[0]
            tof = ScanProcessor(ScanParams()).process(samples, model.calibration)
            tof_peaks = {k: np.array(tof.peaks[k]) for k in ("mz", "intensity", "area", "fwhm", "snr")}
            explicit = ScanProcessor(ScanParams()).process(samples, mz_axis(model.calibration, len(samples)))
            assert len(tof_peaks["mz"]) > 5
            for k, v in tof_peaks.items():
                assert np.array_equal(v, np.asarray(explicit.peaks[k])), k

    def test_inverse(self):
        cal = default_calibration(65536)
        i = np.array([0.0, 0.5, 1234.25, 65535.0])
        np.testing.assert_allclose(mz_to_index(cal, mz_at(cal, i)), i, atol=1e-6)
        cal1 = Calibration(t0_ns=500.0, dt_ns=1.0, c0=0.2, c1=0.9, c2=0.0)
        np.testing.assert_allclose(mz_to_index(cal1, mz_at(cal1, i)), i, atol=1e-6)

    def test_out_and_raises(self):
        cal = default_calibration(100)
        out = np.empty(100)
        assert mz_axis(cal, 100, out=out) is out
        with pytest.raises(ValueError, match="out must be"):
            mz_axis(cal, 100, out=np.empty(99))
        with pytest.raises(ValueError, match="n_samples must be >= 0"):
            mz_axis(cal, -1)


class TestFit:
    def test_recovers_coefficients(self):
        cal = default_calibration(65536)
        known = np.array([118.0863, 322.0481, 622.0290, 922.0098, 1221.9906, 1521.9715, 1821.9523])
        idx = mz_to_index(cal, known)
        fit = fit_calibration(idx, known, t0_ns=cal.t0_ns, dt_ns=cal.dt_ns)
        np.testing.assert_allclose(mz_at(fit.calibration, idx), known, rtol=1e-10)
        assert np.max(np.abs(fit.residuals_ppm)) < 1e-4
        lin = fit_calibration(idx, known, t0_ns=cal.t0_ns, dt_ns=cal.dt_ns, order=1)
        assert lin.calibration.c2 == 0.0

    def test_refit_removes_a_shift(self):
        cal = default_calibration(65536)
        known = np.array([118.0863, 322.0481, 622.0290, 922.0098, 1221.9906, 1521.9715, 1821.9523])
        shifted = Calibration(cal.t0_ns, cal.dt_ns, cal.c0 * 1.00001, cal.c1 * (1 + 5e-6), cal.c2)
        # what an instrument drifted to `shifted` reports through the old calibration
        observed = mz_at(cal, mz_to_index(shifted, known))
        assert np.max(np.abs((observed - known) / known * 1e6)) > 5
        fit = refit_calibration(cal, np.concatenate([observed, [500.0, 700.0]]), known, tolerance_ppm=50)
        assert fit.used.tolist() == list(range(known.size))
        np.testing.assert_allclose(mz_at(fit.calibration, mz_to_index(shifted, known)), known, rtol=1e-9)

    def test_raises(self):
        with pytest.raises(ValueError, match="at least 3 calibrants"):
            fit_calibration([1.0, 2.0], [100.0, 200.0])
        with pytest.raises(ValueError, match="same length"):
            fit_calibration([1.0, 2.0, 3.0], [100.0, 200.0])
        with pytest.raises(ValueError, match="order must be 1 or 2"):
            fit_calibration([1.0, 2.0, 3.0], [100.0, 200.0, 300.0], order=3)
        with pytest.raises(ValueError, match="matched within"):
            refit_calibration(default_calibration(100), [100.0], [500.0, 600.0, 700.0])


def test_axis_cache():
    cache = AxisCache(size=2)
    a = cache.get(default_calibration(100), 100)
    assert cache.get(default_calibration(100), 100) is a
    assert not a.flags.writeable
    cache.get(default_calibration(200), 200)
    cache.get(default_calibration(300), 300)
    assert cache.get(default_calibration(100), 100) is not a   # evicted
