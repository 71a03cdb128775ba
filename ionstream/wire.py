"""ZeroMQ wire schema 1.0 (docs/wire.md): encode and decode ``[topic, header, buffer, ...]``.

A message is one ZeroMQ multipart message:

* frame 0, the topic: ASCII (``peaks``, ``class``, ``spectrum``, ``trace``, ``status``);
* frame 1, the header: one UTF-8 JSON object (schema version, source, session, per-topic
  sequence number, scan number, timestamps, topic fields, and a ``buffers`` list that gives
  each following frame's name, dtype and shape);
* frames 2..: one raw C-ordered array per entry of ``buffers``, little-endian.

This module has no sockets: the publisher (``ionstream.publisher``) and the subscriber
(``ionstream.subscriber``) call it, and the tests call it directly. docs/wire.md is the
specification; a test decodes the document's worked example with :func:`decode`.

Why JSON for the header: every language reads it without a schema compiler, it is what
the document shows byte for byte, and at ~300 bytes a header costs a few microseconds to
encode and decode next to buffers of kilobytes to megabytes (``ionstream bench zmq``
measures it). msgpack or CBOR would decode faster but add a dependency on both ends for no
visible gain.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

SCHEMA_VERSION: tuple[int, int] = (1, 0)
"""(major, minor). Minor: only additions a 1.0 reader can ignore. Major: anything else."""

TOPICS: tuple[str, ...] = ("peaks", "class", "spectrum", "trace", "status")
"""The topics ionstream publishes (docs/wire.md § Topics)."""

LAYOUTS: dict[str, tuple[str, ...]] = {
    "peaks": ("mz", "intensity", "area", "fwhm", "snr"),
    "class": ("probabilities",),
    "spectrum": ("mz", "intensity"),
    "trace": ("values",),
    "status": (),
}
"""Buffer names, in frame order, of each topic (docs/wire.md § Topics). Arrays passed as a
plain sequence get these names; other topics, or a mapping, name their buffers themselves."""

RESERVED_FIELDS = frozenset({"schema", "source", "session", "seq", "buffers", "t_pub_ns"})
"""Header keys the publisher writes; a caller's fields may not set them."""

ALLOWED_KINDS = frozenset("biufc")
"""NumPy dtype kinds that may travel: bool, signed, unsigned, float, complex."""

_TOPIC_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class WireError(ValueError):
    """A message that does not follow docs/wire.md (the message names the frame and the rule)."""


class WireVersionError(WireError):
    """A message with a schema major version this reader does not understand."""


class Decoded(NamedTuple):
    """One decoded message: the topic, the header document and the arrays by buffer name."""

    topic: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]


# ---- encoding ----------------------------------------------------------------------------
def check_topic(topic: str) -> bytes:
    """The topic as its frame bytes; ValueError unless lowercase ASCII ``[a-z][a-z0-9_.-]*``."""
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise ValueError(f"topic must be lowercase ASCII like 'peaks' (letters, digits, _ . -), got {topic!r}")
    return topic.encode("ascii")


def buffer_names(topic: str, arrays: Sequence[Any] | Mapping[str, Any]) -> list[str]:
    """Names for ``arrays``: a mapping's keys, else the topic's layout, else ``buf0, buf1, ...``."""
    if isinstance(arrays, Mapping):
        names = [str(k) for k in arrays]
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"buffer name must be an identifier (letters, digits, _), got {name!r}")
        return names
    layout = LAYOUTS.get(topic)
    if layout is not None and layout:
        if len(arrays) != len(layout):
            raise ValueError(f"topic {topic!r} carries {len(layout)} buffer(s) ({', '.join(layout)}), "
                             f"got {len(arrays)}; pass a mapping to name buffers yourself")
        return list(layout)
    return [f"buf{i}" for i in range(len(arrays))]


def as_wire_array(array: Any, name: str) -> np.ndarray:
    """``array`` as a C-contiguous little-endian NumPy array (a view when it already is one).

    Raises TypeError for non-arrays and for dtypes that may not travel (object, strings,
    structured); the message names the buffer.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"buffer {name!r}: expected a NumPy array, got {type(array).__name__}")
    dtype = array.dtype
    if dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"buffer {name!r}: dtype {dtype} cannot travel; use bool, integer, float or "
                        "complex arrays (strings and labels go in the header)")
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def dtype_str(array: np.ndarray) -> str:
    """NumPy's array-interface type string with an explicit byte order: ``<f8``, ``|u1``, ..."""
    s = array.dtype.str
    return "<" + s[1:] if s[0] == "=" else s


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"header field value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _finite(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return [_finite(v) for v in value.tolist()]
    return value


_dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False,
                          ensure_ascii=False).encode


def encode_header(doc: dict[str, Any]) -> bytes:
    """``doc`` as compact UTF-8 JSON; NaN/inf become null (JSON has no NaN)."""
    try:
        text = _dumps(doc)
    except ValueError:  # a non-finite float somewhere: rare (status figures before any data)
        text = _dumps(_finite(doc))
    return text.encode("utf-8")


def header_doc(fields: Mapping[str, Any], *, source: str, session: str,
               buffers: list[dict[str, Any]]) -> dict[str, Any]:
    """The header document without ``seq`` and ``t_pub_ns``: reserved keys first, then the
    caller's fields, then ``buffers``. The publisher appends ``seq`` and ``t_pub_ns`` to the
    encoded bytes with :func:`append_field` (so numbering and time stamping cost no re-encoding)."""
    bad = RESERVED_FIELDS.intersection(fields)
    if bad:
        raise ValueError(f"header field(s) {', '.join(sorted(bad))} are written by the publisher; "
                         "remove them from fields")
    doc: dict[str, Any] = {"schema": list(SCHEMA_VERSION), "source": source, "session": session}
    doc.update(fields)
    doc["buffers"] = buffers
    return doc


