"""Ring slots sized by the protocol, frames larger than a slot still recorded, drops logged
(issue 14 item 3).

End to end on real parts: frames written to a capture file, replayed by the replay source,
decoded by the acquisition thread's decoder, stored in the ring, read by a DSP-style reader and
by the real capture Recorder, whose file is read back.
"""
import logging
import re
import struct
import time
import zlib

import numpy as np
import pytest

from instrument.acquisition import AcquisitionThread
from instrument.capture import CaptureReader, CaptureWriter
from instrument.frames import (
    MAX_HEADER_SIZE,
    AxisKind,
    FrameDecoder,
    FrameType,
    SampleType,
    encode_scan,
    pack_header,
)
from instrument.recorder import Recorder
from instrument.ring import DropLog, RingBuffer, slot_bytes_for
from instrument.sources import open_source
from ionstream.config import Config

T0 = 1_700_000_000_000_000_000


def _long_header_scan(samples: np.ndarray, seq: int, header_size: int, mz: np.ndarray | None = None) -> bytes:
    """A valid SCAN frame with a longer (compatible, docs/protocol.md § Versioning) header:
    ``header_size - 80`` bytes of fields a version 1 decoder does not know."""
    payload = (b"" if mz is None else mz.astype("<f8").tobytes()) + samples.tobytes()
    kind = {np.dtype("<f4"): SampleType.FLOAT32, np.dtype("<f8"): SampleType.FLOAT64}[samples.dtype]
    header = pack_header(frame_type=FrameType.SCAN, sequence=seq, scan_number=seq, device_time_ns=seq * 10**6,
                         sample_type=kind, axis_kind=AxisKind.TOF if mz is None else AxisKind.EXPLICIT,
                         n_samples=len(samples), payload_size=len(payload), extension=bytes(header_size - 80))
    return header + payload + struct.pack("<I", zlib.crc32(payload))


def _replay(tmp_path, frames: list[bytes]) -> str:
    path = tmp_path / "in.isc"
    with CaptureWriter(path, {"source": {"url": "test://", "kind": "test"}}) as w:
        for i, frame in enumerate(frames):
            w.append(frame, T0 + i)
    return f"replay://{path}?speed=max"


