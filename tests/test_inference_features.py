"""dsp.features: binning onto the model's m/z grid and normalisation, against independent references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import grey_opening

from dsp.features import (BinPlan, FeatureExtractor, FeatureSpec, FeatureSpecError, feature_batch, feature_vector,
                          normalise)


def reference_bins(mz, y, edges):
    """Mean of the piecewise-linear profile over each bin: cumulative trapezoid integral, np.interp."""
    y = np.asarray(y, dtype=np.float64)
    seg = 0.5 * (y[1:] + y[:-1]) * np.diff(mz)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.diff(np.interp(edges, mz, cum)) / np.diff(edges)


def tof_axis(n, lo=95.0, hi=2100.0):
    r = np.linspace(np.sqrt(lo), np.sqrt(hi), n)
    return r * r


class TestFeatureSpec:
    def test_round_trip(self):
        spec = FeatureSpec(mz_min=100.0, mz_max=1100.0, bins=512, baseline="min", scale="sum", transform="none")
        assert FeatureSpec.from_dict(spec.to_dict()) == spec

    def test_edges(self):
        spec = FeatureSpec(100.0, 200.0, 4)
        assert np.allclose(spec.edges, [100, 125, 150, 175, 200])
        assert np.allclose(spec.centers, [112.5, 137.5, 162.5, 187.5])

    @pytest.mark.parametrize("kwargs, match", [
        (dict(mz_min=10.0, mz_max=5.0, bins=8), "mz_min must be < mz_max"),
        (dict(mz_min=10.0, mz_max=50.0, bins=1), "bins must be an integer >= 2"),
        (dict(mz_min=10.0, mz_max=50.0, bins=8, baseline="rolling"), "baseline must be one of"),
        (dict(mz_min=10.0, mz_max=50.0, bins=8, baseline_window=4), "baseline_window must be an odd"),
        (dict(mz_min=10.0, mz_max=50.0, bins=8, version=99), "version 99 is not supported"),
    ])
    def test_raises(self, kwargs, match):
        with pytest.raises(FeatureSpecError, match=match):
            FeatureSpec(**kwargs)

    def test_from_dict_names_source_and_key(self):
        with pytest.raises(FeatureSpecError, match=r"model.json: input: missing key\(s\) bins"):
            FeatureSpec.from_dict({"mz_min": 1.0, "mz_max": 2.0}, source="model.json: input")
        with pytest.raises(FeatureSpecError, match="unknown key"):
            FeatureSpec.from_dict({"mz_min": 1.0, "mz_max": 2.0, "bins": 4, "bogus": 1})
        with pytest.raises(FeatureSpecError, match="dtype must be float32"):
            FeatureSpec.from_dict({"mz_min": 1.0, "mz_max": 2.0, "bins": 4, "dtype": "float16"})


class TestBinning:
    def test_matches_reference_on_tof_axis(self):
        rng = np.random.default_rng(1)
        mz = tof_axis(20000)
        y = rng.integers(0, 60000, mz.size).astype(np.uint16)
        spec = FeatureSpec(90.0, 2110.0, 2048, baseline="none", scale="none", transform="none")
        got = BinPlan(spec, mz).bin(y)
        assert np.allclose(got, reference_bins(mz, y, spec.edges), rtol=1e-9, atol=1e-6)

    def test_bins_narrower_than_sampling_get_the_segment_mean(self):
        mz = np.linspace(100.0, 200.0, 11)          # 10 m/z spacing, bins of 1 m/z
        y = mz.copy()                                # a ramp: segment k has mean 105 + 10 k
        spec = FeatureSpec(100.0, 200.0, 100, baseline="none", scale="none", transform="none")
        assert np.allclose(BinPlan(spec, mz).bin(y), np.repeat(105.0 + 10 * np.arange(10), 10))

    def test_outside_coverage_is_zero_and_constant_is_preserved(self):
        mz = np.linspace(300.0, 700.0, 1001)
        spec = FeatureSpec(100.0, 1100.0, 100, baseline="none", scale="none", transform="none")
        got = BinPlan(spec, mz).bin(np.full(mz.size, 5.0))
        c = spec.centers
        assert np.all(got[c < 290] == 0) and np.all(got[c > 710] == 0)
        assert np.allclose(got[(c > 310) & (c < 690)], 5.0)

    def test_area_is_conserved(self):
        rng = np.random.default_rng(2)
        mz = tof_axis(5000, 150.0, 900.0)
        y = rng.random(mz.size)
        spec = FeatureSpec(100.0, 1000.0, 300, baseline="none", scale="none", transform="none")
        got = BinPlan(spec, mz).bin(y)
        assert np.isclose((got * np.diff(spec.edges)).sum(), np.trapezoid(y, mz), rtol=1e-12)

    def test_batch_equals_rows(self):
        rng = np.random.default_rng(3)
        mz = tof_axis(4096)
        Y = rng.random((5, mz.size)).astype(np.float32)
        spec = FeatureSpec(90.0, 2110.0, 1024)
        batch = feature_batch(mz, Y, spec)
        for i in range(5):
            assert np.allclose(batch[i], feature_vector(mz, Y[i], spec), atol=1e-7)

    def test_raises(self):
        spec = FeatureSpec(90.0, 2110.0, 64)
        with pytest.raises(ValueError, match="strictly increasing"):
            BinPlan(spec, np.array([1.0, 3.0, 2.0]))
        with pytest.raises(ValueError, match="at least 2 samples"):
            BinPlan(spec, np.array([1.0]))
        with pytest.raises(ValueError, match="to match the m/z axis"):
            BinPlan(spec, tof_axis(100)).bin(np.zeros(99))


class TestNormalise:
    def test_tophat_is_scipy_grey_opening(self):
        rng = np.random.default_rng(4)
        x = rng.random(512) + np.linspace(0, 3, 512)
        spec = FeatureSpec(1.0, 2.0, 512, baseline="tophat", baseline_window=15, scale="none", transform="none")
        want = x - grey_opening(x, size=15, mode="nearest")
        assert np.allclose(normalise(x.copy(), spec), want)

    def test_max_sqrt(self):
        x = np.array([2.0, 4.0, 18.0, 6.0])
        spec = FeatureSpec(1.0, 2.0, 4, baseline="min", scale="max", transform="sqrt")
        assert np.allclose(normalise(x.copy(), spec), np.sqrt([0, 2 / 16, 1, 4 / 16]))

    def test_sum_and_zero_safe(self):
        spec = FeatureSpec(1.0, 2.0, 4, baseline="none", scale="sum", transform="none")
        assert np.allclose(normalise(np.array([1.0, 1.0, 2.0, 0.0]), spec), [0.25, 0.25, 0.5, 0])
        assert np.all(normalise(np.zeros(4), FeatureSpec(1.0, 2.0, 4)) == 0)

    def test_scale_invariant_and_offset_invariant(self):
        rng = np.random.default_rng(5)
        mz = tof_axis(8192)
        y = rng.random(mz.size) * 100
        y[4000:4005] += 5000
        spec = FeatureSpec(100.0, 2000.0, 1024)   # inside the spectrum's coverage
        a = feature_vector(mz, y, spec)
        assert np.allclose(a, feature_vector(mz, 7.5 * y + 300.0, spec), atol=1e-5)
        assert a.dtype == np.float32 and a.shape == (1024,) and a.max() == pytest.approx(1.0)


class TestExtractor:
    def test_reuses_plan_and_follows_axis_changes(self):
        spec = FeatureSpec(90.0, 2110.0, 256)
        ex = FeatureExtractor(spec)
        rng = np.random.default_rng(6)
        a1, a2 = tof_axis(4096), tof_axis(3000, 100.0, 1500.0)
        y1, y2 = rng.random(4096), rng.random(3000)
        out = np.empty(256, np.float32)
        assert ex(a1, y1, out=out) is out
        plan = ex._plan
        ex(a1, y1)
        assert ex._plan is plan
        assert np.allclose(ex(a2, y2), feature_vector(a2, y2, spec))
        assert ex._plan is not plan

    def test_out_checked(self):
        spec = FeatureSpec(90.0, 2110.0, 64)
        with pytest.raises(ValueError, match="`out` must be float32 of shape"):
            feature_vector(tof_axis(256), np.ones(256), spec, out=np.empty(64, np.float64))
