"""dsp.traces: streaming SOS filter (chunk invariance, property-tested), elution events (bounded
delay, chunk invariance, truth on the simulator's chromatographic run)."""
import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from dsp.processor import ScanProcessor
from dsp.traces import (APEX, END, EVENT_DTYPE, START, EventParams, StreamingSOS, TraceProcessor,
                        design_lowpass)
from instrument.spectrum_model import ScanGenerator, emg_profile


def chunks(n, sizes):
    i, k = 0, 0
    while i < n:
        m = sizes[k % len(sizes)]
        yield slice(i, i + m)
        i += m
        k += 1


class TestStreamingSOS:
    def test_equals_one_call(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1000, 3)).cumsum(0)
        sos = design_lowpass(0.2, 4)
        want = scipy.signal.sosfilt(sos, x, axis=0, zi=scipy.signal.sosfilt_zi(sos)[:, :, None] * x[0])[0]
        got = StreamingSOS(sos, 3)(x)
        np.testing.assert_array_equal(got, want)

    @settings(max_examples=60, deadline=None)
    @given(hnp.arrays(np.float64, st.tuples(st.integers(1, 300), st.integers(1, 3)),
                      elements=st.floats(-1e6, 1e6, allow_nan=False)),
           st.lists(st.integers(1, 50), min_size=1, max_size=20),
           st.sampled_from([(0.1, 2), (0.5, 1), (0.05, 6)]))
    def test_chunks_of_any_size_equal_one_call(self, x, sizes, design):
        sos = design_lowpass(*design)
        one = StreamingSOS(sos, x.shape[1])(x)
        f = StreamingSOS(sos, x.shape[1])
        parts = [f(x[s]) for s in chunks(x.shape[0], sizes)]
        np.testing.assert_array_equal(np.concatenate(parts), one)

    def test_point_by_point_equals_one_call(self):
        # The daemon pushes one point per scan (a fast path, not sosfilt): bit-identical results.
        rng = np.random.default_rng(1)
        x = rng.normal(size=(500, 2)).cumsum(0) * 1e4
        sos = design_lowpass(0.05, 6)
        f = StreamingSOS(sos, 2)
        got = np.concatenate([f(x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_array_equal(got, StreamingSOS(sos, 2)(x))
        with pytest.raises(ValueError, match="normalised"):
            StreamingSOS(sos * 2.0)

    def test_one_channel_and_raises(self):
        f = StreamingSOS(design_lowpass(0.3), 1)
        assert f(np.arange(5.0)).shape == (5,)
        assert f(np.zeros(0)).shape == (0,)
        with pytest.raises(ValueError, match=r"expected shape \(n, 1\)"):
            f(np.zeros((3, 2)))
        with pytest.raises(ValueError, match="sos must have shape"):
            StreamingSOS(np.zeros(5))
        with pytest.raises(ValueError, match="cutoff must be in"):
            design_lowpass(1.5)


def elution_trace(seed=0, rate_hz=20.0, duration_s=120.0, noise=30.0):
    rng = np.random.default_rng(seed)
    t = np.arange(0, duration_s, 1 / rate_hz)
    truth = [(20.0, 0.8, 0.5, 5000.0), (60.0, 1.2, 1.5, 800.0), (90.0, 2.0, 1.0, 400.0)]
    sig = np.zeros_like(t)
    for rt, s, tau, h in truth:
        sig += h * emg_profile(t, rt, s, tau)
    return t, 1000 + noise * rng.standard_normal(t.size) + sig + 0.5 * t, truth


def run_events(tp, t, tic, xic=None, sizes=(1,)):
    rows = []
    for s in chunks(t.size, list(sizes)):
        _, ev = tp.push(t[s], tic[s], None if xic is None else xic[s])
        rows.append(ev)
    return np.concatenate(rows) if rows else np.zeros(0, EVENT_DTYPE)


class TestElutionEvents:
    def test_finds_the_peaks(self):
        t, tic, truth = elution_trace()
        ev = run_events(TraceProcessor(), t, tic)
        ends = ev[ev["kind"] == END]
        assert len(ends) == len(truth)
        for (rt, s, tau, h), e in zip(truth, ends):
            assert e["start_time"] < rt < e["end_time"]
            assert rt - s < e["apex_time"] < rt + tau + s          # the EMG maximum lies after rt
            assert e["height"] == pytest.approx(h, rel=0.25)
            assert e["area"] > 0 and not e["truncated"]
        assert np.sum(ev["kind"] == START) == len(truth) and np.sum(ev["kind"] == APEX) == len(truth)

    def test_bounded_delay(self):
        p = EventParams(confirm=4)
        t, tic, _ = elution_trace(1)
        ev = run_events(TraceProcessor(events=p), t, tic)
        ends = ev[ev["kind"] == END]
        assert np.all(ends["emitted"] - ends["end"] <= p.confirm - 1)
        starts = ev[ev["kind"] == START]
        assert np.all(starts["emitted"] - starts["start"] <= p.max_points)
        # a peak that never ends is closed after max_points
        p = EventParams(max_points=50)
        x = np.concatenate([np.full(100, 10.0), np.full(300, 1000.0)]) + np.random.default_rng(2).normal(size=400)
        ev = run_events(TraceProcessor(cutoff=None, events=p), np.arange(400.0), x)
        ends = ev[ev["kind"] == END]
        assert ends.size >= 1 and ends[0]["truncated"] and ends[0]["emitted"] - ends[0]["start"] == 49

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(1, 97), min_size=1, max_size=10))
    def test_chunk_invariance(self, sizes):
        t, tic, _ = elution_trace(3, duration_s=60.0)
        xic = np.stack([tic * 0.1, tic[::-1] * 0.2], axis=1)
        one = run_events(TraceProcessor(n_xic=2), t, tic, xic, sizes=(t.size,))
        got = run_events(TraceProcessor(n_xic=2), t, tic, xic, sizes=sizes)
        assert got.tobytes() == one.tobytes()

    def test_push_result_and_raises(self):
        tp = TraceProcessor(n_xic=2)
        with pytest.raises(ValueError, match="2 extracted-ion values per scan expected"):
            tp.push(0.0, 1.0)
        y, ev = tp.push([0.0, 0.1], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]])
        assert y.shape == (2, 3) and ev.size == 0
        with pytest.raises(ValueError, match="on_sigma > off_sigma"):
            EventParams(on_sigma=1.0, off_sigma=2.0)
        with pytest.raises(ValueError, match="confirm must be >= 1"):
            EventParams(confirm=0)


