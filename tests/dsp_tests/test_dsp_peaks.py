"""dsp.find_peaks / cext.peaks against scipy.signal.find_peaks: same peaks, same properties, bit for bit."""
import warnings

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from cext.peaks import PEAK_FIELDS, PeakFinder
from dsp.peaks import find_peaks
from instrument.spectrum_model import random_spectrum

CONDITIONS = [
    {},
    dict(height=0.5),
    dict(height=(None, 1.0)),
    dict(prominence=1.0),
    dict(prominence=(0.5, 3)),
    dict(prominence=(None, 2.0)),
    dict(prominence=2, width=2),
    dict(width=(1, 5), rel_height=0.8),
    dict(width=3, rel_height=0.0),
    dict(prominence=1, wlen=31),
    dict(prominence=1, wlen=2),
    dict(distance=3.5, prominence=0.5),
    dict(height=(0, 2), threshold=(0.1, None), plateau_size=(1, 3)),
    dict(plateau_size=2),
    dict(threshold=(None, 0.5)),
    dict(distance=10),
    dict(prominence=3, width=1, wlen=200.5, rel_height=1.0),
    dict(threshold=0.2, distance=2, prominence=0.5, width=1),
    dict(height=1.0, prominence=0.2, width=(None, 4), rel_height=0.3),
]


def assert_same(x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PeakPropertyWarning
        want_peaks, want = scipy.signal.find_peaks(np.asarray(x, dtype=np.float64), **kw)
    got_peaks, got = find_peaks(x, **kw)
    np.testing.assert_array_equal(got_peaks, want_peaks, err_msg=f"peaks differ for {kw}")
    assert got.keys() == want.keys(), kw
    for key in want:
        assert got[key].dtype == want[key].dtype, (key, kw)
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} differs for {kw}")


def signals(seed: int, n: int):
    rng = np.random.default_rng(seed)
    yield "normal", rng.normal(size=n)
    yield "integers (plateaus)", rng.integers(0, 5, size=n).astype(np.float64)
    yield "random walk (long walks)", np.cumsum(rng.normal(size=n))
    yield "ramp + integers", rng.integers(0, 3, size=n) + np.linspace(0, 5, n)
    yield "smooth bumps", np.convolve(rng.normal(size=n + 20), np.ones(21) / 21, mode="valid")


