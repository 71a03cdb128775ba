"""docs/capture.md: the worked hex examples decode, and the writer's framing matches them byte for byte."""
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from instrument.capture import (
    FILE_HEADER, FORMAT_MINOR, KIND_ZBLOCK, MAGIC, RECORD_HEADER, RECORD_MARKER, ZENTRY, CaptureReader, CaptureWriter,
)
from instrument.frames import Calibration, encode_scan, encode_status

DOCS = Path(__file__).resolve().parents[2] / "docs"
CAPTURE_MD = DOCS / "capture.md"

pytestmark = pytest.mark.skipif(not CAPTURE_MD.is_file(), reason="docs/ is not part of an installed-only layout")

SCAN = encode_scan(np.array([0, 1, 1000, 65535], np.uint16), sequence=1, scan_number=1, device_time_ns=10**9,
                   calibration=Calibration(1000.0, 0.5, 0.0, 0.5, 0.0))
STATUS = encode_status(sequence=2, device_time_ns=1_050_000_000, scan_number=1, state=2, dropped_scans=3,
                       uptime_ms=3_600_000, temperature_c=24.5, pressure_mbar=2.0 ** -20)
T = 1_700_000_000_000_000_000


def examples() -> dict[str, bytes]:
    """{name: bytes} from the ```hex blocks after <!-- example: NAME -->; offsets must follow on."""
    text = CAPTURE_MD.read_text(encoding="utf-8")
    found = {}
    for name, block in re.findall(r"<!-- example: (\w+) -->\s*```hex\n(.*?)```", text, re.S):
        data = bytearray()
        for line in block.splitlines():
            code = line.split("#", 1)[0]
            if not code.strip():
                continue
            offset, _, hexbytes = code.partition(":")
            assert int(offset, 16) == len(data), f"{name}: offset {offset} does not follow on"
            data += bytes.fromhex(hexbytes)
        found[name] = bytes(data)
    return found


def test_doc_has_the_examples_and_crc_check_value():
    ex = examples()
    assert set(ex) >= {"file", "zblock"}
    assert len(ex["file"]) == 297 and len(ex["zblock"]) == 166
    assert "0xCBF43926" in CAPTURE_MD.read_text(encoding="utf-8") and zlib.crc32(b"123456789") == 0xCBF43926


def test_file_example_reads(tmp_path):
    path = tmp_path / "example.isc"
    path.write_bytes(examples()["file"])
    with CaptureReader(path) as r:
        got = [(t, bytes(f)) for t, f in r]
        assert r.header["description"] == {"source": {"url": "sim://"}} and r.version == (1, 0)
        assert got == [(T, SCAN)]
        assert r.end == {"records": 1, "frame_bytes": 92} and r.torn_tail_bytes == 0
    assert examples()["file"][0x8F:0x8F + 92] == SCAN


def test_file_example_cut_anywhere_after_the_header(tmp_path):
    data = examples()["file"]
    path = tmp_path / "cut.isc"
    for cut in range(0x77, len(data)):
        path.write_bytes(data[:cut])
        with CaptureReader(path) as r:
            got = [bytes(f) for _, f in r]
        if cut >= 0xEF:
            assert got == [SCAN] and r.torn_tail_bytes == cut - 0xEF
        else:
            assert got == [] and r.torn_tail_bytes == cut - 0x77


def test_zblock_example_reads_with_any_header(tmp_path):
    """The ZBLOCK record appended to the file example's header decodes to the two protocol.md frames."""
    data = examples()["file"][:0x77] + examples()["zblock"]
    (tmp_path / "z.isc").write_bytes(data)
    with CaptureReader(tmp_path / "z.isc") as r:
        assert [(t, bytes(f)) for t, f in r] == [(T, SCAN), (T + 50_000_000, STATUS)]
        assert r.torn_tail_bytes == 0 and r.end is None


def test_zblock_example_framing_and_content():
    import zstandard

    rec = examples()["zblock"]
    _, kind, flags, count, length, t = RECORD_HEADER.unpack_from(rec)
    assert (kind, flags, count, length, t) == (KIND_ZBLOCK, 0, 2, 138, T)
    body = rec[24:24 + length]
    raw = zstandard.ZstdDecompressor().decompress(body)
    assert raw == ZENTRY.pack(T, 92) + SCAN + ZENTRY.pack(T + 50_000_000, 108) + STATUS


def test_writer_framing_matches_the_document(tmp_path):
    """Same header fields, JSON and record bytes as the example when given the same content."""
    doc = examples()["file"]
    path = tmp_path / "w.isc"
    with CaptureWriter(path, {"source": {"url": "sim://"}}) as w:
        w.append(SCAN, T)
    written = path.read_bytes()
    magic, major, minor, flags, n = FILE_HEADER.unpack_from(written)
    assert (magic, major, minor, flags) == (MAGIC, 1, FORMAT_MINOR, 0)
    assert struct.unpack_from("<I", written, 20 + n)[0] == zlib.crc32(written[:20 + n])
    # the FRAME record is byte-identical to the document's (after each file's header)
    assert written[24 + n:24 + n + 120] == doc[0x77:0x77 + 120]
    assert written[24 + n + 120:24 + n + 124] == RECORD_MARKER
