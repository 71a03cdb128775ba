"""Property tests (hypothesis) for the device-frame codec and the streaming decoder.

The oracle for arbitrary byte streams is ionstream.benchmarks.decode.ReferenceDecoder: a separate,
byte-at-a-time implementation of the decoding rules in docs/protocol.md.
"""
import struct

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from instrument.frames import (
    SAMPLE_DTYPES, SYNC, AxisKind, Calibration, FrameDecoder, FrameType, InstrumentState, Polarity, encode_scan,
    encode_status,
)
from ionstream.benchmarks.decode import ReferenceDecoder

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
calibrations = st.builds(Calibration, finite, finite, finite, finite, finite)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def scan_frames(draw, seq=None):
    dtype = draw(st.sampled_from(list(SAMPLE_DTYPES.values())))
    n = draw(st.integers(0, 24))
    samples = draw(hnp.arrays(dtype, n))
    mz = draw(st.none() | hnp.arrays(np.float64, n, elements=finite))
    kw = dict(
        sequence=draw(u32) if seq is None else seq, scan_number=draw(u32), device_time_ns=draw(st.integers(0, 2**64 - 1)),
        ms_level=draw(st.integers(0, 255)), polarity=draw(st.sampled_from(list(Polarity))),
        calibration=draw(calibrations), mz_axis=mz,
    )
    return encode_scan(samples, **kw), samples, kw


@st.composite
def status_frames(draw, seq=None):
    kw = dict(sequence=draw(u32) if seq is None else seq, device_time_ns=draw(st.integers(0, 2**64 - 1)),
              state=draw(st.sampled_from(list(InstrumentState))), error_code=draw(st.integers(0, 2**16 - 1)),
              temperature_c=draw(st.floats(width=32, allow_nan=False)), pressure_mbar=draw(st.floats(width=32, allow_nan=False)),
              dropped_scans=draw(u32), uptime_ms=draw(st.integers(0, 2**64 - 1)))
    return encode_status(**kw), kw


@st.composite
def valid_streams(draw, min_frames=1, max_frames=6):
    """(list of frame bytes) with consecutive sequence numbers, scans and status frames mixed."""
    start = draw(u32)
    n = draw(st.integers(min_frames, max_frames))
    frames = []
    for i in range(n):
        seq = (start + i) & 0xFFFFFFFF
        if draw(st.integers(0, 4)) == 0:
            frames.append(draw(status_frames(seq))[0])
        else:
            frames.append(draw(scan_frames(seq))[0])
    return frames


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def decode_chunks(chunks, decoder=None):
    decoder = decoder or FrameDecoder()
    out = [(f.header, bytes(f.raw)) for c in chunks for f in decoder.feed(c)]
    return out, decoder


def check_accounting(frames, dec):
    s = dec.stats
    assert s.bytes_in == sum(len(raw) for _, raw in frames) + s.bytes_skipped + dec.buffered
    assert s.frames == len(frames) == s.scan_frames + s.status_frames


@SETTINGS
@given(scan_frames(), st.lists(st.integers(0, 10_000), max_size=6))
def test_scan_round_trip(frame_samples_kw, cuts):
    frame, samples, kw = frame_samples_kw
    dec = FrameDecoder()
    got = []
    for chunk in split(frame, cuts):
        for f in dec.feed(chunk):
            mz = f.mz_axis()
            got.append((f.header, f.samples().copy(), None if mz is None else mz.copy(), bytes(f.raw)))
    [(h, s, mz, raw)] = got
    assert raw == frame
    assert s.dtype == samples.dtype.newbyteorder("<") and s.tobytes() == samples.tobytes()
    assert (h.sequence, h.scan_number, h.device_time_ns, h.ms_level, h.polarity, h.calibration) == (
        kw["sequence"], kw["scan_number"], kw["device_time_ns"], kw["ms_level"], kw["polarity"], kw["calibration"])
    assert h.frame_type == FrameType.SCAN and h.n_samples == len(samples)
    if kw["mz_axis"] is None:
        assert mz is None and h.axis_kind == AxisKind.TOF
    else:
        assert h.axis_kind == AxisKind.EXPLICIT and mz.tobytes() == kw["mz_axis"].tobytes()


@SETTINGS
@given(status_frames())
def test_status_round_trip(frame_kw):
    frame, kw = frame_kw
    dec = FrameDecoder()
    [(h, st_)] = [(f.header, f.status()) for f in dec.feed(frame)]
    assert h.frame_type == FrameType.STATUS and h.sequence == kw["sequence"] and h.device_time_ns == kw["device_time_ns"]
    assert (st_.state, st_.error_code, st_.dropped_scans, st_.uptime_ms) == (
        kw["state"], kw["error_code"], kw["dropped_scans"], kw["uptime_ms"])
    assert np.float32(st_.temperature_c) == np.float32(kw["temperature_c"])
    assert np.float32(st_.pressure_mbar) == np.float32(kw["pressure_mbar"])


@SETTINGS
@given(valid_streams(max_frames=8), st.lists(st.integers(0, 100_000), max_size=20))
def test_any_split_gives_the_same_frames_and_stats(frames, cuts):
    stream = b"".join(frames)
    whole, d1 = decode_chunks([stream])
    pieces, d2 = decode_chunks(split(stream, cuts))
    bytewise, d3 = decode_chunks([stream[i:i + 1] for i in range(len(stream))])
    assert [raw for _, raw in whole] == frames
    assert whole == pieces == bytewise
    assert d1.stats == d2.stats == d3.stats
    assert d1.stats.sequence_gaps == 0 and d1.stats.bytes_skipped == 0 and d1.stats.resyncs == 0


