"""dsp.features: binning onto the model's m/z grid and normalisation, against independent references."""
from __future__ import annotations

import itertools
import types

import numpy as np
import pytest
from scipy.ndimage import grey_opening, maximum_filter1d, minimum_filter1d

from cext import features as kernel
from dsp.features import (BinPlan, FeatureExtractor, FeatureSpec, FeatureSpecError, feature_batch, feature_vector,
                          feature_vector_reference, normalise)


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


# --------------------------------------------------------------------------------------------
# The Cython kernel (cext/features.pyx) against the NumPy reference
# --------------------------------------------------------------------------------------------

NORMALISATIONS = list(itertools.product(("tophat", "min", "none"), ("max", "sum", "none"), ("sqrt", "none")))
CODES = {"none": kernel.BASELINE_NONE, "tophat": kernel.BASELINE_TOPHAT, "min": kernel.BASELINE_MIN,
         "max": kernel.SCALE_MAX, "sum": kernel.SCALE_SUM, "sqrt": kernel.TRANSFORM_SQRT}


def assert_matches(got, want):
    """float32 kernel output vs the reference: 1e-6 relative, 1e-7 of the largest value absolute.

    The kernel sums segment areas left to right, NumPy pairwise, so the binned float64 values may
    differ in the last bit; in practice the float32 results come out identical.
    """
    want = np.asarray(want, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * max(float(np.abs(want).max()), 1e-30))


def run_kernel(plan, y, baseline, window, scale, transform):
    """The kernel called directly (any window, even ones FeatureSpec refuses)."""
    bins = plan.width.size
    out = np.full(bins, np.nan, np.float32)
    scratch = np.full(kernel.scratch_len(bins, window), np.nan)
    kernel.feature_vector(y, plan.index, plan.frac, plan.dmz, plan.width, plan.lo, plan.hi, CODES[baseline],
                          window, CODES[scale], CODES[transform], out, scratch)
    return out


def reference(plan, y, baseline, window, scale, transform):
    norm = types.SimpleNamespace(baseline=baseline, baseline_window=window, scale=scale, transform=transform)
    return normalise(plan.bin(y), norm).astype(np.float32)


def random_samples(rng, dtype, n):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        y = rng.random(n) * 1000.0 - 50.0
        y[rng.integers(0, n, 40)] += rng.random(40) * 1e5       # peaks over a noisy floor
        return y.astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), n, endpoint=True).astype(dtype)


