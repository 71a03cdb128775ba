"""Wire schema 1.0 (ionstream/client/wire.py, docs/wire.md): round trips, version rules, errors, the doc's example."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ionstream.client import wire
from ionstream.client.wire import WireError, WireVersionError

WIRE_MD = Path(__file__).parents[2] / "docs" / "wire.md"


def _bytes_frames(frames):
    return [f if isinstance(f, bytes) else f.tobytes() for f in frames]


def _peaks(n=3):
    rng = np.random.default_rng(n)
    return [np.sort(rng.uniform(50, 2000, n)), *(rng.uniform(0, 1e5, n).astype(np.float32) for _ in range(4))]


class TestEncodeDecode:
    def test_basic(self):
        arrays = _peaks(5)
        frames = wire.encode("peaks", {"scan": 7, "t_acq_ns": 123}, arrays, source="sim://", session="ab" * 8,
                             seq=3, t_pub_ns=456)
        topic, header, decoded = wire.decode(_bytes_frames(frames))
        assert topic == "peaks"
        assert header["schema"] == [1, 0] and header["seq"] == 3 and header["scan"] == 7
        assert header["session"] == "ab" * 8 and header["source"] == "sim://" and header["t_pub_ns"] == 456
        assert list(decoded) == ["mz", "intensity", "area", "fwhm", "snr"]
        for name, original in zip(decoded, arrays):
            np.testing.assert_array_equal(decoded[name], original)
            assert decoded[name].dtype == original.dtype

    def test_empty(self):
        frames = wire.encode("peaks", {"scan": 1}, [np.zeros(0), *(np.zeros(0, np.float32) for _ in range(4))])
        assert [len(f) for f in _bytes_frames(frames)[2:]] == [0] * 5
        _, header, arrays = wire.decode(_bytes_frames(frames))
        assert arrays["mz"].shape == (0,) and header["buffers"][0]["shape"] == [0]
        _, header, arrays = wire.decode(_bytes_frames(wire.encode("status", {"stats": {}})))
        assert arrays == {} and header["buffers"] == []

    def test_decoded_arrays_are_views_of_the_frames(self):
        frames = [bytearray(f) for f in _bytes_frames(wire.encode("class", {"label": "a"}, [np.ones(4, np.float32)]))]
        probs = wire.decode(frames).arrays["probabilities"]
        frames[2][0:4] = np.float32(7).tobytes()
        assert probs[0] == 7

    def test_big_endian_and_non_contiguous_are_sent_little_endian_contiguous(self):
        big = np.arange(6, dtype=">f4").reshape(2, 3)
        strided = np.arange(10.0)[::2]
        frames = wire.encode("x", {}, {"big": big, "strided": strided})
        header = json.loads(frames[1])
        assert [b["dtype"] for b in header["buffers"]] == ["<f4", "<f8"]
        arrays = wire.decode(_bytes_frames(frames)).arrays
        np.testing.assert_array_equal(arrays["big"], big)
        np.testing.assert_array_equal(arrays["strided"], strided)

    def test_big_endian_frames_decode(self):
        # another publisher may send '>' buffers: they decode as what they say
        frames = [b"x", json.dumps({"schema": [1, 0], "seq": 0, "buffers": [
            {"name": "v", "dtype": ">u2", "shape": [2]}]}).encode(), b"\x01\x02\x00\x03"]
        np.testing.assert_array_equal(wire.decode(frames).arrays["v"], [0x0102, 3])

    def test_nan_in_fields_becomes_null(self):
        frames = wire.encode("status", {"stats": {"latency_p50_ms": float("nan"), "x": np.float32("inf"), "ok": 1.5}})
        header = json.loads(frames[1])  # strict JSON: no NaN tokens
        assert header["stats"] == {"latency_p50_ms": None, "x": None, "ok": 1.5}

    def test_numpy_scalars_in_fields(self):
        frames = wire.encode("class", {"scan": np.int64(5), "p": np.float32(0.5), "labels": np.array(["a", "b"])},
                             [np.ones(2, np.float32)])
        header = wire.decode(_bytes_frames(frames)).header
        assert header["scan"] == 5 and header["p"] == 0.5 and header["labels"] == ["a", "b"]

    def test_non_ascii_field(self):
        header = wire.decode(_bytes_frames(wire.encode("class", {"label": "β-alanine"}, [np.ones(1, np.float32)]))).header
        assert header["label"] == "β-alanine"


class TestRaises:
    def test_reserved_field(self):
        with pytest.raises(ValueError, match="seq"):
            wire.encode("peaks", {"seq": 1}, _peaks())

    def test_wrong_buffer_count_for_topic(self):
        with pytest.raises(ValueError, match=r"topic 'peaks' carries 5 buffer\(s\) \(mz, intensity"):
            wire.encode("peaks", {}, [np.zeros(3)])

    def test_bad_dtype(self):
        with pytest.raises(TypeError, match="buffer 'labels': dtype <U1 cannot travel"):
            wire.encode("x", {}, {"labels": np.array(["a"])})
        with pytest.raises(TypeError, match="expected a NumPy array, got list"):
            wire.encode("x", {}, {"v": [1, 2]})

    def test_bad_topic(self):
        with pytest.raises(ValueError, match="topic must be lowercase ASCII"):
            wire.encode("Peaks!", {})

    def test_unserialisable_field(self):
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            wire.encode("status", {"x": object()})

    @pytest.mark.parametrize("frames, match", [
        ([b"peaks"], "at least 2 frames"),
        ([b"peaks", b"not json"], "not UTF-8 JSON"),
        ([b"peaks", b"[1, 2]"], "must be a JSON object"),
        ([b"peaks", b'{"seq": 0}'], "'schema' must be"),
        ([b"x", b'{"schema": [1, 0], "buffers": [{"name": "a", "dtype": "<f8", "shape": [2]}]}'],
         r"lists 1 buffer\(s\) but the message has 0"),
        ([b"x", b'{"schema": [1, 0], "buffers": [{"name": "a", "dtype": "<f8", "shape": [2]}]}', b"\0" * 15],
         "buffer 'a' \\(frame 2\\) has 15 bytes; dtype <f8 and shape \\[2\\] need 16"),
        ([b"x", b'{"schema": [1, 0], "buffers": [{"name": "a", "dtype": "|O8", "shape": [1]}]}', b"\0" * 8],
         "not an allowed type"),
        ([b"x", b'{"schema": [1, 0], "buffers": [{"name": "a", "dtype": "f8", "shape": [1]}]}', b"\0" * 8],
         "type string like '<f8'"),
        ([b"x", b'{"schema": [1, 0], "buffers": [{"name": "a", "dtype": "<f8", "shape": [-1]}]}', b""],
         "shape must be a list of sizes"),
    ])
    def test_malformed(self, frames, match):
        with pytest.raises(WireError, match=match):
            wire.decode(frames)


class TestVersions:
    def _frames(self, schema, **extra):
        header = {"schema": schema, "seq": 0, "buffers": [{"name": "v", "dtype": "<f4", "shape": [1]}], **extra}
        return [b"class", json.dumps(header).encode(), np.float32(0.5).tobytes()]

    def test_newer_minor_and_unknown_fields_accepted(self):
        topic, header, arrays = wire.decode(self._frames([1, 7], new_field={"a": 1}, another=[1, 2]))
        assert header["new_field"] == {"a": 1} and arrays["v"][0] == 0.5

    def test_newer_major_rejected_clearly(self):
        with pytest.raises(WireVersionError, match=r"schema 2\.0 is not understood by this reader \(schema 1\.x\); "
                                                   "upgrade ionstream"):
            wire.decode(self._frames([2, 0]))

    def test_older_major_rejected(self):
        with pytest.raises(WireVersionError, match="schema 0.9"):
            wire.decode(self._frames([0, 9]))


def _doc_example() -> list[bytes]:
    """The frames of docs/wire.md's worked example, parsed from the document."""
    text = WIRE_MD.read_text()
    block = text.split("<!-- wire-example:begin -->")[1].split("<!-- wire-example:end -->")[0]
    frames: list[bytes] = []
    sizes: list[int] = []
    body: list[str] = []
    for line in block.splitlines():
        m = re.match(r"^frame (\d+)\s+\S+\s+(\d+) bytes$", line)
        if m:
            if body:
                frames.append(_frame_bytes(len(frames), body))
            assert int(m.group(1)) == len(frames)
            sizes.append(int(m.group(2)))
            body = []
        elif line and not line.startswith("```"):
            body.append(line)
    frames.append(_frame_bytes(len(frames), body))
    assert [len(f) for f in frames] == sizes, "a frame's byte count in docs/wire.md disagrees with its bytes"
    return frames