garbage = st.binary(max_size=300).filter(lambda g: SYNC not in g)


@SETTINGS
@given(valid_streams(max_frames=5), st.data())
def test_frames_embedded_in_garbage_are_all_recovered(frames, data):
    blocks = [data.draw(garbage) for _ in frames]
    stream = b"".join(g + f for g, f in zip(blocks, frames))
    cuts = data.draw(st.lists(st.integers(0, 100_000), max_size=10))
    got, dec = decode_chunks(split(stream, cuts))
    assert [raw for _, raw in got] == frames
    assert dec.stats.bytes_skipped == sum(map(len, blocks))
    assert dec.stats.resyncs == sum(1 for g in blocks if g)
    assert dec.stats.payload_crc_errors == 0 and dec.stats.sequence_gaps == 0
    check_accounting(got, dec)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_bytes_never_crash_or_hang(data, cuts):
    got, dec = decode_chunks(split(data, cuts))
    check_accounting(got, dec)
    ref = ReferenceDecoder()
    assert [(h.sequence, raw) for h, raw in got] == [(s, raw) for s, _, raw in ref.feed(data)]
    assert dec.stats.as_dict() == ref.stats


@st.composite
def hostile_streams(draw):
    """Valid frames mixed with what goes wrong on a link: flipped bits, truncations, bare sync words, noise."""
    pieces = []
    seq = draw(u32)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["frame", "frame", "flip", "truncate", "sync", "noise", "skip"]))
        frame = draw(status_frames(seq))[0] if draw(st.booleans()) else draw(scan_frames(seq))[0]
        seq = (seq + 1) & 0xFFFFFFFF
        if kind == "frame":
            pieces.append(frame)
        elif kind == "flip":
            b = bytearray(frame)
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
            pieces.append(bytes(b))
        elif kind == "truncate":
            pieces.append(frame[:draw(st.integers(1, len(frame) - 1))])
        elif kind == "sync":
            pieces.append(SYNC + draw(st.binary(max_size=12)))
        elif kind == "noise":
            pieces.append(draw(st.binary(max_size=64)))
        else:
            seq = (seq + draw(st.integers(1, 2**32 - 1))) & 0xFFFFFFFF
    return b"".join(pieces)


@settings(max_examples=150, deadline=None)
@given(hostile_streams(), st.lists(st.integers(0, 100_000), max_size=12))
def test_hostile_streams_match_the_reference_decoder(stream, cuts):
    got, dec = decode_chunks(split(stream, cuts))
    bytewise, dec1 = decode_chunks([stream[i:i + 1] for i in range(len(stream))])
    ref = ReferenceDecoder()
    expected = [(s, raw) for s, _, raw in ref.feed(stream)]
    assert [(h.sequence, raw) for h, raw in got] == expected == [(h.sequence, raw) for h, raw in bytewise]
    assert dec.stats.as_dict() == ref.stats == dec1.stats.as_dict()
    check_accounting(got, dec)


@SETTINGS
@given(valid_streams(min_frames=2, max_frames=6), st.data())
def test_one_corrupt_payload_byte(frames, data):
    with_payload = [i for i, f in enumerate(frames) if len(f) > 84]
    assume(with_payload)
    i = data.draw(st.sampled_from(with_payload))
    bad = bytearray(frames[i])
    bad[data.draw(st.integers(80, len(bad) - 5))] ^= data.draw(st.integers(1, 255))
    # The search for the next frame scans the corrupt one: a sync word inside it would be a
    # (harmless) false candidate that can wait for bytes; keep the property crisp.
    assume(SYNC not in bytes(bad[1:]))
    stream = b"".join(frames[:i]) + bytes(bad) + b"".join(frames[i + 1:])
    cuts = data.draw(st.lists(st.integers(0, 100_000), max_size=10))
    got, dec = decode_chunks(split(stream, cuts))
    assert [raw for _, raw in got] == frames[:i] + frames[i + 1:]
    s = dec.stats
    assert s.payload_crc_errors == 1 and s.header_crc_errors == 0 and s.resyncs == 1 and s.bytes_skipped == len(bad)
    if 0 < i < len(frames) - 1:
        # one frame missing; but a frame numbered 0 after a loss counts as a restart (protocol.md)
        next_is_zero = struct.unpack_from("<I", frames[i + 1], 8)[0] == 0
        assert (s.sequence_gaps, s.sequence_restarts) == ((0, 1) if next_is_zero else (1, 0))
    else:
        assert (s.sequence_gaps, s.sequence_restarts) == (0, 0)


@SETTINGS
@given(u32, st.lists(st.integers(1, 1000), min_size=1, max_size=10), st.lists(st.integers(0, 10_000), max_size=5))
def test_sequence_gaps_are_counted(start, steps, cuts):
    seqs = [start]
    for step in steps:
        seqs.append((seqs[-1] + step) & 0xFFFFFFFF)
    assume(0 not in seqs[1:])  # a 0 after anything but 2**32-1 is a restart, tested in test_frames.py
    stream = b"".join(encode_scan(np.zeros(2, np.uint16), sequence=s, scan_number=0, device_time_ns=0) for s in seqs)
    got, dec = decode_chunks(split(stream, cuts))
    assert [h.sequence for h, _ in got] == seqs
    assert dec.stats.sequence_gaps == sum(step - 1 for step in steps)
    assert dec.stats.sequence_restarts == 0
