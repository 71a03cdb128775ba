"""`ionstream bench decode`: device-frame decode throughput, against a plain reference decoder.

Figures (``--json``): decode_GBps (clean stream, one core), decode_corrupt_GBps (1 % of the
frames corrupted), reference_GBps and reference_corrupt_GBps (ReferenceDecoder below, same
run), ratio = decode_GBps / reference_GBps, crc32_GBps (zlib.crc32 alone over the stream:
the ceiling for any decoder that checks every byte) and decode_vs_crc32, frame counts.

Builds a stream of SCAN frames (uint16, ``--samples`` per frame, random counts as a TOF
digitiser gives them), feeds it in ``--chunk`` byte chunks (1 MiB: what a serial/USB
reader hands over) to ``instrument.frames.FrameDecoder`` and to ``ReferenceDecoder``
below, and checks that both find the same frames. Then the same with 1 % of the frames
corrupted (one flipped payload byte each). Figures are GB/s of stream on one core.

``ReferenceDecoder`` is deliberately simple and independent of the real decoder: it keeps
an immutable ``bytes`` buffer (concatenating each chunk), reads header fields by explicit
byte offsets, copies every frame, and on any failure moves on by exactly one byte. The
tests (tests/instrument_tests/test_frames_props.py) use it as the oracle for the real decoder.
"""
from __future__ import annotations

import argparse
import gc
import time
import zlib

import numpy as np

HELP = "device-frame decode throughput (clean and 1 %% corrupt) vs a plain reference decoder"

SYNC = b"\xa5\x5a\x49\x53"
_ITEMSIZE = {1: 2, 2: 2, 3: 4, 4: 4, 5: 8}   # sample_dtype code -> bytes per sample
_STATUS_MIN = 24


def _u(buf: bytes, offset: int, size: int) -> int:
    return int.from_bytes(buf[offset:offset + size], "little")


class ReferenceDecoder:
    """Byte-at-a-time reference decoder (slow on purpose: obviously correct, not fast).

    ``feed(chunk)`` returns a list of ``(sequence, frame_type, raw_bytes)`` for the frames it
    completes. ``stats`` has the same counters, with the same definitions, as
    ``instrument.frames.DecoderStats`` (protocol.md, "Decoder behaviour").
    """

    def __init__(self, max_payload_size: int = 64 * 1024 * 1024):
        self.max_payload_size = max_payload_size
        self.buf = b""
        self.skipping = False
        self.last_seq = None
        self.stats = dict(frames=0, scan_frames=0, status_frames=0, bytes_in=0, bytes_skipped=0,
                          resyncs=0, header_crc_errors=0, payload_crc_errors=0, bad_headers=0,
                          sequence_gaps=0, sequence_restarts=0)

    def _skip_one(self) -> None:
        self.stats["bytes_skipped"] += 1
        if not self.skipping:
            self.skipping = True
            self.stats["resyncs"] += 1

    def _check(self, b: bytes, p: int):
        """('need',) | ('bad', counter) | ('ok', frame_size) for a frame starting at b[p]."""
        avail = len(b) - p
        if b[p:p + 4] != SYNC[:min(avail, 4)]:
            return ("bad", None)
        if avail < 8:
            return ("need",)
        header_size = _u(b, p + 6, 2)
        if header_size < 80 or header_size > 1024 or header_size % 4:
            return ("bad", "bad_headers")
        if avail < header_size:
            return ("need",)
        if zlib.crc32(b[p:p + header_size - 4]) != _u(b, p + header_size - 4, 4):
            return ("bad", "header_crc_errors")
        version, frame_type = b[p + 4], b[p + 5]
        polarity, dtype, axis = b[p + 25], b[p + 26], b[p + 27]
        n_samples, payload_size = _u(b, p + 28, 4), _u(b, p + 32, 4)
        if version != 1 or frame_type not in (1, 2) or payload_size > self.max_payload_size:
            return ("bad", "bad_headers")
        if frame_type == 1:
            if dtype not in _ITEMSIZE or polarity > 2 or axis > 1:
                return ("bad", "bad_headers")
            expected = n_samples * _ITEMSIZE[dtype] + (8 * n_samples if axis == 1 else 0)
            if payload_size != expected:
                return ("bad", "bad_headers")
        elif payload_size < _STATUS_MIN:
            return ("bad", "bad_headers")
        frame_size = header_size + payload_size + 4
        if avail < frame_size:
            return ("need",)
        payload_end = p + header_size + payload_size
        if zlib.crc32(b[p + header_size:payload_end]) != _u(b, payload_end, 4):
            return ("bad", "payload_crc_errors")
        return ("ok", frame_size)

    def feed(self, chunk) -> list[tuple[int, int, bytes]]:
        self.stats["bytes_in"] += len(chunk)
        b = self.buf + bytes(chunk)
        p = 0
        out = []
        while p < len(b):
            verdict = self._check(b, p)
            if verdict[0] == "need":
                break
            if verdict[0] == "bad":
                if verdict[1]:
                    self.stats[verdict[1]] += 1
                self._skip_one()
                p += 1
                continue
            size = verdict[1]
            raw = b[p:p + size]
            seq, frame_type = _u(raw, 8, 4), raw[5]
            self.skipping = False
            self.stats["frames"] += 1
            self.stats["scan_frames" if frame_type == 1 else "status_frames"] += 1
            if self.last_seq is not None:
                gap = (seq - self.last_seq - 1) % 2**32
                if gap and (seq == 0 or gap >= 2**31):
                    self.stats["sequence_restarts"] += 1
                else:
                    self.stats["sequence_gaps"] += gap
            self.last_seq = seq
            out.append((seq, frame_type, raw))
            p += size
        self.buf = b[p:]
        return out

    def samples(self, raw: bytes) -> np.ndarray:
        """A copy of the samples of a SCAN frame's raw bytes."""
        header_size, dtype, axis, n = _u(raw, 6, 2), raw[26], raw[27], _u(raw, 28, 4)
        start = header_size + (8 * n if axis == 1 else 0)
        return np.frombuffer(raw[start:start + n * _ITEMSIZE[dtype]], dtype=np.dtype(
            {1: "<u2", 2: "<i2", 3: "<f4", 4: "<i4", 5: "<f8"}[dtype])).copy()