def test_simulated_run_xic_events():
    """Scans from the simulator's chromatographic run -> ScanProcessor XICs -> elution events whose
    apexes match the compounds' elution profiles."""
    gen = ScanGenerator(seed=4, cycle_s=40.0, n_compounds=8)
    el = gen.elution
    top = np.argsort(el["height"])[::-1][:3]
    windows = []
    for c in top:
        ions = gen.compounds[c].ions
        mz = float(ions["mz"][np.argmax(ions["rel_height"])])
        w = float(gen.model.fwhm(mz))
        windows.append((mz - 2 * w, mz + 2 * w))
    proc = ScanProcessor(xic=tuple(windows))
    tp = TraceProcessor(n_xic=len(windows), cutoff=0.3)
    rate = 10.0
    rows = []
    for k, time_s in enumerate(np.arange(0.0, 40.0, 1 / rate)):
        x, _ = gen.generate(k, float(time_s))
        r = proc.process(x, gen.model.calibration)
        rows.append(tp.push_result(float(time_s), r)[1])
    ev = np.concatenate(rows)
    for ch, c in enumerate(top, start=1):
        ends = ev[(ev["kind"] == END) & (ev["channel"] == ch)]
        t = np.linspace(0, 40, 4001)
        true_apex = t[np.argmax(emg_profile(t, el["rt_s"][c], el["sigma_s"][c], el["tau_s"][c]))]
        assert ends.size >= 1, (ch, el[c])
        best = ends[np.argmax(ends["height"])]
        assert abs(best["apex_time"] - true_apex) < max(3 * el["sigma_s"][c], 0.5), (best, el[c])