def append_field(header: bytes, key: str, value: int) -> bytes:
    """Add an integer field to an encoded header without re-encoding it (the publisher's
    ``t_pub_ns``, stamped just before sending)."""
    return b'%s,"%s":%d}' % (header[:-1], key.encode("ascii"), value)


def encode(topic: str, fields: Mapping[str, Any], arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray] = (),
           *, source: str = "", session: str = "0000000000000000", seq: int = 0,
           t_pub_ns: int | None = None) -> list[bytes | np.ndarray]:
    """One message as its frames ``[topic, header, array, ...]`` (arrays are not copied).

    The publisher does the same steps spread over two threads; this one-call form is for
    tests, tools and the documentation's example.
    """
    topic_b = check_topic(topic)
    names = buffer_names(topic, arrays)
    values = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
    wire_arrays = [as_wire_array(a, n) for a, n in zip(values, names)]
    buffers = [{"name": n, "dtype": dtype_str(a), "shape": list(a.shape)} for n, a in zip(names, wire_arrays)]
    header = encode_header(header_doc(fields, source=source, session=session, buffers=buffers))
    header = append_field(header, "seq", seq)
    if t_pub_ns is not None:
        header = append_field(header, "t_pub_ns", t_pub_ns)
    return [topic_b, header, *wire_arrays]


# ---- decoding ----------------------------------------------------------------------------
def check_version(header: Mapping[str, Any]) -> tuple[int, int]:
    """The header's (major, minor); WireVersionError for another major version.

    A newer minor version is accepted (its additions are fields this reader ignores).
    """
    schema = header.get("schema")
    if (not isinstance(schema, list) or len(schema) < 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in schema[:2])):
        raise WireError(f"header field 'schema' must be [major, minor], got {schema!r}")
    major, minor = schema[0], schema[1]
    if major != SCHEMA_VERSION[0]:
        raise WireVersionError(
            f"message schema {major}.{minor} is not understood by this reader (schema "
            f"{SCHEMA_VERSION[0]}.x); {'upgrade ionstream on the subscriber side' if major > SCHEMA_VERSION[0] else 'the publisher is too old'}")
    return major, minor


def _parse_dtype(spec: Any, i: int) -> np.dtype:
    if not isinstance(spec, str) or len(spec) < 3 or spec[0] not in "<>|":
        raise WireError(f"buffers[{i}].dtype must be a type string like '<f8', got {spec!r}")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError, SyntaxError):
        raise WireError(f"buffers[{i}].dtype {spec!r} is not a known type string") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.str[1:] != spec[1:]:
        raise WireError(f"buffers[{i}].dtype {spec!r} is not an allowed type (bool, int, uint, float, complex)")
    return dtype


def decode_header(data: bytes | memoryview) -> dict[str, Any]:
    """The header frame as a dict; WireError if it is not a JSON object, WireVersionError
    for another major version."""
    try:
        header = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"frame 1 (header) is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"frame 1 (header) must be a JSON object, got {type(header).__name__}")
    check_version(header)
    return header


def decode(frames: Sequence[Any]) -> Decoded:
    """Decode ``[topic, header, buffer, ...]`` frames (bytes, memoryviews or ``zmq.Frame``).

    Arrays are zero-copy NumPy views over the buffer frames (they keep the frames alive).
    Unknown header fields are kept and otherwise ignored.
    """
    if len(frames) < 2:
        raise WireError(f"a message has at least 2 frames (topic, header), got {len(frames)}")
    try:
        topic = bytes(_buffer(frames[0])).decode("ascii")
    except UnicodeDecodeError:
        raise WireError("frame 0 (topic) is not ASCII") from None
    header = decode_header(_buffer(frames[1]))
    specs = header.get("buffers", [])
    if not isinstance(specs, list):
        raise WireError(f"header field 'buffers' must be a list, got {specs!r}")
    if len(specs) != len(frames) - 2:
        raise WireError(f"header lists {len(specs)} buffer(s) but the message has {len(frames) - 2} "
                        "buffer frame(s)")
    arrays: dict[str, np.ndarray] = {}
    for i, (spec, frame) in enumerate(zip(specs, frames[2:])):
        if not isinstance(spec, dict):
            raise WireError(f"buffers[{i}] must be an object, got {spec!r}")
        name = spec.get("name", f"buf{i}")
        if not isinstance(name, str) or name in arrays:
            raise WireError(f"buffers[{i}].name must be a unique string, got {name!r}")
        dtype = _parse_dtype(spec.get("dtype"), i)
        shape = spec.get("shape")
        if (not isinstance(shape, list)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise WireError(f"buffers[{i}].shape must be a list of sizes, got {shape!r}")
        buf = _buffer(frame)
        expected = dtype.itemsize * math.prod(shape)
        if len(buf) != expected:
            raise WireError(f"buffer {name!r} (frame {i + 2}) has {len(buf)} bytes; dtype {dtype.str} "
                            f"and shape {shape} need {expected}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return Decoded(topic, header, arrays)


def _buffer(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if buffer is not None:
        return buffer
    return memoryview(frame).cast("B")
