"""Pixel positions in device frames (docs/protocol.md "Header extensions", instrument/imaging.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instrument.frames import Calibration, FrameDecoder, FrameType, encode_scan, encode_status, restamp
from instrument.imaging import (
    ExtensionError, PixelPosition, Raster, TAG_PIXEL, encode_pixel, encode_record, frame_position, parse_records,
)
from ionstream.benchmarks.decode import ReferenceDecoder

from test_frames_doc import examples

CAL = Calibration(1000.0, 0.5, 0.0, 0.5, 0.0)
RASTER = Raster(64, 48, 10.0, 12.5)


def _pixel_frame(x, y, seq=1, samples=None, **pos):
    samples = np.array([0, 1, 1000, 65535], np.uint16) if samples is None else samples
    ext = encode_pixel(PixelPosition(x, y, RASTER, **pos))
    return encode_scan(samples, sequence=seq, scan_number=seq, device_time_ns=10**9 + seq, calibration=CAL,
                       header_extension=ext)


def _decode_all(stream, chunk):
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        for f in dec.feed(stream[i:i + chunk]):
            out.append((f.header, frame_position(f), f.samples().copy() if f.header.frame_type == FrameType.SCAN
                        else None))
    return dec, out


class TestPixelExtension:
    def test_round_trip_through_the_decoder_in_any_chunking(self):
        stream = b"".join([_pixel_frame(3, 7, 1), encode_status(sequence=2), _pixel_frame(63, 47, 3, z=2, region=5),
                           encode_scan(np.arange(8, dtype=np.uint16), sequence=4, scan_number=4, device_time_ns=5)])
        for chunk in (1, 7, len(stream)):
            dec, got = _decode_all(stream, chunk)
            assert dec.stats.frames == 4 and dec.stats.bytes_skipped == 0 and dec.stats.bad_headers == 0
            (h1, p1, s1), (_, p2, _), (h3, p3, _), (h4, p4, s4) = got
            assert h1.header_size == 112 and h4.header_size == 80
            assert p1 == PixelPosition(3, 7, RASTER)
            assert p2 is None  # STATUS
            assert p3 == PixelPosition(63, 47, RASTER, z=2, region=5)
            assert p4 is None  # an ordinary scan
            assert s1.tolist() == [0, 1, 1000, 65535] and s4.tolist() == list(range(8))

    def test_a_v1_reader_that_knows_no_extension_reads_the_scan(self):
        """Backward compatibility: the independent reference decoder (docs only) delivers the frame."""
        raw = _pixel_frame(1, 2)
        ref = ReferenceDecoder()
        frames = ref.feed(raw)
        assert [(seq, t) for seq, t, _ in frames] == [(1, 1)] and ref.stats["bytes_skipped"] == 0
        assert bytes(frames[0][2]) == raw

    def test_worked_example_in_the_protocol_document(self):
        data, _ = examples()["pixel_scan"]
        assert data == _pixel_frame_doc()
        dec, [(h, pos, samples)] = _decode_all(data, 1)
        assert pos == PixelPosition(3, 7, Raster(64, 64, 10.0, 10.0))
        assert h.header_size == 112 and samples.tolist() == [0, 1, 1000, 65535]

    def test_restamp_keeps_an_extended_header_valid(self):
        """Regression: restamp wrote the CRC at byte 76, over the extension (a header CRC error)."""
        frame = bytearray(_pixel_frame(5, 6, seq=1))
        restamp(frame, sequence=9, scan_number=42, device_time_ns=123)
        dec, [(h, pos, _)] = _decode_all(bytes(frame), len(frame))
        assert dec.stats.header_crc_errors == 0
        assert (h.sequence, h.scan_number, h.device_time_ns) == (9, 42, 123)
        assert pos == PixelPosition(5, 6, RASTER)

    def test_unknown_records_are_skipped_and_the_first_pixel_record_wins(self):
        ext = (encode_record(77, b"abc") + encode_pixel(PixelPosition(1, 1, RASTER))
               + encode_pixel(PixelPosition(2, 2, RASTER)))
        raw = encode_scan(np.zeros(4, np.uint16), sequence=0, scan_number=0, device_time_ns=0, header_extension=ext)
        _, [(_, pos, _)] = _decode_all(raw, len(raw))
        assert pos == PixelPosition(1, 1, RASTER)
        assert set(parse_records(ext)) == {77, TAG_PIXEL}

    def test_inconsistent_pixel_record_means_no_position(self):
        body = bytearray(encode_pixel(PixelPosition(1, 1, RASTER)))
        body[4:8] = (64).to_bytes(4, "little")  # x = width: outside the raster
        raw = encode_scan(np.zeros(4, np.uint16), sequence=0, scan_number=0, device_time_ns=0,
                          header_extension=bytes(body))
        _, [(_, pos, _)] = _decode_all(raw, len(raw))
        assert pos is None

    def test_raises_on_positions_outside_the_raster(self):
        with pytest.raises(ExtensionError, match="outside the 64x48 raster"):
            PixelPosition(64, 0, RASTER)
        with pytest.raises(ExtensionError, match="at least 1x1"):
            Raster(0, 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_records_never_raises_on_arbitrary_bytes(data):
    records = parse_records(data)
    assert all(isinstance(k, int) and 0 < k <= 0xFFFF for k in records)


def _pixel_frame_doc() -> bytes:
    ext = encode_pixel(PixelPosition(3, 7, Raster(64, 64, 10.0, 10.0)))
    return encode_scan(np.array([0, 1, 1000, 65535], np.uint16), sequence=1, scan_number=1, device_time_ns=10**9,
                       calibration=CAL, header_extension=ext)