class TestFindPeaks:
    def test_empty(self):
        peaks, props = find_peaks(np.array([]), prominence=1, width=1)
        assert peaks.size == 0 and peaks.dtype == np.intp
        assert all(v.size == 0 for v in props.values())
        assert set(props) == {"prominences", "left_bases", "right_bases", "widths", "width_heights",
                              "left_ips", "right_ips"}

    @pytest.mark.parametrize("x", [[1.0], [1.0, 2.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0, 2, 2, 0], [0, 2, 2]])
    def test_tiny(self, x):
        for kw in CONDITIONS:
            assert_same(np.asarray(x, dtype=np.float64), **kw)

    def test_basic(self):
        x = np.array([0, 1, 0, 3, 3, 3, 1, 4, 0, 2, 2, 5, 5, 1, 0], dtype=np.float64)
        peaks, props = find_peaks(x, prominence=1, width=0, plateau_size=1)
        np.testing.assert_array_equal(peaks, [1, 4, 7, 11])
        np.testing.assert_array_equal(props["plateau_sizes"], [1, 3, 1, 2])
        assert_same(x, prominence=1, width=0, plateau_size=1)

    @pytest.mark.parametrize("n", [3, 63, 64, 65, 4095, 4097, 20000])
    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_random_arrays(self, n, dtype):
        for name, x in signals(n, n):
            x = x.astype(dtype)
            for kw in CONDITIONS:
                assert_same(x, **kw)

    def test_edges_and_plateaus(self):
        # Maxima at the edges are not peaks; a plateau touching an edge is not one either.
        x = np.array([5, 1, 4, 4, 4, 1, 2, 7, 7], dtype=np.float64)
        peaks, _ = find_peaks(x)
        np.testing.assert_array_equal(peaks, [3])
        assert_same(x, prominence=0, width=0)
        # even plateau: midpoint rounds down
        peaks, _ = find_peaks(np.array([0, 3, 3, 3, 3, 0.0]))
        np.testing.assert_array_equal(peaks, [2])
        # long plateaus crossing block (64) and superblock (4096) boundaries
        x = np.zeros(10000)
        x[60:70] = 1.0
        x[4090:4200] = 2.0
        x[5000:5001] = 3.0
        for kw in CONDITIONS:
            assert_same(x, **kw)

    def test_long_walks_cross_superblocks(self):
        rng = np.random.default_rng(7)
        x = rng.normal(size=50000)
        x[[100, 9000, 25000, 49000]] = [40.0, 50.0, 45.0, 60.0]  # walks across many blocks
        x[20000:20010] = -30.0                                      # a deep minimum far away
        for kw in (dict(prominence=5), dict(prominence=5, width=1, rel_height=1.0), dict(prominence=(1, 100)),
                   dict(prominence=1, wlen=9001), dict(width=2)):
            assert_same(x, **kw)
            assert_same(x.astype(np.float32), **kw)

    def test_nan_and_inf(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=3000)
        x[[10, 500, 501, 2000]] = np.nan
        x[[50, 1500]] = np.inf
        x[[51, 900]] = -np.inf
        pf = PeakFinder()
        for kw in CONDITIONS:
            assert_same(x, **kw)
        pf.find(x, ["index"])
        assert pf.last_accelerated is False
        pf.find(np.nan_to_num(x), ["index"])
        assert pf.last_accelerated is True

    def test_integer_and_list_input(self):
        x = [0, 3, 1, 5, 5, 2, 9, 0]
        assert_same(np.asarray(x), prominence=1)
        peaks, _ = find_peaks(x, prominence=1)
        np.testing.assert_array_equal(peaks, scipy.signal.find_peaks(x, prominence=1)[0])

    @pytest.mark.parametrize("seed", [1, 2])
    def test_simulated_spectra(self, seed):
        for dtype in (np.float32, np.uint16):
            x, truth = random_spectrum(1 + seed % 4, np.random.default_rng(seed), dtype=dtype)
            s = truth.noise_sigma
            x = x.astype(np.float32)
            for kw in (dict(prominence=5 * s, width=2), dict(height=200.0, prominence=3 * s, wlen=101),
                       dict(prominence=5 * s), dict(prominence=5 * s, width=(2, 20), distance=4),
                       dict(height=150.0), dict(prominence=2 * s, width=1, rel_height=0.9)):
                assert_same(x, **kw)
                assert_same(x.astype(np.float64), **kw)

    def test_array_borders_go_to_scipy(self):
        rng = np.random.default_rng(5)
        x = rng.normal(size=500)
        hmin = np.linspace(-1, 1, 500)
        assert_same(x, height=hmin, prominence=0.5)
        assert_same(x, height=(None, hmin + 2), prominence=(0.2, None))

    def test_raises(self):
        x = np.arange(10.0)
        with pytest.raises(ValueError, match="`distance` must be greater or equal to 1"):
            find_peaks(x, distance=0.5)
        with pytest.raises(ValueError, match="`wlen` must be larger than 1"):
            find_peaks(x, prominence=1, wlen=1)
        with pytest.raises(ValueError, match="`rel_height` must be greater or equal to 0.0"):
            find_peaks(x, width=1, rel_height=-0.1)
        with pytest.raises(ValueError, match="1-D"):
            find_peaks(np.zeros((3, 3)))


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 300), elements=st.integers(-3, 3).map(float)),
       st.sampled_from(CONDITIONS))
def test_property_small_integer_signals(x, kw):
    """Many ties and plateaus: the hardest case for tie-breaking in bases and distance."""
    assert_same(x, **kw)
    assert_same(x.astype(np.float32), **kw)


class TestPeakFinderKernel:
    def test_fields(self):
        x = np.array([0, 2, 0, 3, 1, 4, 0], dtype=np.float64)
        out = PeakFinder().find(x, ["index", "prominence", "left_base"], need_prom=True)
        assert set(out) == {"index", "prominence", "left_base"}
        np.testing.assert_array_equal(out["index"], [1, 3, 5])
        np.testing.assert_array_equal(out["prominence"], [2.0, 2.0, 4.0])
        np.testing.assert_array_equal(out["left_base"], [0, 2, 2])  # strict <: the nearer of equal minima

    def test_unknown_field(self):
        with pytest.raises(ValueError, match="unknown peak field 'area'"):
            PeakFinder().find(np.zeros(5), ["area"])

    def test_reuse_across_sizes(self):
        pf = PeakFinder()
        rng = np.random.default_rng(11)
        for n in (100000, 10, 70000, 3, 5000):
            x = rng.normal(size=n)
            got = pf.find(x, ["index", "prominence"], need_prom=True, pmin=1.0)
            want, props = scipy.signal.find_peaks(x, prominence=1.0)
            np.testing.assert_array_equal(got["index"], want)
            np.testing.assert_array_equal(got["prominence"], props["prominences"])

    def test_all_fields_known(self):
        assert set(PEAK_FIELDS) >= {"index", "prominence", "width", "left_ip", "right_ip"}
