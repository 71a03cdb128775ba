"""Supervision: a dead DSP worker is restarted and its scans counted; a stuck one costs scans, not
memory; a refused recording leaves no ring reader behind; health rules and their episodes."""
import queue
import threading
import time

import numpy as np
import pytest

from instrument.frames import AxisKind, Calibration, FrameHeader, FrameType, Polarity, SampleType, encode_scan
from instrument.recorder import Recorder
from instrument.ring import RingBuffer
from ionstream.daemon.health import HealthLimits, HealthMonitor
from ionstream.daemon.rates import RateWindow
from ionstream.daemon.stages import DspWorkers, Sequencer
from support import wait_until


def _put(ring, seq):
    samples = np.full(8, seq, dtype=np.uint16)
    raw = encode_scan(samples, sequence=seq, scan_number=seq, device_time_ns=seq)
    header = FrameHeader(FrameType.SCAN, seq, seq, seq, 1, Polarity.POSITIVE, SampleType.UINT16, AxisKind.TOF,
                         8, 16, Calibration())
    return ring.put(header, raw, time.time_ns())


class _WorkerKilled(BaseException):
    """Fault injection: an error that escapes the per-scan handler, as a bug in the worker loop would."""


class TestDspWorkerRestart:
    def test_dead_worker_is_restarted_and_its_scans_are_counted(self):
        ring = RingBuffer(slots=64, slot_bytes=512, policy="drop-oldest")
        results = queue.Queue(maxsize=256)
        killed = threading.Event()

        def make_processor():
            def process(slot):
                if slot.header.sequence == 10 and not killed.is_set():
                    killed.set()
                    raise _WorkerKilled("worker loop bug")
                return slot.header.sequence
            return process

        workers = DspWorkers(ring, 2, make_processor, results)
        emitted = []
        seqr = Sequencer(workers, results, emitted.append, start_index=0)
        workers.start()
        seqr.start()
        for seq in range(20):
            _put(ring, seq)
        assert wait_until(lambda: any(s.startswith("failed") for s in workers.states().values()))
        state = workers.states()["dsp0"]
        assert state.startswith("failed: _WorkerKilled"), state
        assert workers.restart_failed() == [0]
        assert workers.restarts == 1 and workers.states()["dsp0"] == "running"
        for seq in range(20, 60):
            _put(ring, seq)
        ring.close()
        assert workers.join(10) and seqr.join(10)
        got = [r.payload for r in emitted]
        assert got == sorted(got) and 59 in got            # order kept, the stream went on
        assert 10 not in got
        assert len(got) + seqr.skipped == 60               # every index is either emitted or counted
        assert seqr.skipped >= 1

    def test_a_dead_unrestarted_worker_costs_scans_not_memory(self):
        """Before the supervisor restarts it (or if it cannot), later results must not pile up."""
        ring = RingBuffer(slots=32, slot_bytes=512, policy="drop-oldest")
        results = queue.Queue(maxsize=256)

        def make_processor():
            def process(slot):
                if slot.header.sequence == 3:
                    raise _WorkerKilled("worker loop bug")
                return slot.header.sequence
            return process

        workers = DspWorkers(ring, 2, make_processor, results)
        emitted = []
        seqr = Sequencer(workers, results, emitted.append, start_index=0, max_pending=16)
        workers.start()
        seqr.start()
        depth = 0
        for seq in range(300):
            _put(ring, seq)
            depth = max(depth, seqr.reorder_depth)
            time.sleep(0.0005)
        ring.close()
        assert workers.join(10) and seqr.join(10)
        assert depth <= 16 + 2          # bounded by max_pending (plus what one drain adds)
        assert seqr.stalled >= 100      # the dead worker's indices were given up, and counted
        got = [r.index for r in emitted]
        assert got == sorted(got) and len(got) >= 140
        assert len(got) + seqr.skipped == 300


def test_refused_recording_leaves_no_ring_reader(tmp_path):
    """Issue 14.2: a refused `record start` (existing file) must not hold the ring."""
    ring = RingBuffer(slots=4, slot_bytes=512, policy="block")
    existing = tmp_path / "run1.isc"
    existing.write_bytes(b"not yours")
    with pytest.raises(FileExistsError):
        Recorder(ring, existing, {"source": "test"})
    for seq in range(3):
        _put(ring, seq)
    assert ring.fill == 0.0       # a leaked reader would hold 3 of 4 slots here, and block the 5th put
    assert all(_put(ring, seq) for seq in range(3, 20)) and ring.head == 20


class TestHealth:
    def _snap(self, **kw):
        base = {"frames": 0, "drops_total": 0, "ring_fill": 0.0}
        base.update(kw)
        return base

    def test_no_data_after_stall_then_recovers(self, caplog):
        mon = HealthMonitor(HealthLimits(stall_s=5.0))
        assert mon.check(self._snap(frames=10), 0.0) == {}
        assert mon.check(self._snap(frames=10), 4.0) == {}
        with caplog.at_level("INFO", logger="ionstream.daemon.health"):
            assert "no_data" in mon.check(self._snap(frames=10), 6.0)
            assert "no_data" in mon.check(self._snap(frames=10), 7.0)
            assert mon.check(self._snap(frames=11), 8.0) == {}
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "no data from the source" in warnings[0].getMessage()
        assert any("recovered" in r.getMessage() for r in caplog.records)

    def test_finished_replay_and_waiting_are_not_stalls(self):
        mon = HealthMonitor(HealthLimits(stall_s=1.0))
        mon.check(self._snap(frames=5), 0.0)
        assert mon.check(self._snap(frames=5, source_ended=True), 10.0) == {}
        assert mon.check(self._snap(frames=5, waiting_subscribers=True), 20.0) == {}

    def test_drops_rising_ring_full_stage_failed_recording_error(self):
        mon = HealthMonitor(HealthLimits(drop_window_s=10.0, ring_fill_max=0.9))
        assert mon.check(self._snap(frames=1, drops_total=5), 0.0) == {}
        bad = mon.check(self._snap(frames=2, drops_total=9, ring_fill=0.95, stages={"classifier": "failed: boom", "dsp0": "running"},
                                   record_error="recording to x stopped: disk full"), 1.0)
        assert set(bad) == {"drops", "ring", "stage", "recording"}
        assert "4 scan(s) dropped" in bad["drops"] and "classifier failed: boom" in bad["stage"]
        # the drops leave the window after drop_window_s without new ones
        assert "drops" not in mon.check(self._snap(frames=3, drops_total=9), 12.0)


def test_rates_come_from_a_fixed_window_not_from_who_asks():
    rates = RateWindow(window_s=5.0)
    assert rates.sample({"scans": 0}, 0.0) == {"scans": 0.0}
    for t in range(1, 11):
        r = rates.sample({"scans": 20 * t}, float(t))
    assert r["scans"] == pytest.approx(20.0)
