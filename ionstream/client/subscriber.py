"""The subscriber client: the public API for analysis applications.

::

    from ionstream import Subscriber

    with Subscriber("tcp://127.0.0.1:5556", topics=["peaks", "class"], timeout=5.0) as sub:
        for msg in sub:                      # raises TimeoutError after 5 s without a message
            if msg.gap:
                print(f"missed {msg.gap} {msg.topic} message(s)")
            if msg.topic == "peaks":
                mz, intensity = msg["mz"], msg["intensity"]      # NumPy views, no copies
                print(msg.scan, len(mz), mz[intensity.argmax()] if len(mz) else None)
            else:
                print(msg.scan, msg.header["label"], msg["probabilities"].max())

Messages follow docs/wire.md. Each :class:`Message` carries its header (a dict) and its
arrays (zero-copy NumPy views over the received ZeroMQ frames, which they keep alive).

Gaps and restarts: every topic has its own sequence number, so a missing number is a missed
message (the daemon's queue was full, or this subscriber fell more than the high-water mark
behind). :attr:`Message.gap` says how many were missed just before a message, and
:meth:`Subscriber.stats` totals them. A restarted publisher starts a new ``session`` with
its sequences at 0: that is reported as :attr:`Message.restarted`, not as a gap.

Reconnection is ZeroMQ's: a subscriber may start before the daemon, and keeps receiving
after the daemon restarts (messages published while nobody was connected are not queued
anywhere). Heartbeats detect a publisher host that vanished without closing the connection.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ionstream.client import wire
from ionstream.client.keys import CurveClient
from ionstream.client.wire import WireError, WireVersionError

log = logging.getLogger("ionstream.client.subscriber")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"

__all__ = ["Subscriber", "Message", "WireError", "WireVersionError", "DEFAULT_ENDPOINT"]


@dataclass(slots=True)
class Message:
    """One received message.

    Attributes
    ----------
    topic
        ``peaks``, ``class``, ``spectrum``, ``trace`` or ``status``.
    header
        The header document (docs/wire.md): ``seq``, ``scan``, ``source``, timestamps in ns
        since the epoch (``t_device_ns``, ``t_acq_ns``, ``t_dsp_ns``, ``t_infer_ns``,
        ``t_pub_ns``), the topic's fields, ``buffers``. Unknown fields are kept as they came.
    arrays
        Buffers by name, in frame order: read-only-by-convention NumPy views over the frames.
    received_ns
        When this subscriber received it (``time.time_ns()``).
    gap
        Messages of this topic missed just before this one (0: none).
    restarted
        The publisher restarted (new session) since the previous message of this topic.
    """

    topic: str
    header: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    received_ns: int
    gap: int = 0
    restarted: bool = False

    def __getitem__(self, name: str) -> np.ndarray:
        """The buffer called ``name`` (``msg["mz"]``)."""
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"{self.topic} message has no buffer {name!r}; it has "
                           f"{', '.join(self.arrays) or 'none'}") from None

    @property
    def seq(self) -> int:
        """Per-topic sequence number (starts at 0 for each publisher session)."""
        return self.header["seq"]

    @property
    def scan(self) -> int | None:
        """The instrument's scan number, when the message is about one scan."""
        return self.header.get("scan")

    @property
    def source(self) -> str:
        return self.header.get("source", "")

    @property
    def session(self) -> str:
        return self.header.get("session", "")

    def latency_ms(self, since: str = "t_acq_ns") -> float | None:
        """Milliseconds from the header timestamp ``since`` (default: frame received by the
        daemon) to this subscriber's receipt; None if the header has no such timestamp.
        Meaningful across hosts only with synchronised clocks."""
        t = self.header.get(since)
        return None if not isinstance(t, int) else (self.received_ns - t) / 1e6

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict: topic, header, gap, restarted, received_ns (and arrays as lists)."""
        doc: dict[str, Any] = {"topic": self.topic, "header": dict(self.header), "gap": self.gap,
                               "restarted": self.restarted, "received_ns": self.received_ns}
        if arrays:
            doc["arrays"] = {name: a.tolist() for name, a in self.arrays.items()}
        return doc


@dataclass
class _TopicState:
    session: str = ""
    next_seq: int = -1
    received: int = 0
    missed: int = 0
    restarts: int = 0
    latest_ns: int = field(default=0)


class Subscriber:
    """Connects to an ionstream publisher and yields decoded :class:`Message` objects.

    Parameters
    ----------
    endpoint
        The daemon's PUB endpoint (``publish.endpoint``), or several.
    topics
        Topic names to receive (``"peaks"``, ``["peaks", "class"]``); None or ``"all"``: every
        topic the daemon publishes (``spectrum`` only if the daemon has it on).
    timeout
        Seconds :meth:`recv` and iteration wait for a message before raising TimeoutError;
        None waits for ever.
    curve
        A :class:`~ionstream.daemon.security.CurveClient` when the daemon requires CURVE.
    rcvhwm
        Messages ZeroMQ may queue for this subscriber before it drops (then: gaps).
    context
        A ``zmq.Context``; default ``zmq.Context.instance()``.
    """

    def __init__(self, endpoint: str | Iterable[str] = DEFAULT_ENDPOINT,
                 topics: str | Iterable[str] | None = None, *, timeout: float | None = None,
                 curve: CurveClient | None = None, rcvhwm: int = 1000,
                 context: zmq.Context | None = None):
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if isinstance(topics, str):
            topics = None if topics == "all" else [t.strip() for t in topics.split(",") if t.strip()]
        self.topics: tuple[str, ...] | None = None if topics is None else tuple(topics)
        for topic in self.topics or ():
            wire.check_topic(topic)
        self.timeout = timeout
        self._topic_set = None if self.topics is None else frozenset(t.encode() for t in self.topics)
        self._state: dict[str, _TopicState] = {}
        self.restarts = 0
        self.errors = 0
        self._rcvtimeo = -1
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        try:
            s = self._socket
            s.linger = 0
            s.rcvhwm = rcvhwm
            s.reconnect_ivl = 100          # ms; back off to reconnect_ivl_max
            s.reconnect_ivl_max = 2000
            s.heartbeat_ivl = 1000         # ms: detect a vanished publisher host
            s.heartbeat_timeout = 5000
            if curve is not None:
                curve.setup(s)
            for topic in self.topics if self.topics is not None else ("",):
                s.subscribe(topic.encode())
            for ep in self.endpoints:
                s.connect(ep)
        except Exception:
            self._socket.close(0)
            raise

    # ---- receiving -----------------------------------------------------------------------
    def recv(self, timeout: float | None = ...) -> Message:  # type: ignore[assignment]
        """The next message. Waits up to ``timeout`` seconds (default: the constructor's).

        Raises
        ------
        TimeoutError
            Nothing arrived in time.
        WireVersionError
            The publisher speaks a newer major schema version (upgrade the subscriber).
        WireError
            A message that does not follow docs/wire.md (counted; the next call goes on).
        """
        if timeout is ...:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        sock = self._socket
        while True:
            # A receive timeout on the socket rather than poll() + a non-blocking recv: one call
            # into ZeroMQ per message and no exception in the common case (the option is set
            # only when it changes).
            if ms != self._rcvtimeo:
                sock.rcvtimeo = self._rcvtimeo = ms
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.Again:
                raise TimeoutError(f"no message from {', '.join(self.endpoints)} within {timeout} s") from None
            received_ns = time.time_ns()
            if self._topic_set is not None and frames[0].bytes not in self._topic_set:
                if deadline is not None:  # a longer topic that only shares our prefix: wait on
                    ms = max(0, int((deadline - time.monotonic()) * 1000))
                continue
            try:
                decoded = wire.decode(frames)
            except WireError:
                self.errors += 1
                raise
            return self._track(decoded, received_ns)

    def _track(self, decoded: wire.Decoded, received_ns: int) -> Message:
        header = decoded.header
        seq, session = header.get("seq"), header.get("session", "")
        state = self._state.get(decoded.topic)
        if state is None:
            state = self._state[decoded.topic] = _TopicState()
        gap, restarted = 0, False
        if isinstance(seq, int):
            if state.next_seq >= 0:
                if session != state.session or seq < state.next_seq:
                    restarted = True  # new session, or a publisher that lost its numbering
                    state.restarts += 1
                    self.restarts += 1
                elif seq > state.next_seq:
                    gap = seq - state.next_seq
                    state.missed += gap
            state.next_seq = seq + 1
        state.session = session
        state.received += 1
        state.latest_ns = received_ns
        return Message(decoded.topic, header, decoded.arrays, received_ns, gap, restarted)

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        return self.recv()

    # ---- status --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per topic: received, missed (sum of gaps), restarts; plus totals."""
        per_topic = {t: {"received": s.received, "missed": s.missed, "restarts": s.restarts}
                     for t, s in self._state.items()}
        return {"received": sum(s.received for s in self._state.values()),
                "missed": sum(s.missed for s in self._state.values()),
                "restarts": self.restarts, "errors": self.errors, "topics": per_topic}

    @property
    def missed(self) -> int:
        """Messages missed so far, all topics (sum of every Message.gap)."""
        return sum(s.missed for s in self._state.values())

    # ---- lifetime ------------------------------------------------------------------------
    @property
    def socket(self) -> zmq.Socket:
        """The underlying SUB socket (to poll it alongside others; receive through recv())."""
        return self._socket

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close(0)

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        topics = "all" if self.topics is None else ",".join(self.topics)
        return f"<Subscriber {', '.join(self.endpoints)} topics={topics}{' closed' if self.closed else ''}>"
