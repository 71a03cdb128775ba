"""Ring buffer: preallocated slots, views not copies, both overflow policies, counters that add up."""
import threading

import numpy as np
import pytest

from instrument.frames import FrameHeader, FrameType, HEADER_SIZE, encode_scan
from instrument.ring import OverflowPolicy, RingBuffer


def _frame(seq: int, n: int = 16) -> tuple[FrameHeader, bytes]:
    samples = np.full(n, seq % 65536, dtype=np.uint16)
    raw = encode_scan(samples, sequence=seq, scan_number=seq, device_time_ns=seq * 1000)
    # A header as the decoder would produce it; the ring only stores it.
    from instrument.frames import AxisKind, Calibration, Polarity, SampleType
    header = FrameHeader(FrameType.SCAN, seq, seq, seq * 1000, 1, Polarity.POSITIVE, SampleType.UINT16,
                         AxisKind.TOF, n, 2 * n, Calibration())
    return header, raw


class TestRingBuffer:
    def test_put_get_is_a_view_of_the_slot(self):
        ring = RingBuffer(slots=4, slot_bytes=1024)
        reader = ring.add_reader("dsp")
        header, raw = _frame(7)
        assert ring.put(header, raw, host_time_ns=123)
        slot = reader.get(timeout=0)
        assert slot is not None and slot.header.sequence == 7 and slot.host_time_ns == 123
        samples = slot.samples()
        assert samples.base is not None and np.shares_memory(samples, slot.raw)
        assert (samples == 7).all()
        assert bytes(slot.frame) == raw
        reader.release()
        assert reader.get(timeout=0) is None

    def test_slot_payload_is_aligned(self):
        ring = RingBuffer(slots=3, slot_bytes=512)
        for slot in ring._slots:
            assert (slot.raw.ctypes.data + HEADER_SIZE) % 16 == 0

    def test_oversize_frame_is_counted_not_stored(self):
        ring = RingBuffer(slots=2, slot_bytes=128)
        reader = ring.add_reader("r")
        header, raw = _frame(1, n=200)
        assert not ring.put(header, raw, 0)
        assert ring.stats.dropped_oversize == 1 and reader.get(timeout=0) is None

    def test_drop_oldest_keeps_newest_and_counts(self):
        ring = RingBuffer(slots=4, slot_bytes=1024, policy="drop-oldest")
        reader = ring.add_reader("r")
        for seq in range(10):
            ring.put(*_frame(seq), host_time_ns=seq)
        got = []
        while (slot := reader.get(timeout=0)) is not None:
            got.append(slot.header.sequence)
            reader.release()
        assert got == [6, 7, 8, 9]
        assert reader.dropped == 6

    def test_drop_oldest_never_overwrites_a_held_slot(self):
        ring = RingBuffer(slots=2, slot_bytes=1024, policy="drop-oldest")
        reader = ring.add_reader("r")
        ring.put(*_frame(0), host_time_ns=0)
        held = reader.get(timeout=0)
        before = bytes(held.frame)
        for seq in range(1, 6):
            ring.put(*_frame(seq), host_time_ns=seq)
        assert bytes(held.frame) == before and held.header.sequence == 0
        assert ring.stats.dropped_busy >= 1
        reader.release()

    def test_block_policy_waits_for_the_reader(self):
        ring = RingBuffer(slots=2, slot_bytes=1024, policy=OverflowPolicy.BLOCK)
        reader = ring.add_reader("r")
        ring.put(*_frame(0), 0)
        ring.put(*_frame(1), 0)
        done = threading.Event()
        t = threading.Thread(target=lambda: (ring.put(*_frame(2), 0), done.set()))
        t.start()
        assert not done.wait(0.2), "producer must block while the ring is full"
        reader.get(timeout=0)
        reader.release()
        assert done.wait(2)
        t.join()

    def test_block_policy_gives_up_on_stop(self):
        ring = RingBuffer(slots=2, slot_bytes=1024, policy="block")
        ring.add_reader("r")
        ring.put(*_frame(0), 0)
        ring.put(*_frame(1), 0)
        stop = threading.Event()
        stop.set()
        assert not ring.put(*_frame(2), 0, stop=stop)
        assert ring.stats.dropped_closed == 1

    def test_close_drains_then_ends(self):
        ring = RingBuffer(slots=4, slot_bytes=1024)
        reader = ring.add_reader("r")
        ring.put(*_frame(0), 0)
        ring.close()
        assert reader.get(timeout=1).header.sequence == 0
        reader.release()
        assert reader.get(timeout=1) is None

    @pytest.mark.parametrize("policy", ["block", "drop-oldest"])
    def test_threads_two_readers_every_frame_accounted_for(self, policy):
        ring = RingBuffer(slots=8, slot_bytes=1024, policy=policy)
        readers = [ring.add_reader("fast"), ring.add_reader("slow")]
        total = 3000
        results: dict[str, list[int]] = {}

        def consume(reader, pause):
            seen = []
            while (slot := reader.get(timeout=5)) is not None:
                seq = slot.header.sequence
                # Data must be intact while held, whatever the producer does meanwhile.
                assert (slot.samples() == seq % 65536).all()
                seen.append(seq)
                if pause and seq % 50 == 0:
                    threading.Event().wait(0.001)
                reader.release()
            results[reader.name] = seen

        threads = [threading.Thread(target=consume, args=(r, r.name == "slow")) for r in readers]
        for t in threads:
            t.start()
        frames = [_frame(seq) for seq in range(total)]
        for header, raw in frames:
            ring.put(header, raw, 0)
        ring.close()
        for t in threads:
            t.join(10)
        for reader in readers:
            seen = results[reader.name]
            assert seen == sorted(seen), "order is kept"
            accounted = len(seen) + reader.dropped + ring.stats.dropped_busy
            if policy == "block":
                assert seen == list(range(total))
            else:
                # Frames dropped as busy never reached the ring; the rest were seen or counted.
                assert len(seen) + reader.dropped == ring.stats.written
                assert accounted >= total - ring.stats.dropped_closed