def _read_all(reader, until, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """(sequence, frame bytes) of every slot ``reader`` gets until ``until()`` and the ring is drained."""
    got, deadline = [], time.monotonic() + timeout
    while True:
        slot = reader.get(timeout=0.05)
        if slot is None:
            if until() and reader.lag == 0:
                return got
            assert time.monotonic() < deadline, "frames did not arrive"
            continue
        got.append((slot.header.sequence, bytes(slot.frame)))
        reader.release()


def _capture_frames(path) -> list[bytes]:
    with CaptureReader(path) as reader:
        return [bytes(frame) for _host_time_ns, frame in reader]


class TestSlotSize:
    def test_a_slot_holds_the_largest_frame_the_protocol_allows_for_the_scan_size(self):
        n = 1000
        frame = _long_header_scan(np.arange(n, dtype="<f8"), 1, MAX_HEADER_SIZE, mz=np.linspace(100, 900, n))
        assert len(frame) == slot_bytes_for(n)  # 1024-byte header, f64 axis, f64 samples, CRC
        ring = RingBuffer(slots=2, slot_bytes=slot_bytes_for(n))
        reader = ring.add_reader("dsp")
        header = next(iter(FrameDecoder().feed(frame))).header
        assert ring.put(header, frame, 0)
        slot = reader.get(timeout=0)
        np.testing.assert_array_equal(slot.samples(), np.arange(n, dtype="<f8"))
        np.testing.assert_array_equal(slot.mz_axis(), np.linspace(100, 900, n))

    def test_the_daemon_default_is_the_protocol_bound(self):
        ring = Config().ring
        assert ring.resolved_slot_bytes() == slot_bytes_for(ring.max_samples) == 1024 + 16 * 65536 + 4

    def test_a_long_header_full_size_scan_is_processed_not_dropped(self, tmp_path, caplog):
        """The issue's case: 65,536 float32 samples behind a 120-byte header, with the daemon's
        default ring (64k samples). It used to pass the decoder and then be dropped as oversize."""
        samples = np.linspace(0, 1000, 65536, dtype="<f4")
        frames = [encode_scan(samples, sequence=0, scan_number=0, device_time_ns=0),
                  _long_header_scan(samples, 1, 120), _long_header_scan(samples + 1, 2, 120)]
        ring = RingBuffer(4, Config().ring.resolved_slot_bytes(), "block")
        dsp = ring.add_reader("dsp")
        acq = AcquisitionThread(open_source(_replay(tmp_path, frames)), ring).start()
        try:
            with caplog.at_level(logging.WARNING):
                got = _read_all(dsp, lambda: not acq.alive)
        finally:
            acq.stop()
        assert [seq for seq, _ in got] == [0, 1, 2]
        assert [raw for _, raw in got] == frames
        assert ring.stats.dropped_oversize == 0 and acq.decoder.stats.bad_headers == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class TestOversizeFrames:
    """Frames with more samples than ring.max_samples: not processed, counted, logged, recorded."""

    N = 1024  # ring.max_samples

    def _frames(self) -> list[bytes]:
        def scan(seq, n):
            return encode_scan(np.full(n, seq, np.uint16), sequence=seq, scan_number=seq, device_time_ns=seq)
        # uint16: 2 bytes a sample, so 10N and 40N samples are larger than a slot (16N + 1028 bytes)
        return [scan(0, self.N), scan(1, 40 * self.N), scan(2, self.N), scan(3, 10 * self.N), scan(4, 10)]

    def test_recorded_in_order_but_not_processed(self, tmp_path, caplog):
        config = Config()
        config.ring.max_samples = self.N
        ring = RingBuffer(4, config.ring.resolved_slot_bytes(), "block")
        frames = self._frames()
        assert len(frames[1]) > ring.slot_bytes and len(frames[3]) > ring.slot_bytes
        dsp = ring.add_reader("dsp")
        recorder = Recorder(ring, tmp_path / "out.isc", {"source": {"url": "test://"}}).start()
        acq = AcquisitionThread(open_source(_replay(tmp_path, frames)), ring).start()
        try:
            with caplog.at_level(logging.WARNING, logger="ionstream.ring"):
                got = _read_all(dsp, lambda: not acq.alive)
                acq.join(30)
        finally:
            acq.stop()
            recorder.stop()
        assert [seq for seq, _ in got] == [0, 2, 4]                      # DSP: what fits a slot
        assert _capture_frames(tmp_path / "out.isc") == frames            # the capture: everything, in order
        st = ring.stats
        assert (st.dropped_oversize, st.oversize_kept, st.oversize_not_kept) == (2, 2, 0)
        assert dsp.dropped == 0 and recorder.dropped == 0
        # Logged at WARNING, naming the setting; however the reads split the stream, the lines
        # (the first at once, the rest at most every 10 s and at the end) count both frames.
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings and all("larger than a ring slot" in w and "ring.max_samples" in w for w in warnings)
        assert sum(int(re.match(r"ring: (\d+) frame", w).group(1)) for w in warnings) == 2

    def test_without_a_recorder_nothing_is_allocated(self):
        ring = RingBuffer(4, slot_bytes_for(self.N))
        dsp = ring.add_reader("dsp")
        frame = self._frames()[1]
        header = next(iter(FrameDecoder().feed(frame))).header
        assert not ring.put(header, frame, 0)
        assert ring.stats.dropped_oversize == 1 and ring.stats.oversize_kept == 0 and not ring._side
        assert dsp.get(timeout=0) is None

    def test_oversize_buffers_are_bounded_and_reused(self):
        frames = self._frames()
        ring = RingBuffer(8, slot_bytes_for(self.N), "block", oversize_bytes=2 * len(frames[3]))
        dsp, rec = ring.add_reader("dsp"), ring.add_reader("recorder", oversize=True)
        big = (next(iter(FrameDecoder().feed(frames[3]))).header, frames[3])
        for _ in range(3):                        # the recorder reads nothing meanwhile
            ring.put(*big, 0)
        st = ring.stats
        assert (st.dropped_oversize, st.oversize_kept, st.oversize_not_kept) == (3, 2, 1)
        assert len(ring._side) == 2
        assert dsp.get(timeout=0) is None and dsp.lag == 0  # DSP skipped both, and holds nothing back
        for _ in range(2):
            slot = rec.get(timeout=0)
            assert bytes(slot.frame) == frames[3]
            rec.release()
        assert ring.put(*big, 0)                   # the recorder moved on: its buffers come back
        assert len(ring._side) == 1 and st.oversize_kept == 3


class TestDropLog:
    def test_first_drop_at_once_then_one_line_per_interval_with_the_count(self, caplog):
        ring = RingBuffer(2, 256)
        now = [100.0]
        drops = DropLog(ring, interval_s=10.0, clock=lambda: now[0])
        with caplog.at_level(logging.WARNING, logger="ionstream.ring"):
            drops.check()
            assert drops.lines == 0                        # nothing dropped: nothing said
            ring.stats.dropped_busy = 1
            drops.check()
            assert drops.lines == 1                        # the first one at once
            for _ in range(50):                            # a burst within the interval: silent
                ring.stats.dropped_busy += 1
                now[0] += 0.1
                drops.check()
            assert drops.lines == 1
            now[0] += 5.5                                  # 10.5 s after the first line
            drops.check()
            assert drops.lines == 2
            ring.stats.dropped_busy += 3
            ring.stats.dropped_closed += 1
            drops.flush()                                  # at the end: every pending count
            assert drops.lines == 4
        lines = [r.getMessage() for r in caplog.records]
        assert lines[0].startswith("ring: 1 frame(s) dropped on arrival") and "(1 in total)" in lines[0]
        assert lines[1].startswith("ring: 50 frame(s) dropped on arrival")
        assert "in the last 10 s (51 in total)" in lines[1]
        assert "3 frame(s) dropped on arrival" in lines[2] and "(54 in total)" in lines[2]
        assert "1 frame(s) arrived while the ring was closing" in lines[3]

    def test_readers_overwritten_frames_name_the_reader(self, caplog):
        ring = RingBuffer(2, 256, "drop-oldest")
        dsp = ring.add_reader("dsp0")
        drops = DropLog(ring)
        for seq in range(5):
            ring.put(*_small(seq), 0)
        assert dsp.get(timeout=0).header.sequence == 3  # 3 overwritten before it read them
        with caplog.at_level(logging.WARNING, logger="ionstream.ring"):
            drops.check()
        assert "3 frame(s) overwritten before a reader got them" in caplog.records[0].getMessage()
        assert "dsp0 3" in caplog.records[0].getMessage()


def _small(seq: int):
    frame = encode_scan(np.zeros(8, np.uint16), sequence=seq, scan_number=seq, device_time_ns=seq)
    return next(iter(FrameDecoder().feed(frame))).header, frame


@pytest.mark.parametrize("n", [1, 65536])
def test_slot_bytes_for_matches_the_protocol_limits(n):
    assert slot_bytes_for(n) == MAX_HEADER_SIZE + 8 * n + 8 * n + 4
