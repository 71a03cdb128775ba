"""Device frames: encoders and the streaming decoder (unit tests). Property tests: test_frames_props.py."""
import math
import struct
import zlib

import numpy as np
import pytest

from instrument.frames import (
    HEADER_SIZE, MAX_HEADER_SIZE, STATUS_PAYLOAD_SIZE, SYNC, AxisKind, Calibration, DecodedFrame, DecoderStats,
    FrameDecoder, FrameType, InstrumentState, InstrumentStatus, Polarity, SampleType, encode_scan,
    encode_status, pack_header,
)


def scan(seq, n=16, dtype=np.uint16, **kw):
    samples = (np.arange(n) + seq).astype(dtype)
    kw.setdefault("scan_number", seq)
    kw.setdefault("device_time_ns", seq * 1000)
    return encode_scan(samples, sequence=seq, **kw)


def decode_all(stream, chunk=None, decoder=None):
    """[(header, raw bytes, samples copy or status)] read inside the loop, as the views require."""
    decoder = decoder or FrameDecoder()
    chunk = chunk or max(1, len(stream))
    out = []
    for i in range(0, len(stream), chunk):
        for f in decoder.feed(stream[i:i + chunk]):
            body = f.samples().copy() if f.header.frame_type == FrameType.SCAN else f.status()
            out.append((f.header, bytes(f.raw), body))
    return out, decoder.stats


class TestEncode:
    def test_header_is_80_bytes_little_endian_with_crc(self):
        frame = scan(7, n=4)
        assert frame[:4] == SYNC == bytes.fromhex("a55a4953")
        assert len(frame) == HEADER_SIZE + 8 + 4
        assert frame[4] == 1 and frame[5] == FrameType.SCAN
        assert struct.unpack_from("<H", frame, 6)[0] == 80
        assert struct.unpack_from("<I", frame, 8)[0] == 7
        assert struct.unpack_from("<I", frame, 76)[0] == zlib.crc32(frame[:76])
        assert struct.unpack_from("<I", frame, 88)[0] == zlib.crc32(frame[80:88])

    def test_status_frame_layout(self):
        frame = encode_status(sequence=3, device_time_ns=5, state=InstrumentState.ERROR, error_code=0x1234,
                              temperature_c=35.5, pressure_mbar=2.5e-7, dropped_scans=9, uptime_ms=123456)
        assert len(frame) == HEADER_SIZE + STATUS_PAYLOAD_SIZE + 4 == 108
        assert frame[5] == FrameType.STATUS and frame[26] == SampleType.NONE
        payload = frame[80:104]
        assert payload[0] == InstrumentState.ERROR and payload[1] == 0
        assert struct.unpack_from("<HIQff", payload, 2)[:4] == (0x1234, 9, 123456, 35.5)

    def test_unsupported_dtype_is_refused_by_name(self):
        with pytest.raises(ValueError, match="uint16"):
            encode_scan(np.zeros(3, np.uint8), sequence=0, scan_number=0, device_time_ns=0)

    def test_axis_length_must_match(self):
        with pytest.raises(ValueError):
            encode_scan(np.zeros(3, np.uint16), sequence=0, scan_number=0, device_time_ns=0, mz_axis=np.zeros(4))


