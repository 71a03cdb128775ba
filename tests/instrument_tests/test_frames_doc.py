"""docs/protocol.md: the worked hex examples decode, and the encoders produce exactly those bytes."""
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from instrument.frames import (
    AxisKind, Calibration, FrameDecoder, FrameType, InstrumentState, Polarity, SampleType, encode_scan,
    encode_status,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROTOCOL = DOCS / "protocol.md"

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ is not part of an installed-only layout")


def examples() -> dict[str, tuple[bytes, list[tuple[int, bytes, str]]]]:
    """{name: (frame bytes, [(offset, bytes, comment)])} from the ```hex blocks after <!-- example: NAME -->."""
    text = PROTOCOL.read_text(encoding="utf-8")
    found = {}
    for name, block in re.findall(r"<!-- example: (\w+) -->\s*```hex\n(.*?)```", text, re.S):
        data, lines = bytearray(), []
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if not code.strip():
                continue
            offset, _, hexbytes = code.partition(":")
            chunk = bytes.fromhex(hexbytes)
            assert int(offset, 16) == len(data), f"{name}: offset {offset} does not follow on"
            lines.append((len(data), chunk, comment.strip()))
            data += chunk
        found[name] = (bytes(data), lines)
    return found


def test_doc_has_both_examples():
    assert set(examples()) >= {"scan", "status"}


def test_crc_check_value_in_doc():
    assert "0xCBF43926" in PROTOCOL.read_text(encoding="utf-8")
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_examples_decode_from_the_document():
    ex = examples()
    stream = ex["scan"][0] + ex["status"][0]
    for chunk in (1, 5, len(stream)):
        dec = FrameDecoder()
        got = []
        for i in range(0, len(stream), chunk):
            for f in dec.feed(stream[i:i + chunk]):
                got.append((f.header, f.samples().tolist() if f.header.frame_type == FrameType.SCAN else f.status()))
        (scan_h, samples), (status_h, status) = got
        assert dec.stats.frames == 2 and dec.stats.bytes_skipped == 0 and dec.stats.sequence_gaps == 0
        assert (scan_h.frame_type, scan_h.sequence, scan_h.scan_number, scan_h.device_time_ns) == (
            FrameType.SCAN, 1, 1, 1_000_000_000)
        assert (scan_h.ms_level, scan_h.polarity, scan_h.sample_type, scan_h.axis_kind, scan_h.n_samples) == (
            1, Polarity.POSITIVE, SampleType.UINT16, AxisKind.TOF, 4)
        assert scan_h.calibration == Calibration(1000.0, 0.5, 0.0, 0.5, 0.0)
        assert samples == [0, 1, 1000, 65535]
        assert (status_h.frame_type, status_h.sequence, status_h.scan_number, status_h.device_time_ns) == (
            FrameType.STATUS, 2, 1, 1_050_000_000)
        assert (status.state, status.error_code, status.dropped_scans, status.uptime_ms) == (
            InstrumentState.ACQUIRING, 0, 3, 3_600_000)
        assert status.temperature_c == 24.5 and status.pressure_mbar == 2.0**-20


def test_encoders_produce_the_documented_bytes():
    ex = examples()
    assert encode_scan(np.array([0, 1, 1000, 65535], np.uint16), sequence=1, scan_number=1,
                       device_time_ns=10**9, calibration=Calibration(1000.0, 0.5, 0.0, 0.5, 0.0)) == ex["scan"][0]
    assert encode_status(sequence=2, device_time_ns=1_050_000_000, scan_number=1, state=InstrumentState.ACQUIRING,
                         dropped_scans=3, uptime_ms=3_600_000, temperature_c=24.5,
                         pressure_mbar=2**-20) == ex["status"][0]


def test_documented_crc_values_and_field_offsets():
    """The annotations say what the bytes are; check the CRC values and the integer fields they state."""
    header_fields = {"version": (4, "<B"), "frame_type": (5, "<B"), "header_size": (6, "<H"), "sequence": (8, "<I"),
                     "scan_number": (12, "<I"), "device_time_ns": (16, "<Q"), "n_samples": (28, "<I"),
                     "payload_size": (32, "<I")}
    for name, (frame, lines) in examples().items():
        for offset, chunk, comment in lines:
            m = re.match(r"(\w+) = (\d+)\b", comment)
            if m and m.group(1) in header_fields:
                assert header_fields[m.group(1)][0] == offset, f"{name}: {comment}"
                assert struct.unpack(header_fields[m.group(1)][1], chunk)[0] == int(m.group(2)), f"{name}: {comment}"
            m = re.search(r"CRC-32 of bytes (\d+)\.\.(\d+) = 0x([0-9A-F]{8})", comment)
            if m:
                lo, hi, value = int(m.group(1)), int(m.group(2)), int(m.group(3), 16)
                assert zlib.crc32(frame[lo:hi + 1]) == value == struct.unpack("<I", chunk)[0], f"{name}: {comment}"


def test_documented_counters_are_the_decoders():
    """protocol.md's counter table names exactly DecoderStats' fields, and every one it says is
    a status figure is in docs/wire.md's stats table under the same name."""
    from instrument.frames import DecoderStats

    text = PROTOCOL.read_text(encoding="utf-8")
    block = text.split("| Counter | Counts |")[1].split("\n\n")[0]
    documented = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in block.splitlines()[2:])))
    assert documented == set(DecoderStats().as_dict())
    wire_md = (DOCS / "wire.md").read_text(encoding="utf-8")
    stats_table = wire_md.split("| stat | type | sent | meaning |")[1].split("\n\n")[0]
    in_status = set(re.findall(r"^\| `(\w+)`", stats_table, re.M)) | set(re.findall(r"`(\w+)`", stats_table))
    assert documented - {"bytes_in", "scan_frames", "status_frames"} <= in_status


def test_documented_header_size_rule_is_the_decoders():
    """protocol.md: 80..1024 and a multiple of 4, as valid_header_size states it (test_frames.py
    checks that the decoder refuses 81..83, 85 and 1023 as bad headers)."""
    from instrument.frames import valid_header_size

    text = PROTOCOL.read_text(encoding="utf-8")
    assert "80..1024 and a multiple of 4" in text
    for size in range(0, 1100):
        assert valid_header_size(size) == (80 <= size <= 1024 and size % 4 == 0), size
