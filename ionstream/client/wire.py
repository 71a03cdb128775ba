"""ZeroMQ wire schema 1.0 (docs/wire.md): encode and decode ``[topic, header, buffer, ...]``.

A message is one ZeroMQ multipart message:

* frame 0, the topic: ASCII (``peaks``, ``class``, ``spectrum``, ``trace``, ``status``);
* frame 1, the header: one UTF-8 JSON object (schema version, source, session, per-topic
  sequence number, scan number, timestamps, topic fields, and a ``buffers`` list that gives
  each following frame's name, dtype and shape);
* frames 2..: one raw C-ordered array per entry of ``buffers``, little-endian.

This module has no sockets: the publisher (``ionstream.daemon.publisher``) and the subscriber
(``ionstream.client.subscriber``) call it, and the tests call it directly. docs/wire.md is the
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

TOPICS: tuple[str, ...] = ("peaks", "class", "spectrum", "trace", "status", "image")
"""The topics ionstream publishes (docs/wire.md § Topics)."""

PEAK_FIELDS: tuple[tuple[str, str], ...] = (
    ("mz", "<f8"), ("intensity", "<f4"), ("area", "<f4"), ("fwhm", "<f4"), ("snr", "<f4"))
"""The columns of a peak list, ``(name, little-endian dtype)``, in frame order: the ``peaks`` topic
(docs/wire.md), the mzML/CSV peak lists and reprocess's peaks.parquet all take them from here
(``ionstream.processing.PEAK_FIELDS`` is this tuple). Units: m/z; counts (intensity, area above
the baseline); m/z (FWHM); signal-to-noise ratio."""

LAYOUTS: dict[str, tuple[str, ...]] = {
    "peaks": tuple(name for name, _dtype in PEAK_FIELDS),
    "class": ("probabilities",),
    "spectrum": ("mz", "intensity"),
    "trace": ("values",),
    "status": (),
    "image": ("images",),
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
    """The header as a dict without ``seq`` and ``t_pub_ns`` (what :class:`HeaderEncoder`
    writes, for readers of this module; the encoder itself builds the bytes directly)."""
    bad = RESERVED_FIELDS.intersection(fields)
    if bad:
        raise ValueError(f"header field(s) {', '.join(sorted(bad))} are written by the publisher; "
                         "remove them from fields")
    doc: dict[str, Any] = {"schema": list(SCHEMA_VERSION), "source": source, "session": session}
    doc.update(fields)
    doc["buffers"] = buffers
    return doc


_WIRE_DTYPES: dict[np.dtype, str] = {}


def _wire_dtype(dtype: np.dtype) -> str | None:
    """The type string of a dtype that may travel as it is (little-endian or 1-byte), else None."""
    s = _WIRE_DTYPES.get(dtype)
    if s is None:
        if dtype.kind not in ALLOWED_KINDS or dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
            return None
        s = _WIRE_DTYPES[dtype] = dtype_str(np.empty(0, dtype))
    return s


class HeaderEncoder:
    """Builds header bytes for one publisher session (``source`` and ``session`` fixed).

    A header is assembled from pieces so that no JSON encoder runs over the parts that
    never change or need no escaping: ``{"schema":[1,0],"source":...,"session":...`` is
    encoded once, the caller's fields are one ``json.dumps``, and each buffer descriptor
    is formatted directly (names are identifiers, type strings and sizes need no escaping).
    :meth:`prepare` returns the header *open*: without ``seq``, ``t_pub_ns`` and the closing
    brace, which :func:`close_header` (or the publisher, piece by piece) adds.
    """

    def __init__(self, source: str = "", session: str = "0000000000000000"):
        self.source = source
        self.session = session
        self.prefix = (b'{"schema":[%d,%d],"source":' % SCHEMA_VERSION + _dumps(source).encode("utf-8")
                       + b',"session":' + _dumps(session).encode("utf-8"))

    def prepare(self, topic: str, fields: Mapping[str, Any],
                arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> tuple[bytes, list[np.ndarray]]:
        """(open header bytes, the arrays as they will travel). ValueError/TypeError name the problem."""
        if isinstance(arrays, Mapping):
            names = buffer_names(topic, arrays)
            values = list(arrays.values())
        else:
            layout = LAYOUTS.get(topic)
            names = layout if layout and len(layout) == len(arrays) else buffer_names(topic, arrays)
            values = arrays
        descriptors = []
        wire_arrays = []
        for array, name in zip(values, names):
            dtype = getattr(array, "dtype", None)
            typestr = None if dtype is None else _wire_dtype(dtype)
            if typestr is None or type(array) is not np.ndarray or not array.flags.c_contiguous:
                array = as_wire_array(array, name)
                typestr = dtype_str(array)
            shape = array.shape
            dims = b"%d" % shape[0] if len(shape) == 1 else b",".join(b"%d" % n for n in shape)
            descriptors.append(b'{"name":"%s","dtype":"%s","shape":[%s]}' % (name.encode(), typestr.encode(), dims))
            wire_arrays.append(array)
        if fields:
            if not RESERVED_FIELDS.isdisjoint(fields):
                header_doc(fields, source="", session="", buffers=[])  # raises, naming the keys
            middle = b"," + encode_header(fields)[1:-1]
        else:
            middle = b""
        return self.prefix + middle + b',"buffers":[' + b",".join(descriptors) + b"]", wire_arrays


def close_header(open_header: bytes, seq: int, t_pub_ns: int | None = None) -> bytes:
    """Finish an open header from :meth:`HeaderEncoder.prepare`: add ``seq`` (and ``t_pub_ns``)."""
    if t_pub_ns is None:
        return open_header + b',"seq":%d}' % seq
    return open_header + b',"seq":%d,"t_pub_ns":%d}' % (seq, t_pub_ns)


def encode(topic: str, fields: Mapping[str, Any], arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray] = (),
           *, source: str = "", session: str = "0000000000000000", seq: int = 0,
           t_pub_ns: int | None = None) -> list[bytes | np.ndarray]:
    """One message as its frames ``[topic, header, array, ...]`` (arrays are not copied).

    The publisher produces the same bytes, in two steps over two threads; this one-call form
    is for tests, tools and the documentation's example.
    """
    topic_b = check_topic(topic)
    open_header, wire_arrays = HeaderEncoder(source, session).prepare(topic, fields, arrays)
    return [topic_b, close_header(open_header, seq, t_pub_ns), *wire_arrays]


# ---- decoding ----------------------------------------------------------------------------
def check_version(header: Mapping[str, Any]) -> tuple[int, int]:
    """The header's (major, minor); WireVersionError for another major version.

    A newer minor version is accepted (its additions are fields this reader ignores).
    """
    schema = header.get("schema")
    if (type(schema) is not list or len(schema) < 2
            or type(schema[0]) is not int or type(schema[1]) is not int):
        raise WireError(f"header field 'schema' must be [major, minor], got {schema!r}")
    major, minor = schema[0], schema[1]
    if major != SCHEMA_VERSION[0]:
        raise WireVersionError(
            f"message schema {major}.{minor} is not understood by this reader (schema "
            f"{SCHEMA_VERSION[0]}.x); {'upgrade ionstream on the subscriber side' if major > SCHEMA_VERSION[0] else 'the publisher is too old'}")
    return major, minor


_DTYPE_CACHE: dict[str, np.dtype] = {}


def _parse_dtype(spec: Any, i: int) -> np.dtype:
    dtype = _DTYPE_CACHE.get(spec) if isinstance(spec, str) else None
    if dtype is not None:
        return dtype
    if not isinstance(spec, str) or len(spec) < 3 or spec[0] not in "<>|":
        raise WireError(f"buffers[{i}].dtype must be a type string like '<f8', got {spec!r}")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError, SyntaxError):
        raise WireError(f"buffers[{i}].dtype {spec!r} is not a known type string") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.str[1:] != spec[1:]:
        raise WireError(f"buffers[{i}].dtype {spec!r} is not an allowed type (bool, int, uint, float, complex)")
    if len(_DTYPE_CACHE) < 256:
        _DTYPE_CACHE[spec] = dtype
    return dtype


def decode_header(data: Any) -> dict[str, Any]:
    """The header frame (bytes, memoryview or zmq.Frame) as a dict; WireError if it is not a
    JSON object, WireVersionError for another major version."""
    try:
        header = json.loads(_bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"frame 1 (header) is not UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
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
        topic = _bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError:
        raise WireError("frame 0 (topic) is not ASCII") from None
    header = decode_header(frames[1])
    specs = header.get("buffers", [])
    if type(specs) is not list:
        raise WireError(f"header field 'buffers' must be a list, got {specs!r}")
    if len(specs) != len(frames) - 2:
        raise WireError(f"header lists {len(specs)} buffer(s) but the message has {len(frames) - 2} "
                        "buffer frame(s)")
    arrays: dict[str, np.ndarray] = {}
    frombuffer = np.frombuffer
    for i, spec in enumerate(specs):
        try:  # the common case in few operations; anything unusual goes through _check_spec
            name, dtype, shape = spec["name"], _DTYPE_CACHE[spec["dtype"]], spec["shape"]
            ok = (type(name) is str and name not in arrays and type(shape) is list and len(shape) == 1
                  and type(shape[0]) is int and shape[0] >= 0)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            name, dtype, shape = _check_spec(spec, i, arrays)
        frame = frames[i + 2]
        try:
            buf = frame.buffer  # zmq.Frame
        except AttributeError:
            buf = _buffer(frame)
        expected = dtype.itemsize * (shape[0] if len(shape) == 1 else math.prod(shape))
        if len(buf) != expected:
            raise WireError(f"buffer {name!r} (frame {i + 2}) has {len(buf)} bytes; dtype {dtype.str} "
                            f"and shape {shape} need {expected}")
        array = frombuffer(buf, dtype=dtype)
        arrays[name] = array if len(shape) == 1 else array.reshape(shape)
    return Decoded(topic, header, arrays)


def _check_spec(spec: Any, i: int, arrays: Mapping[str, Any]) -> tuple[str, np.dtype, list[int]]:
    """(name, dtype, shape) of one buffer descriptor, or WireError naming what is wrong."""
    if type(spec) is not dict:
        raise WireError(f"buffers[{i}] must be an object, got {spec!r}")
    name = spec.get("name", f"buf{i}")
    if type(name) is not str or name in arrays:
        raise WireError(f"buffers[{i}].name must be a unique string, got {name!r}")
    dtype = _parse_dtype(spec.get("dtype"), i)
    shape = spec.get("shape")
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
        raise WireError(f"buffers[{i}].shape must be a list of sizes, got {shape!r}")
    return name, dtype, shape


def _bytes(frame: Any) -> bytes:
    if type(frame) is bytes:
        return frame
    data = getattr(frame, "bytes", None)  # zmq.Frame (copies once, small frames only here)
    return data if type(data) is bytes else bytes(_buffer(frame))


def _buffer(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if buffer is not None:
        return buffer
    return memoryview(frame).cast("B")