def _frame_bytes(index: int, lines: list[str]) -> bytes:
    if index == 1:
        assert len(lines) == 1, "the header is one line of JSON text"
        return lines[0].encode("utf-8")
    return bytes.fromhex(" ".join(lines))


class TestDocExample:
    def test_decodes(self):
        topic, header, arrays = wire.decode(_doc_example())
        assert topic == "peaks"
        assert header["seq"] == 41 and header["scan"] == 1042 and header["session"] == "5f2a9c1e0b7d4e63"
        assert header["t_dsp_ns"] - header["t_acq_ns"] == 1_250_000
        assert header["t_pub_ns"] - header["t_dsp_ns"] == 150_000
        assert (header["ms_level"], header["polarity"], header["tic"]) == (1, "positive", 98571.25)
        np.testing.assert_array_equal(arrays["mz"], [195.0877, 524.2648, 1022.0232])
        np.testing.assert_array_equal(arrays["intensity"], np.array([1250.5, 88000.0, 310.25], np.float32))
        np.testing.assert_array_equal(arrays["area"], np.array([30.0, 2112.0, 7.5], np.float32))
        np.testing.assert_array_equal(arrays["fwhm"], np.array([0.012, 0.025, 0.05], np.float32))
        np.testing.assert_array_equal(arrays["snr"], np.array([12.5, 880.0, 3.25], np.float32))

    def test_is_what_the_encoder_writes(self):
        doc = _doc_example()
        topic, header, arrays = wire.decode(doc)
        fields = {k: v for k, v in header.items() if k not in wire.RESERVED_FIELDS}  # in the order sent
        frames = wire.encode(topic, fields, list(arrays.values()), source=header["source"],
                             session=header["session"], seq=header["seq"], t_pub_ns=header["t_pub_ns"])
        assert _bytes_frames(frames) == doc