class TestKernel:
    @pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
    def test_simulator_scans(self, dtype):
        from instrument.spectrum_model import ScanGenerator, default_model

        model = default_model()
        gen = ScanGenerator(model, seed=7, dtype=dtype)
        spec = FeatureSpec(90.0, 2110.0, 2048)            # the shipped model's input spec
        ex = FeatureExtractor(spec)
        out = np.empty(spec.bins, np.float32)
        for i in range(6):
            y, _ = gen.generate(i, 4.0 + 5.0 * i)
            assert y.dtype == dtype and y.size == 65536
            assert ex(model.axis, y, out=out) is out
            assert_matches(out, feature_vector_reference(model.axis, y, spec))
            assert out.max() == pytest.approx(1.0)

    def test_shipped_spec_on_calibrated_axis(self):
        from dsp.calibration import AxisCache
        from inference.bundle import load_bundle
        from instrument.spectrum_model import default_model, random_spectrum

        spec = load_bundle().feature_spec
        model = default_model()
        axis = AxisCache().get(model.calibration, model.n_samples)
        rng = np.random.default_rng(11)
        for cls in range(5):
            y, _ = random_spectrum(cls, rng)
            assert_matches(feature_vector(axis, y, spec), feature_vector_reference(axis, y, spec))

    @pytest.mark.parametrize("baseline, scale, transform", NORMALISATIONS)
    @pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float32, np.float64])
    def test_random_every_dtype_and_normalisation(self, dtype, baseline, scale, transform):
        rng = np.random.default_rng(12)
        mz = tof_axis(20000)
        y = random_samples(rng, dtype, mz.size)
        spec = FeatureSpec(90.0, 2110.0, 2048, baseline=baseline, scale=scale, transform=transform)
        got = feature_vector(mz, y, spec)
        assert_matches(got, feature_vector_reference(mz, y, spec))
        assert not np.array_equal(got, feature_vector_reference(mz, y[::-1].copy(), spec))

    @pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint32, np.float16, ">u2", ">f8", bool])
    def test_other_dtypes_are_converted(self, dtype):
        rng = np.random.default_rng(13)
        mz = tof_axis(5000)
        y = (rng.random(mz.size) * 200).astype(dtype)
        spec = FeatureSpec(90.0, 2110.0, 512)
        assert_matches(FeatureExtractor(spec)(mz, y), feature_vector_reference(mz, y, spec))

    def test_strided_and_readonly_input(self):
        rng = np.random.default_rng(14)
        mz = tof_axis(4000)
        wide = random_samples(rng, np.uint16, 2 * mz.size)
        y = wide[::2]
        assert not y.flags.c_contiguous
        spec = FeatureSpec(90.0, 2110.0, 256)
        assert_matches(feature_vector(mz, y, spec), feature_vector_reference(mz, y, spec))
        ro = wide[: mz.size]
        ro.flags.writeable = False
        assert_matches(feature_vector(mz, ro, spec), feature_vector_reference(mz, ro, spec))

    @pytest.mark.parametrize("baseline, scale, transform", NORMALISATIONS)
    def test_bins_narrower_than_sampling(self, baseline, scale, transform):
        rng = np.random.default_rng(15)
        mz = np.sort(rng.uniform(100.0, 200.0, 60))
        mz = np.unique(mz)
        y = rng.random(mz.size) * 100.0
        spec = FeatureSpec(95.0, 205.0, 333, baseline=baseline, scale=scale, transform=transform)
        plan = BinPlan(spec, mz)
        assert plan.empty.sum() > 200                     # most bins lie inside one segment
        assert_matches(feature_vector(mz, y, spec, plan=plan),
                       feature_vector_reference(mz, y, spec, plan=plan))

    @pytest.mark.parametrize("lo, hi", [(300.0, 700.0), (50.0, 700.0), (300.0, 3000.0), (90.0, 2110.0),
                                        (2000.0, 2105.0), (50.0, 95.0)])
    @pytest.mark.parametrize("baseline, scale, transform", [("tophat", "max", "sqrt"), ("min", "sum", "none"),
                                                            ("none", "none", "none")])
    def test_axes_covering_part_of_the_range(self, lo, hi, baseline, scale, transform):
        rng = np.random.default_rng(16)
        mz = tof_axis(9000, lo, hi)
        y = random_samples(rng, np.uint16, mz.size) + np.uint16(500)
        spec = FeatureSpec(90.0, 2110.0, 1000, baseline=baseline, scale=scale, transform=transform)
        got = feature_vector(mz, y, spec)
        assert_matches(got, feature_vector_reference(mz, y, spec))
        if baseline == "none" and scale == "none":
            c = spec.centers
            outside = (c < lo - 3.0) | (c > hi + 3.0)
            assert np.all(got[outside] == 0) and np.all(got[~outside][1:-1] > 0)

    @pytest.mark.parametrize("bins", [2, 3, 7, 8, 9, 16, 17, 100, 2047])
    def test_bin_counts_and_widths(self, bins):
        # bin counts off the kernel's groups of 8, and bins far wider than its 1024-segment buffer
        rng = np.random.default_rng(17)
        mz = tof_axis(65536)
        y = random_samples(rng, np.uint16, mz.size)
        spec = FeatureSpec(90.0, 2110.0, bins, baseline="none", scale="none", transform="none")
        got = feature_vector(mz, y, spec)
        assert_matches(got, feature_vector_reference(mz, y, spec))
        assert np.allclose(got, reference_bins(mz, y.astype(np.float64), spec.edges), rtol=1e-6)

    @pytest.mark.parametrize("window", [1, 2, 3, 4, 6, 15, 30, 31, 32, 63, 64])
    def test_tophat_odd_and_even_windows(self, window):
        rng = np.random.default_rng(18)
        mz = tof_axis(20000)
        y = random_samples(rng, np.float64, mz.size)
        plan = BinPlan(FeatureSpec(90.0, 2110.0, 512), mz)
        want = reference(plan, y, "tophat", window, "none", "none")
        if window % 2 == 0:
            # the data tell scipy's centring (window // 2 bins to the left) from the mirror image
            x = plan.bin(y)
            mirrored = x - maximum_filter1d(minimum_filter1d(x[::-1], window, mode="nearest"), window,
                                            mode="nearest")[::-1]
            assert not np.allclose(mirrored, want, rtol=1e-3)
        assert_matches(run_kernel(plan, y, "tophat", window, "none", "none"), want)
        assert_matches(run_kernel(plan, y, "tophat", window, "max", "sqrt"),
                       reference(plan, y, "tophat", window, "max", "sqrt"))

    @pytest.mark.parametrize("bins, window", [(2, 3), (2, 4), (3, 101), (16, 17), (16, 31), (16, 32), (16, 33),
                                              (64, 200), (64, 129), (7, 14)])
    def test_tophat_window_wider_than_the_bins(self, bins, window):
        rng = np.random.default_rng(19)
        mz = tof_axis(3000)
        y = random_samples(rng, np.float32, mz.size)
        plan = BinPlan(FeatureSpec(90.0, 2110.0, bins), mz)
        want = reference(plan, y, "tophat", window, "none", "none")
        assert_matches(run_kernel(plan, y, "tophat", window, "none", "none"), want)

    @pytest.mark.parametrize("bins", [2, 3, 16, 64])
    def test_tophat_window_covering_every_bin_subtracts_the_minimum(self, bins):
        # from window >= 2 * bins on, every running min/max spans all bins: the opening is min(x)
        mz = tof_axis(3000)
        plan = BinPlan(FeatureSpec(90.0, 2110.0, bins), mz)
        rng = np.random.default_rng(21)
        for y in (mz - 50.0, 3000.0 - mz, random_samples(rng, np.float64, mz.size)):
            x = plan.bin(y)
            for window in (2 * bins, 2 * bins + 1, 2 * bins + 2, 5 * bins + 3):
                got = run_kernel(plan, y, "tophat", window, "none", "none")
                assert_matches(got, x - x.min())
                assert_matches(got, reference(plan, y, "tophat", window, "none", "none"))

    @pytest.mark.parametrize("dtype", [np.int16, np.float64])
    def test_scale_max_divides_by_the_largest_magnitude(self, dtype):
        rng = np.random.default_rng(22)
        mz = tof_axis(8000)
        y = -np.abs(random_samples(rng, np.float64, mz.size) / 8).astype(dtype)
        y[100:110] = 900                                 # a positive peak smaller than the negative ones
        spec = FeatureSpec(90.0, 2110.0, 700, baseline="none", scale="max", transform="none")
        got = feature_vector(mz, y, spec)
        assert_matches(got, feature_vector_reference(mz, y, spec))
        assert got.min() == -1.0 and 0 < got.max() < 1

    def test_tophat_edges(self):
        # a ramp with peaks in the first two and the last bin, where the edge handling decides the
        # opening (for a running min or max "nearest" and "reflect" agree; "wrap" and "constant" do not)
        mz = np.linspace(100.0, 200.0, 2001)
        y = 50.0 + (mz - 100.0) * 3.0
        y[[3, 14, 1000, 1996]] += 4000.0
        plan = BinPlan(FeatureSpec(100.0, 200.0, 200), mz)
        x = plan.bin(y)
        for window in (5, 6, 41, 42):
            want = reference(plan, y, "tophat", window, "none", "none")
            h = window // 2 + 1
            for mode, cval in (("wrap", 0.0), ("constant", 0.0), ("constant", 1e9)):
                other = x - maximum_filter1d(minimum_filter1d(x, window, mode=mode, cval=cval), window, mode=mode,
                                             cval=cval)
                assert not np.allclose(other[:h], want[:h]) or not np.allclose(other[-h:], want[-h:])
            assert_matches(run_kernel(plan, y, "tophat", window, "none", "none"), want)

    @pytest.mark.parametrize("baseline, scale, transform", NORMALISATIONS)
    def test_all_zero_spectrum(self, baseline, scale, transform):
        mz = tof_axis(4096)
        spec = FeatureSpec(90.0, 2110.0, 256, baseline=baseline, scale=scale, transform=transform)
        for dtype in (np.uint16, np.float32):
            got = feature_vector(mz, np.zeros(mz.size, dtype), spec)
            assert got.dtype == np.float32 and np.all(got == 0)
            assert_matches(got, feature_vector_reference(mz, np.zeros(mz.size, dtype), spec))

    def test_extractor_buffers(self):
        spec = FeatureSpec(90.0, 2110.0, 128)
        mz = tof_axis(2048)
        rng = np.random.default_rng(20)
        y1, y2 = random_samples(rng, np.uint16, mz.size), random_samples(rng, np.uint16, mz.size)
        ex = FeatureExtractor(spec)
        a, b = ex(mz, y1), ex(mz, y2)
        assert a is not b                                 # without out=, each result is the caller's
        assert_matches(a, feature_vector_reference(mz, y1, spec))
        assert_matches(b, feature_vector_reference(mz, y2, spec))
        X = np.zeros((spec.bins, 3), np.float32)          # a column: not contiguous
        assert ex(mz, y1, out=X[:, 1]) is not None
        assert np.array_equal(X[:, 1], a) and np.all(X[:, [0, 2]] == 0)
        assert_matches(feature_vector(mz, y2, spec, out=X[:, 2]), b)
        ro = np.empty(spec.bins, np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            ex(mz, y1, out=ro)

    def test_errors_keep_their_messages(self):
        spec = FeatureSpec(90.0, 2110.0, 64)
        mz = tof_axis(256)
        for f in (feature_vector, feature_vector_reference, lambda m, y, s, **k: FeatureExtractor(s)(m, y, **k)):
            with pytest.raises(ValueError, match="`intensity` must be 1-D"):
                f(mz, np.ones((2, 256)), spec)
            with pytest.raises(ValueError, match=r"must have shape \(256,\) or \(rows, 256\) to match the m/z axis"):
                f(mz, np.ones(255), spec)
            with pytest.raises(ValueError, match="`out` must be float32 of shape"):
                f(mz, np.ones(256), spec, out=np.empty(63, np.float32))
            with pytest.raises(ValueError, match="strictly increasing"):
                f(mz[::-1], np.ones(256), spec)

    def test_kernel_rejects_inconsistent_arguments(self):
        mz = tof_axis(1000)
        plan = BinPlan(FeatureSpec(90.0, 2110.0, 32), mz)
        y = np.ones(mz.size)
        good = dict(y=y, index=plan.index, frac=plan.frac, dmz=plan.dmz, width=plan.width, lo=plan.lo,
                    hi=plan.hi, baseline=1, window=31, scale=1, transform=1, out=np.empty(32, np.float32),
                    scratch=np.empty(kernel.scratch_len(32, 31)))

        def call(**change):
            args = {**good, **change}
            kernel.feature_vector(*args.values())

        call()
        bad_index = plan.index.copy()
        bad_index[5] = plan.hi + 1
        unordered = plan.index.copy()
        unordered[[10, 11]] = unordered[[11, 10]] + np.array([0, 5])
        for change, match in [(dict(scratch=np.empty(kernel.scratch_len(32, 31) - 1)), "scratch holds"),
                              (dict(out=np.empty(31, np.float32)), "plan arrays disagree"),
                              (dict(frac=plan.frac[:-1].copy()), "plan arrays disagree"),
                              (dict(y=y[:-1].copy(), hi=mz.size - 2, dmz=np.ones(mz.size - 1 - plan.lo)),
                               "do not fit"),
                              (dict(dmz=plan.dmz[:-1].copy()), "do not fit"),
                              (dict(index=bad_index), "non-decreasing segments"),
                              (dict(index=unordered), "non-decreasing segments"),
                              (dict(baseline=3), "bad normalisation codes"),
                              (dict(window=0), "bad normalisation codes")]:
            with pytest.raises(ValueError, match=match):
                call(**change)
