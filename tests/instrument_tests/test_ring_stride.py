"""Strided ring readers (issue 17 step 2): reader w of N takes only indices k % N == w, and the
producer wakes only that reader (one wake-up per frame for N DSP workers, not N)."""
from __future__ import annotations

import queue
import threading

import pytest

from instrument.ring import DropLog, RingBuffer
from ionstream.daemon.stages import DspWorkers
from test_ring import _frame


def _drain(reader) -> list[int]:
    got = []
    while (slot := reader.get(timeout=0)) is not None:
        got.append(slot.stamp)
        reader.release()
    return got


def test_each_strided_reader_gets_only_its_indices():
    ring = RingBuffer(slots=16, slot_bytes=1024)
    readers = [ring.add_reader(f"dsp{w}", stride=3, offset=w) for w in range(3)]
    plain = ring.add_reader("recorder")
    for seq in range(10):
        assert ring.put(*_frame(seq), host_time_ns=seq)
    assert [_drain(r) for r in readers] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert _drain(plain) == list(range(10))


def test_producer_wakes_only_the_reader_of_the_index():
    # The DSP stage as the pipeline builds it: N strided readers. Before strides, every put
    # set every worker's event (N wake-ups per frame).
    ring = RingBuffer(slots=16, slot_bytes=1024)
    workers = DspWorkers(ring, 3, lambda: (lambda slot: None), queue.Queue())  # not started: no thread
    events = [r._ready for r in workers._readers]
    ring.put(*_frame(0), host_time_ns=0)
    assert [e.is_set() for e in events] == [True, False, False]
    ring.put(*_frame(1), host_time_ns=1)
    assert [e.is_set() for e in events] == [True, True, False]


def test_a_reader_added_later_starts_at_its_next_own_index():
    ring = RingBuffer(slots=8, slot_bytes=1024)
    for seq in range(5):
        ring.put(*_frame(seq), host_time_ns=seq)
    reader = ring.add_reader("dsp1", stride=4, offset=1)
    assert reader.cursor == 5  # 5 % 4 == 1
    ring.put(*_frame(5), host_time_ns=5)
    assert _drain(reader) == [5]
    assert reader.cursor == 9 and reader.lag == 0


def test_block_policy_waits_for_a_strided_reader_and_not_beyond():
    ring = RingBuffer(slots=4, slot_bytes=1024, policy="block")
    even = ring.add_reader("dsp0", stride=2, offset=0)
    odd = ring.add_reader("dsp1", stride=2, offset=1)
    for seq in range(4):
        assert ring.put(*_frame(seq), host_time_ns=seq)
    assert _drain(odd) == [1, 3]
    stop = threading.Event()
    stop.set()  # the ring is full for `even` (cursor 0): put must give up, not overwrite
    assert not ring.put(*_frame(4), host_time_ns=4, stop=stop)
    assert _drain(even) == [0, 2]
    assert ring.put(*_frame(4), host_time_ns=4)


def test_drop_oldest_counts_only_own_indices_and_droplog_sums_them():
    ring = RingBuffer(slots=4, slot_bytes=1024, policy="drop-oldest")
    readers = [ring.add_reader(f"dsp{w}", stride=2, offset=w) for w in range(2)]
    for seq in range(10):
        ring.put(*_frame(seq), host_time_ns=seq)
    assert [_drain(r) for r in readers] == [[6, 8], [7, 9]]
    assert [r.dropped for r in readers] == [3, 3]   # 0 2 4 and 1 3 5
    assert DropLog(ring)._overwritten() == 6        # the frames lost to the DSP stage


@pytest.mark.parametrize("stride,offset", [(0, 0), (2, 2), (2, -1)])
def test_bad_stride_is_refused_with_a_clear_error(stride, offset):
    ring = RingBuffer(slots=4, slot_bytes=1024)
    with pytest.raises(ValueError, match="stride"):
        ring.add_reader("x", stride=stride, offset=offset)