dtypes = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u2", "|u1", "|i1", "|b1", "<c8", "<f2", ">f8", ">i2"])


@settings(max_examples=150, deadline=None)
@given(st.lists(dtypes.flatmap(lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                               min_side=0, max_side=5))),
                max_size=4),
       st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=8).filter(lambda k: k not in wire.RESERVED_FIELDS),
                       st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=10), st.booleans(), st.none(),
                                 st.floats(allow_nan=False, allow_infinity=False)), max_size=5),
       st.integers(0, 2**63 - 1))
def test_round_trip_property(arrays, fields, seq):
    named = {f"b{i}": a for i, a in enumerate(arrays)}
    frames = wire.encode("t", fields, named, seq=seq)
    topic, header, decoded = wire.decode(_bytes_frames(frames))
    assert topic == "t" and header["seq"] == seq
    for key, value in fields.items():
        assert header[key] == value
    assert list(decoded) == list(named)
    for name, original in named.items():
        got = decoded[name]
        assert got.shape == original.shape
        assert got.dtype == original.dtype.newbyteorder("<") or got.dtype == original.dtype
        np.testing.assert_array_equal(got, original)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_decoder_never_fails_other_than_wire_error(frames):
    try:
        wire.decode(frames)
    except WireError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**64) | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"schema": st.sampled_from([[1, 0], [1, 3], [2, 0], "1.0", [1]]),
                              "buffers": st.lists(st.fixed_dictionaries(
                                  {"name": json_values, "dtype": st.sampled_from(["<f8", "|u1", "<M8", "<f8[3]", "(2,)<f4",
                                                                                  "", "<V4", "|S3", "<q", 5]),
                                   "shape": st.one_of(json_values, st.lists(st.integers(-1, 4), max_size=3))}),
                                  max_size=3) | json_values}),
       st.lists(st.binary(max_size=40), max_size=3))
def test_decoder_rejects_fuzzed_headers_with_wire_error(header, buffers):
    try:
        wire.decode([b"t", json.dumps(header).encode(), *buffers])
    except WireError:
        pass
