"""dsp.baseline (cext.baseline) against its NumPy reference and against the simulator's truth."""
import numpy as np
import pytest

from cext.baseline import block_statistics, lines
from dsp import reference
from dsp.baseline import estimate_baseline
from instrument.spectrum_model import random_spectrum


class TestBlockStatistics:
    @pytest.mark.parametrize("n, block, stride", [(65536, 512, 4), (100000, 1024, 8), (700, 128, 1), (50, 512, 4),
                                                  (1, 128, 1), (4097, 256, 3)])
    def test_matches_reference(self, n, block, stride):
        rng = np.random.default_rng(n)
        x = (100 + 20 * np.sin(np.arange(n) / 5000.0) + rng.normal(size=n) * 4).astype(np.float32)
        x[rng.integers(0, n, size=max(1, n // 200))] += 300.0   # peaks
        c, b, s, _, _ = block_statistics(x, block, stride, 0.0)
        rc, rb, rs = reference.block_statistics(x, block, stride)
        np.testing.assert_array_equal(c, rc)
        np.testing.assert_allclose(b, rb, rtol=1e-5)
        np.testing.assert_allclose(s, rs, rtol=1e-4)

    def test_integer_data_and_zeros(self):
        x = np.zeros(4096, np.float32)
        x[::97] = 5.0
        c, b, s, _, _ = block_statistics(x, 512, 4, 0.0)
        assert np.all(b == 0) and np.all(s == 1.0)          # no measurable noise: unit noise
        c, b, s, _, _ = block_statistics(x, 512, 4, 2.5)
        assert np.all(s == 2.5)                             # the floor

    def test_raises(self):
        with pytest.raises(ValueError, match="block must be >= 128"):
            block_statistics(np.zeros(1000, np.float32), 64, 1, 0.0)
        with pytest.raises(ValueError, match="stride must be >= 1"):
            block_statistics(np.zeros(1000, np.float32), 128, 0, 0.0)
        with pytest.raises(ValueError, match="empty"):
            block_statistics(np.zeros(0, np.float32), 128, 1, 0.0)


class TestLines:
    def test_piecewise_linear_flat_ends(self):
        c = np.array([256.0, 768.0, 1280.0])
        v = np.array([1.0, 3.0, 2.0])
        got = lines(c, v, 1600, False)
        np.testing.assert_allclose(got, np.interp(np.arange(1600), c, v), rtol=1e-6)
        inv = lines(c, v, 1600, True)
        np.testing.assert_allclose(inv, np.interp(np.arange(1600), c, 1 / v), rtol=1e-6)


class TestEstimateBaseline:
    def test_against_truth(self):
        for seed in range(6):
            x, truth = random_spectrum(seed % 5, np.random.default_rng(300 + seed))
            est = estimate_baseline(x)
            err = est.baseline - truth.baseline()
            assert abs(np.median(err)) < 0.15 * truth.noise_sigma
            assert np.percentile(np.abs(err), 95) < 0.5 * truth.noise_sigma
            assert np.median(est.noise) == pytest.approx(truth.noise_sigma, rel=0.08)

    def test_matches_reference_per_sample(self):
        x, _ = random_spectrum(2, np.random.default_rng(5))
        est = estimate_baseline(x)
        b, s = reference.baseline_and_noise(x)
        np.testing.assert_allclose(est.baseline, b, rtol=1e-5)
        np.testing.assert_allclose(est.noise, s, rtol=1e-4)

    def test_raises(self):
        with pytest.raises(ValueError, match="1-D"):
            estimate_baseline(np.zeros((3, 300)))
        with pytest.raises(ValueError, match="noise_floor must be >= 0"):
            estimate_baseline(np.zeros(300), noise_floor=-1)