# ---- the benchmark ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=2000, help="frames in the stream (default 2000 = 262 MB at 64k samples)")
    parser.add_argument("--samples", type=int, default=65536, help="uint16 samples per frame (default 65536)")
    parser.add_argument("--chunk", type=int, default=1 << 20, help="bytes per feed() (default 1 MiB)")
    parser.add_argument("--corrupt", type=float, default=0.01, help="fraction of frames corrupted (default 0.01)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed passes of each decoder on the clean stream; the best counts (default 3)")
    parser.add_argument("--seed", type=int, default=1)


def make_stream(n_frames: int, n_samples: int, seed: int = 1) -> tuple[bytes, list[int]]:
    """A valid stream of SCAN frames and the byte offset of each frame."""
    from instrument.frames import Calibration, encode_scan

    rng = np.random.default_rng(seed)
    base = rng.poisson(30.0, size=n_samples).astype(np.uint16)
    cal = Calibration(t0_ns=1000.0, dt_ns=0.5, c0=0.01, c1=0.35, c2=1e-6)
    parts, offsets, offset = [], [], 0
    for seq in range(n_frames):
        samples = np.roll(base, seq)  # cheap variation; the decoder cost does not depend on values
        frame = encode_scan(samples, sequence=seq, scan_number=seq, device_time_ns=seq * 50_000_000, calibration=cal)
        parts.append(frame)
        offsets.append(offset)
        offset += len(frame)
    return b"".join(parts), offsets


def corrupt_stream(stream: bytes, offsets: list[int], fraction: float, seed: int = 2) -> tuple[bytes, set[int]]:
    """Flip one payload byte in ``fraction`` of the frames; returns (stream, corrupted sequence numbers)."""
    rng = np.random.default_rng(seed)
    n = len(offsets)
    count = max(1, round(n * fraction)) if fraction > 0 else 0
    victims = set(int(i) for i in rng.choice(n, size=count, replace=False))
    out = bytearray(stream)
    for i in victims:
        frame_end = offsets[i + 1] if i + 1 < n else len(stream)
        pos = int(rng.integers(offsets[i] + 80, frame_end - 4))
        out[pos] ^= 0x5A
    return bytes(out), victims