class TestFrameDecoder:
    def test_scan_round_trip_all_fields(self):
        cal = Calibration(t0_ns=12.5, dt_ns=0.25, c0=0.1, c1=0.3, c2=1e-5)
        frame = scan(42, n=100, dtype=np.float32, scan_number=7, device_time_ns=2**63 + 5, ms_level=2,
                     polarity=Polarity.NEGATIVE, calibration=cal)
        [(h, raw, samples)], stats = decode_all(frame)
        assert raw == frame
        assert (h.frame_type, h.sequence, h.scan_number, h.device_time_ns, h.ms_level, h.polarity) == (
            FrameType.SCAN, 42, 7, 2**63 + 5, 2, Polarity.NEGATIVE)
        assert (h.sample_type, h.axis_kind, h.n_samples, h.payload_size, h.calibration) == (
            SampleType.FLOAT32, AxisKind.TOF, 100, 400, cal)
        assert h.header_size == 80 and h.frame_size == len(frame) and h.version == 1
        np.testing.assert_array_equal(samples, (np.arange(100) + 42).astype(np.float32))
        assert stats == DecoderStats(frames=1, scan_frames=1, bytes_in=len(frame))

    def test_explicit_axis(self):
        mz = np.linspace(100.0, 200.0, 10)
        frame = encode_scan(np.arange(10, dtype=np.int32), sequence=0, scan_number=0, device_time_ns=0, mz_axis=mz)
        dec = FrameDecoder()
        [f] = list_inside(dec, frame, lambda f: (f.header.axis_kind, f.mz_axis().copy(), f.samples().copy()))
        assert f[0] == AxisKind.EXPLICIT
        np.testing.assert_array_equal(f[1], mz)
        np.testing.assert_array_equal(f[2], np.arange(10))

    def test_views_are_zero_copy_into_the_callers_chunk(self):
        chunk = bytearray(scan(0, n=64) + scan(1, n=64))
        dec = FrameDecoder()
        for f in dec.feed(chunk):
            s = f.samples()
            assert isinstance(f, DecodedFrame) and not s.flags.owndata
            assert f.mz_axis() is None
            before = int(s[0])
            chunk[HEADER_SIZE + f.header.sequence * len(chunk) // 2] ^= 1
            assert int(s[0]) != before  # the array is a view of the chunk itself

    def test_status_frame(self):
        frame = encode_status(sequence=0, state=InstrumentState.IDLE, temperature_c=21.25, uptime_ms=10)
        dec = FrameDecoder()
        [st] = list_inside(dec, frame, lambda f: f.status())
        assert isinstance(st, InstrumentStatus)
        assert (st.state, st.error_code, st.dropped_scans, st.uptime_ms, st.temperature_c) == (
            InstrumentState.IDLE, 0, 0, 10, 21.25)
        assert math.isnan(st.pressure_mbar)
        assert dec.stats.status_frames == 1 and dec.stats.scan_frames == 0

    def test_status_of_a_scan_frame_is_an_error(self):
        dec = FrameDecoder()
        for f in dec.feed(scan(0)):
            with pytest.raises(ValueError):
                f.status()
        for f in dec.feed(encode_status(sequence=1)):
            with pytest.raises(ValueError, match="STATUS"):
                f.samples()
            assert f.mz_axis() is None

    def test_status_frame_scan_only_fields_read_as_zero(self):
        """docs/protocol.md: decoders ignore the SCAN-only fields of a STATUS frame. An emitter
        that leaves junk there (ms_level 3, polarity 2, a calibration, n_samples 7, dtype 9,
        axis 1) gives the same decoded header as one that writes zeros."""
        payload = encode_status(sequence=4)[80:104]
        junk = pack_header(frame_type=FrameType.STATUS, sequence=4, ms_level=3, polarity=Polarity.NEGATIVE,
                           sample_type=9, axis_kind=1, n_samples=7, payload_size=len(payload),
                           calibration=Calibration(1.0, 2.0, 3.0, 4.0, 5.0))
        frame = junk + payload + struct.pack("<I", zlib.crc32(payload))
        [(h, _, st)] = decode_all(frame)[0]
        [(clean, _, _)] = decode_all(encode_status(sequence=4))[0]
        assert h == clean
        assert (h.ms_level, h.polarity, h.sample_type, h.axis_kind, h.n_samples) == (
            0, Polarity.UNKNOWN, SampleType.NONE, AxisKind.TOF, 0)
        assert h.calibration == Calibration(0.0, 0.0, 0.0, 0.0, 0.0)
        assert st.state == InstrumentState.ACQUIRING

    def test_unknown_status_state_is_kept_as_int(self):
        frame = bytearray(encode_status(sequence=0))
        frame[80] = 200
        frame[104:108] = struct.pack("<I", zlib.crc32(frame[80:104]))
        [st] = list_inside(FrameDecoder(), bytes(frame), lambda f: f.status())
        assert st.state == 200

    def test_one_byte_at_a_time_equals_whole(self):
        stream = b"".join(scan(i, n=50) for i in range(5)) + encode_status(sequence=5) + scan(6)
        whole, s1 = decode_all(stream)
        bytewise, s2 = decode_all(stream, chunk=1)
        assert [(h, r) for h, r, _ in whole] == [(h, r) for h, r, _ in bytewise]
        assert s1 == s2 and s1.frames == 7 and s1.status_frames == 1

    def test_garbage_between_frames_is_skipped_and_counted(self):
        garbage = b"\x00noise\xa5\x5a\x49"  # ends with a sync prefix that turns out not to be one
        stream = garbage + scan(0) + garbage + scan(1) + garbage
        frames, stats = decode_all(stream)
        assert [h.sequence for h, _, _ in frames] == [0, 1]
        # the trailing 3 bytes are a possible sync prefix: held back, not yet skipped
        assert stats.bytes_skipped == 3 * len(garbage) - 3
        assert stats.resyncs == 3
        dec = FrameDecoder()
        decode_all(stream, decoder=dec)
        assert dec.buffered == 3

    @pytest.mark.parametrize("tail", [b"\xa5\x00", b"\xa5\x5a\x00", b"\xa5\x5a\x49\x00", b"\xa5", b"\xa5\x5a\x49"])
    def test_a_broken_sync_prefix_is_decided_as_soon_as_it_breaks(self, tail):
        whole, s1 = decode_all(scan(0) + tail)
        bytewise, s2 = decode_all(scan(0) + tail, chunk=1)
        assert s1 == s2 and len(whole) == len(bytewise) == 1
        complete_prefix = SYNC.startswith(tail)
        assert s1.bytes_skipped == (0 if complete_prefix else len(tail))

    def test_payload_corruption(self):
        bad = bytearray(scan(1, n=32))
        bad[100] ^= 0x01
        stream = scan(0, n=32) + bytes(bad) + scan(2, n=32)
        for chunk in (1, 13, len(stream)):
            frames, stats = decode_all(stream, chunk)
            assert [h.sequence for h, _, _ in frames] == [0, 2]
            assert stats.payload_crc_errors == 1 and stats.resyncs == 1 and stats.bytes_skipped == len(bad)
            assert stats.sequence_gaps == 1

    def test_header_corruption(self):
        bad = bytearray(scan(1))
        bad[20] ^= 0x80
        frames, stats = decode_all(scan(0) + bytes(bad) + scan(2))
        assert [h.sequence for h, _, _ in frames] == [0, 2]
        assert stats.header_crc_errors == 1 and stats.bad_headers == 0 and stats.bytes_skipped == len(bad)

    def test_truncated_frame_followed_by_a_frame(self):
        """A device reset mid-frame: the frames that start inside the claimed length are found
        once that length has arrived (the decoder cannot know the frame is short before)."""
        truncated = scan(0, n=200)[:150]  # claims 484 bytes
        stream = truncated + b"".join(scan(i, n=8) for i in range(4))  # 4 x 100 bytes
        frames, stats = decode_all(stream, chunk=7)
        assert [h.sequence for h, _, _ in frames] == [0, 1, 2, 3]
        assert stats.payload_crc_errors == 1 and stats.bytes_skipped == 150
        assert stats.sequence_restarts == 0  # the truncated frame never counted

    @pytest.mark.parametrize("offset,value,counter", [
        (4, 2, "bad_headers"),              # version 2
        (5, 9, "bad_headers"),              # unknown frame type
        (25, 7, "bad_headers"),             # polarity
        (26, 9, "bad_headers"),             # sample dtype
        (27, 3, "bad_headers"),             # axis kind
        (28, 17, "bad_headers"),            # n_samples inconsistent with payload_size
    ])
    def test_impossible_fields_with_valid_crc(self, offset, value, counter):
        bad = bytearray(scan(1))
        bad[offset] = value
        bad[76:80] = struct.pack("<I", zlib.crc32(bad[:76]))
        frames, stats = decode_all(scan(0) + bytes(bad) + scan(2))
        assert [h.sequence for h, _, _ in frames] == [0, 2]
        assert getattr(stats, counter) == 1 and stats.header_crc_errors == 0

    def test_header_size_bounds(self):
        for hsize in (79, MAX_HEADER_SIZE + 1):
            bad = bytearray(scan(1))
            bad[6:8] = struct.pack("<H", hsize)
            frames, stats = decode_all(scan(0) + bytes(bad) + scan(2))
            assert [h.sequence for h, _, _ in frames] == [0, 2] and stats.bad_headers == 1

    @pytest.mark.parametrize("extra", [1, 2, 3, 5, 943])
    def test_header_size_not_a_multiple_of_4_is_a_bad_header(self, extra):
        """docs/protocol.md: header_size is 80..1024 and a multiple of 4. A header that is
        otherwise perfect (CRC right at header_size - 4) but 81 bytes long is refused."""
        payload = np.arange(5, dtype=np.uint16).tobytes()
        body = bytearray(pack_header(frame_type=FrameType.SCAN, sequence=1, n_samples=5, payload_size=10)[:76])
        body[6:8] = struct.pack("<H", 80 + extra)
        body += b"\x00" * extra
        header = bytes(body) + struct.pack("<I", zlib.crc32(body))
        bad = header + payload + struct.pack("<I", zlib.crc32(payload))
        frames, stats = decode_all(scan(0) + bad + scan(2))
        assert [h.sequence for h, _, _ in frames] == [0, 2]
        assert stats.bad_headers == 1 and stats.header_crc_errors == 0 and stats.bytes_skipped == len(bad)

    def test_pack_header_refuses_an_extension_that_breaks_the_size_rule(self):
        with pytest.raises(ValueError, match="multiple of 4"):
            pack_header(frame_type=FrameType.SCAN, sequence=0, extension=b"\x01")
        with pytest.raises(ValueError, match="80..1024"):
            pack_header(frame_type=FrameType.SCAN, sequence=0, extension=bytes(948))
        assert len(pack_header(frame_type=FrameType.SCAN, sequence=0, extension=bytes(944))) == MAX_HEADER_SIZE

    def test_payload_larger_than_max_is_refused_before_waiting_for_it(self):
        frame = scan(0, n=1000)
        dec = FrameDecoder(max_payload_size=1999)
        out = list_inside(dec, frame[:HEADER_SIZE], lambda f: f)
        assert out == [] and dec.stats.bad_headers == 1 and dec.buffered == 0
        assert list_inside(FrameDecoder(max_payload_size=2000), frame, lambda f: f.header.n_samples) == [1000]

    def test_larger_header_from_a_compatible_newer_firmware(self):
        samples = np.arange(5, dtype=np.uint16)
        payload = samples.tobytes()
        header = pack_header(frame_type=FrameType.SCAN, sequence=3, n_samples=5, payload_size=10,
                             extension=b"\x01" * 16)
        frame = header + payload + struct.pack("<I", zlib.crc32(payload))
        for chunk in (1, len(frame)):
            frames, stats = decode_all(frame + scan(4), chunk)
            (h, raw, got), (h4, _, _) = frames
            assert h.header_size == 96 and h.frame_size == len(frame) and raw == frame
            np.testing.assert_array_equal(got, samples)
            assert h4.sequence == 4 and stats.bytes_skipped == 0 and stats.frames == 2

    def test_sequence_gaps_wrap_and_restarts(self):
        seqs = [5, 6, 9, 10, 2**32 - 1, 0, 1, 0, 1, 1, 3]
        frames, stats = decode_all(b"".join(scan(s) for s in seqs))
        assert len(frames) == len(seqs)
        # 6->9: 2 missing; 10->2**32-1: 2**32-12 missing (forward jump < 2**31? no: a restart);
        # 2**32-1 -> 0: wrap, no gap; 1 -> 0: restart; 1 -> 1: repeat = restart; 1 -> 3: 1 missing.
        assert stats.sequence_gaps == 3
        assert stats.sequence_restarts == 3

    def test_reset_drops_the_partial_frame_and_keeps_sequence(self):
        dec = FrameDecoder()
        partial = scan(1)[:50]
        assert list_inside(dec, scan(0) + partial, lambda f: f.header.sequence) == [0]
        assert dec.buffered == 50
        dec.reset()
        assert dec.buffered == 0 and dec.stats.bytes_skipped == 50
        assert list_inside(dec, scan(3), lambda f: f.header.sequence) == [3]
        assert dec.stats.sequence_gaps == 2  # 1 and 2 were lost while away
        assert dec.stats.resyncs == 0

    def test_resync_runs_at_stream_ends_and_across_reset(self):
        """docs/protocol.md, Decoder behaviour: a run of skipped bytes is one resync, counted
        when its first byte is passed over (start and end of a stream included); reset()
        drops the partial frame as skipped bytes, not a resync, and ends the open run."""
        dec = FrameDecoder()
        list_inside(dec, b"junk" + scan(0) + b"more junk", lambda f: f)  # a run before, a run after
        assert dec.stats.resyncs == 2 and dec.stats.bytes_skipped == 13 and dec.buffered == 0
        list_inside(dec, b"still junk", lambda f: f)                    # the same run goes on
        assert dec.stats.resyncs == 2
        dec.reset()
        list_inside(dec, b"junk after a reconnect", lambda f: f)        # a new run
        assert dec.stats.resyncs == 3
        list_inside(dec, scan(1)[:40], lambda f: f)                     # the stream stops mid-frame
        assert dec.stats.resyncs == 3 and dec.buffered == 40
        skipped = dec.stats.bytes_skipped
        dec.reset()
        assert dec.stats.resyncs == 3 and dec.stats.bytes_skipped == skipped + 40 and dec.buffered == 0

    def test_accepts_bytes_bytearray_memoryview_and_typed_buffers(self):
        frame = scan(0, n=8)
        padded = frame + b"\x00" * (-len(frame) % 4)
        for data in (frame, bytearray(frame), memoryview(frame), np.frombuffer(padded, np.uint32)):
            dec = FrameDecoder()
            assert list_inside(dec, data, lambda f: f.header.sequence) == [0]

    def test_empty_feed(self):
        dec = FrameDecoder()
        assert list(dec.feed(b"")) == [] and dec.stats == DecoderStats()

    def test_internal_buffer_is_reused_in_steady_state(self):
        frames = b"".join(scan(i, n=1000) for i in range(40))
        dec = FrameDecoder()
        n = 0
        buffers = set()
        for i in range(0, len(frames), 4096):
            for _ in dec.feed(frames[i:i + 4096]):
                n += 1
            buffers.add(id(dec._buf))
        assert n == 40 and len(buffers) <= 2  # allocated once (empty initial + first growth)

    def test_views_of_a_straddling_frame_survive_buffer_growth(self):
        dec = FrameDecoder()
        small, big = scan(0, n=10), scan(1, n=5000)
        held = []
        stream = small + big
        for i in range(0, len(stream), 100):
            for f in dec.feed(stream[i:i + 100]):
                held.append(f.samples())  # holding the view must not make the decoder fail
        assert len(held) == 2 and dec.stats.frames == 2


def list_inside(dec, data, fn):
    return [fn(f) for f in dec.feed(data)]
