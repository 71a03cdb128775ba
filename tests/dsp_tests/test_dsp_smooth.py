"""dsp.smoothing against scipy.signal.savgol_filter and scipy.ndimage.gaussian_filter1d."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from cext.smooth import MODES, correlate_symmetric
from dsp.smoothing import gaussian_filter1d, gaussian_weights, savgol_filter, savgol_weights

SIZES = [1, 2, 3, 5, 7, 10, 31, 1000, 2049, 65536]


def rel_err(a, b, scale):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) / scale if a.size else 0.0


def signal(n, seed=0):
    rng = np.random.default_rng(seed + n)
    return rng.normal(size=n) * 100 + 1000


class TestSavgolFilter:
    @pytest.mark.parametrize("mode", ["interp", "mirror", "nearest", "constant", "wrap"])
    @pytest.mark.parametrize("window, order", [(5, 2), (7, 3), (11, 4), (3, 0), (1, 0), (9, 2)])
    def test_matches_scipy(self, mode, window, order):
        for n in SIZES:
            if mode == "interp" and window > n:
                continue
            x = signal(n)
            want = scipy.signal.savgol_filter(x, window, order, mode=mode, cval=3.0)
            got = savgol_filter(x, window, order, mode=mode, cval=3.0)
            assert got.dtype == np.float64
            assert rel_err(got, want, 1000.0) < 1e-12
            x32 = x.astype(np.float32)
            want = scipy.signal.savgol_filter(x32, window, order, mode=mode, cval=3.0)
            got = savgol_filter(x32, window, order, mode=mode, cval=3.0)
            assert got.dtype == np.float32
            assert rel_err(got, want, 1000.0) < 5e-6

    def test_integer_input_is_float64(self):
        x = np.arange(50, dtype=np.uint16) ** 2 % 97
        np.testing.assert_allclose(savgol_filter(x, 7, 2), scipy.signal.savgol_filter(x, 7, 2), rtol=1e-12, atol=1e-9)

    def test_out_reused(self):
        x = signal(500)
        out = np.empty_like(x)
        r = savgol_filter(x, 7, 3, out=out)
        assert r is out
        with pytest.raises(ValueError, match="share memory"):
            savgol_filter(x, 7, 3, out=x)
        with pytest.raises(ValueError, match="out must be"):
            savgol_filter(x, 7, 3, out=np.empty(10))

    def test_raises(self):
        with pytest.raises(ValueError, match="odd"):
            savgol_filter(np.zeros(20), 6, 2)
        with pytest.raises(ValueError, match="polyorder must be less than window_length"):
            savgol_filter(np.zeros(20), 5, 5)
        with pytest.raises(ValueError, match="window_length must be less than or equal to the size of x"):
            savgol_filter(np.zeros(4), 7, 2)
        with pytest.raises(ValueError, match="mode must be one of"):
            savgol_filter(np.zeros(20), 5, 2, mode="reflect")
        with pytest.raises(ValueError, match="1-D"):
            savgol_filter(np.zeros((4, 4)), 3, 1)

    def test_noise_gain(self):
        s = savgol_weights(7, 3)
        c = scipy.signal.savgol_coeffs(7, 3)
        assert s.noise_gain == pytest.approx(float(np.sqrt(np.sum(c * c))), rel=1e-12)


class TestGaussianFilter1d:
    @pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant", "wrap", "grid-mirror",
                                      "grid-wrap", "grid-constant"])
    @pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3, 5.0])
    def test_matches_scipy(self, mode, sigma):
        for n in SIZES:
            x = signal(n, 1)
            want = scipy.ndimage.gaussian_filter1d(x, sigma, mode=mode, cval=3.0)
            got = gaussian_filter1d(x, sigma, mode=mode, cval=3.0)
            assert rel_err(got, want, 1000.0) < 1e-13
            x32 = x.astype(np.float32)
            want = scipy.ndimage.gaussian_filter1d(x32, sigma, mode=mode, cval=3.0)
            got = gaussian_filter1d(x32, sigma, mode=mode, cval=3.0)
            assert got.dtype == np.float32
            assert rel_err(got, want, 1000.0) < 2e-6

    def test_truncate_and_radius(self):
        x = signal(300, 2)
        for kw in (dict(truncate=2.0), dict(radius=3), dict(radius=0), dict(truncate=6.0)):
            np.testing.assert_allclose(gaussian_filter1d(x, 1.7, **kw),
                                       scipy.ndimage.gaussian_filter1d(x, 1.7, **kw), rtol=1e-14)

    def test_raises(self):
        with pytest.raises(ValueError, match="sigma must be > 0"):
            gaussian_filter1d(np.zeros(5), 0.0)
        with pytest.raises(ValueError, match="Radius must be a nonnegative integer"):
            gaussian_filter1d(np.zeros(5), 1.0, radius=-1)
        with pytest.raises(ValueError, match="mode must be one of"):
            gaussian_filter1d(np.zeros(5), 1.0, mode="interp")


class TestCorrelateSymmetricKernel:
    def test_direct(self):
        x = np.arange(10, dtype=np.float64)
        out = np.empty_like(x)
        correlate_symmetric(x, np.array([0.5, 0.25]), MODES["nearest"], 0.0, out)
        np.testing.assert_allclose(out, scipy.ndimage.correlate1d(x, [0.25, 0.5, 0.25], mode="nearest"))

    def test_interp_needs_matrices(self):
        x = np.zeros(10)
        with pytest.raises(ValueError, match="MODE_INTERP"):
            correlate_symmetric(x, np.array([0.5, 0.25]), MODES["interp"], 0.0, np.empty_like(x))

    def test_weights_cached(self):
        assert savgol_weights(7, 3) is savgol_weights(7, 3)
        assert gaussian_weights(1.5) is gaussian_weights(1.5)