def _time_decoder(stream: bytes, chunk: int, max_payload: int):
    from instrument.frames import FrameDecoder

    decoder = FrameDecoder(max_payload_size=max_payload)
    view = memoryview(stream)
    seqs = []
    append = seqs.append
    gc_was = gc.isenabled()
    gc.disable()
    t = time.perf_counter()
    for i in range(0, len(stream), chunk):
        for frame in decoder.feed(view[i:i + chunk]):
            append(frame.header.sequence)
    elapsed = time.perf_counter() - t
    if gc_was:
        gc.enable()
    return elapsed, seqs, decoder.stats


def _time_reference(stream: bytes, chunk: int, max_payload: int):
    ref = ReferenceDecoder(max_payload)
    seqs = []
    t = time.perf_counter()
    for i in range(0, len(stream), chunk):
        for seq, _ftype, _raw in ref.feed(stream[i:i + chunk]):
            seqs.append(seq)
    return time.perf_counter() - t, seqs, ref.stats


def run(args: argparse.Namespace, progress) -> dict:
    progress(f"building {args.frames} frames of {args.samples} uint16 samples")
    stream, offsets = make_stream(args.frames, args.samples, args.seed)
    bad_stream, victims = corrupt_stream(stream, offsets, args.corrupt, args.seed + 1)
    max_payload = max(1 << 20, 16 * args.samples)
    gb = len(stream) / 1e9

    best = lambda runs: min(runs, key=lambda r: r[0])  # noqa: E731
    progress(f"real decoder, clean stream ({gb:.3f} GB, {args.chunk} B chunks, best of {args.repeat})")
    clean = best(_time_decoder(stream, args.chunk, max_payload) for _ in range(args.repeat))
    progress("real decoder, corrupt stream")
    corrupt = best(_time_decoder(bad_stream, args.chunk, max_payload) for _ in range(args.repeat))
    progress(f"reference decoder, clean stream (best of {args.repeat})")
    ref_clean = best(_time_reference(stream, args.chunk, max_payload) for _ in range(args.repeat))
    progress("reference decoder, corrupt stream (once: it is slow)")
    ref_corrupt = _time_reference(bad_stream, args.chunk, max_payload)

    expected_clean = list(range(args.frames))
    expected_corrupt = [s for s in expected_clean if s not in victims]
    same = (clean[1] == ref_clean[1] == expected_clean and corrupt[1] == ref_corrupt[1] == expected_corrupt
            and clean[2].as_dict() == ref_clean[2] and corrupt[2].as_dict() == ref_corrupt[2])
    if not same:
        raise SystemExit("decode benchmark: the decoder and the reference disagree "
                         f"(clean {len(clean[1])}/{len(ref_clean[1])}, corrupt {len(corrupt[1])}/{len(ref_corrupt[1])}, "
                         f"stats {clean[2].as_dict()} vs {ref_clean[2]}; {corrupt[2].as_dict()} vs {ref_corrupt[2]})")
    decode = gb / clean[0]
    reference = gb / ref_clean[0]
    crc = max(_crc_speed(stream) for _ in range(args.repeat))
    return {
        "decode_GBps": decode,
        "decode_corrupt_GBps": len(bad_stream) / 1e9 / corrupt[0],
        "reference_GBps": reference,
        "reference_corrupt_GBps": len(bad_stream) / 1e9 / ref_corrupt[0],
        "ratio": decode / reference,
        "crc32_GBps": crc,
        "decode_vs_crc32": decode / crc,
        "decode_us_per_frame": clean[0] / args.frames * 1e6,
        "frames": len(clean[1]),
        "frames_corrupt_stream": len(corrupt[1]),
        "frames_corrupted": len(victims),
        "payload_crc_errors": corrupt[2].payload_crc_errors,
        "resyncs_corrupt_stream": corrupt[2].resyncs,
        "samples_per_frame": args.samples,
        "chunk_bytes": args.chunk,
        "stream_bytes": len(stream),
        "agree": 1,
    }


def _crc_speed(stream: bytes) -> float:
    """zlib.crc32 over the stream, the floor under any decoder that checks every byte."""
    view = memoryview(stream)
    t = time.perf_counter()
    for i in range(0, len(stream), 1 << 20):
        zlib.crc32(view[i:i + (1 << 20)])
    return len(stream) / 1e9 / (time.perf_counter() - t)
