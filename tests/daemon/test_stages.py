"""DSP worker threads + sequencer: ring order restored whatever the worker count and timing."""
import queue
import random
import threading
import time

import numpy as np
import pytest

from instrument.frames import AxisKind, Calibration, FrameHeader, FrameType, Polarity, SampleType, encode_scan
from instrument.ring import RingBuffer
from ionstream.daemon.stages import DspWorkers, Sequencer


def _put(ring, seq, frame_type=FrameType.SCAN):
    samples = np.full(8, seq, dtype=np.uint16)
    raw = encode_scan(samples, sequence=seq, scan_number=seq, device_time_ns=seq)
    header = FrameHeader(frame_type, seq, seq, seq, 1, Polarity.POSITIVE, SampleType.UINT16, AxisKind.TOF,
                         8, 16, Calibration())
    ring.put(header, raw, time.time_ns())


def _run(n_workers, n_frames, policy="block", slots=16, jitter_s=0.0005, fail_every=0):
    ring = RingBuffer(slots=slots, slot_bytes=512, policy=policy)
    results = queue.Queue(maxsize=64)
    rng = random.Random(n_workers)
    lock = threading.Lock()

    def make_processor():
        def process(slot):
            seq = slot.header.sequence
            with lock:
                delay = rng.random() * jitter_s
            time.sleep(delay)
            if fail_every and seq % fail_every == 0:
                raise ValueError("bad scan on purpose")
            return int(slot.samples()[0])
        return process

    workers = DspWorkers(ring, n_workers, make_processor, results)
    emitted = []
    seqr = Sequencer(workers, results, emitted.append, start_index=0)
    workers.start()
    seqr.start()
    for seq in range(n_frames):
        _put(ring, seq)
    ring.close()
    assert workers.join(20) and seqr.join(20)
    return emitted, workers, seqr


@pytest.mark.parametrize("n_workers", [1, 2, 3, 4])
def test_order_is_ring_order_for_any_worker_count(n_workers):
    emitted, workers, seqr = _run(n_workers, 400)
    assert [r.index for r in emitted] == list(range(400))
    assert [r.payload for r in emitted] == list(range(400))
    assert seqr.skipped == 0 and sum(workers.processed) == 400


def test_a_failing_scan_is_counted_and_the_rest_go_on():
    emitted, workers, _ = _run(2, 100, fail_every=10)
    assert [r.index for r in emitted] == list(range(100))
    errors = [r for r in emitted if r.kind == "error"]
    assert len(errors) == 10 and workers.errors == 10
    assert "bad scan on purpose" in errors[0].meta["error"]


def test_drop_oldest_skips_are_skipped_in_order():
    emitted, workers, seqr = _run(2, 2000, policy="drop-oldest", slots=4, jitter_s=0.0002)
    ring = workers._readers[0].ring
    indices = [r.index for r in emitted]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    # Every frame offered is accounted for: emitted, skipped (overwritten in the ring) or
    # dropped on arrival because its slot was held.
    assert ring.stats.written + ring.stats.dropped_busy == 2000
    assert len(indices) + seqr.skipped == ring.stats.written
    assert workers.dropped > 0, "a 4-slot ring must overflow with slow workers"
