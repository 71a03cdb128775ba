"""ionstream.processing: the per-scan work of the daemon's DSP workers (ScanWork) and the trace
stage of its sequencer (TraceEvents), on simulator frames through the real decoder."""
import numpy as np
import pytest

from dsp.features import FeatureExtractor
from dsp.processor import ScanParams, ScanProcessor
from inference.bundle import load_bundle
from instrument.frames import FrameDecoder, FrameType
from instrument.simulator import SimConfig, Simulator
from instrument.spectrum_model import emg_profile, mz_axis
from ionstream.processing import PEAK_FIELDS, ScanWork, TraceEvents

XIC = [(184.05, 184.1), (500.0, 520.0)]


@pytest.fixture(scope="module")
def scans():
    sim = Simulator(SimConfig(n_samples=8192, seed=4, status_interval_s=0))
    decoder, out = FrameDecoder(), []
    for _ in range(6):
        frame, _truth = next(sim)
        for f in decoder.feed(frame):
            if f.header.frame_type == FrameType.SCAN:
                out.append((f.header, f.samples().copy()))
    return out


def test_scan_work_equals_the_processor_and_keeps_its_peaks(scans):
    bundle = load_bundle()
    work = ScanWork(dsp_params={"smoothing": "savgol", "min_snr": 3.0}, xic_windows=XIC,
                    feature_spec=bundle.feature_spec)
    reference = ScanProcessor(ScanParams(smoothing="savgol", min_snr=3.0, xic=tuple(XIC)))
    extract = FeatureExtractor(bundle.feature_spec)
    results = [work.process(h, s, None) for h, s in scans]
    assert len({r.peaks["mz"].tobytes() for r in results}) == len(results)  # each scan its own peaks
    # Every result still holds its own scan's peaks after later scans reused the buffers.
    for (h, s), got in zip(scans, results):
        want = reference.process(s, h.calibration)
        assert len(got.peaks["mz"]) == want.n_peaks > 0
        for name, dtype in PEAK_FIELDS:
            assert got.peaks[name].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got.peaks[name], want.peaks[name].astype(dtype))
        assert got.tic == want.tic
        np.testing.assert_array_equal(got.xic, want.xic)
        np.testing.assert_array_equal(got.features, extract(mz_axis(h.calibration, h.n_samples), s))


def test_scan_work_names_a_wrong_setting():
    with pytest.raises(TypeError, match="min_snrr"):
        ScanWork(dsp_params={"min_snrr": 3.0}, xic_windows=[])


def test_trace_events_name_scans_times_and_levels():
    rate, t0_ns = 20.0, 1_700_000_000 * 10**9
    times = np.arange(0, 60, 1 / rate)
    tic = 1000 + 5000 * emg_profile(times, 20.0, 0.8, 0.5) + np.random.default_rng(0).normal(0, 20, times.size)
    trace = TraceEvents(["tic"])
    events = []
    for k, (t, v) in enumerate(zip(times, tic)):
        scan = 100 + k  # scan numbers need not start at 0
        for ev in trace.update(scan, t0_ns + int(round(t * 1e9)), float(v), np.zeros(0)):
            assert ev["scan"] == scan  # decided by the point just pushed
            events.append(ev)
    kinds = [e["kind"] for e in events]
    assert kinds == ["start", "apex", "end"], kinds
    start, apex, end = events
    assert start["start_scan"] < apex["apex_scan"] < end["end_scan"] <= end["scan"]
    for ev, key in ((start, "start_scan"), (apex, "apex_scan"), (end, "end_scan")):
        k = ev[key] - 100
        assert ev["t_ns"] == t0_ns + int(round(times[k] * 1e9))
    assert abs(apex["t_ns"] / 1e9 - t0_ns / 1e9 - 20.5) < 1.5  # EMG apex: 20 s + a little tailing
    assert apex["intensity"] == pytest.approx(apex["baseline"] + apex["height"])
    assert 4000 < apex["intensity"] < 7000 and 900 < start["intensity"] < 1100
    assert end["area"] > 0 and np.isnan(start["area"])
