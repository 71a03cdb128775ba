"""The publisher: one thread owns the PUB socket; pipeline threads hand it messages.

::

    with Publisher("tcp://127.0.0.1:5556", source="sim://") as pub:       # binds, starts the thread
        pub.publish("peaks", {"scan": 17, "t_acq_ns": t0}, [mz, intensity, area, fwhm, snr])
        pub.stats()                                                         # counters for `status`

Threads
-------
ZeroMQ sockets are not thread-safe, so exactly one thread (``ionstream-pub``) creates,
binds, uses and closes the socket. :meth:`Publisher.publish` may be called from any number
of threads; it validates the arrays, encodes the header (so mistakes raise at the call
site), numbers the message and appends it to a bounded queue (``queue_size``): it never
blocks and never waits for a subscriber. A full queue drops the message and counts it
(``drops_queue``); the sequence number is consumed anyway, so subscribers see the gap.
The thread is stopped by a sentinel on the same queue (after everything queued before it
has been sent) and closes the socket in ``finally``.

High-water mark and slow subscribers
------------------------------------
The socket is an XPUB (a PUB that also reports subscriptions, for ``stats()``). Sends never
block: when one subscriber's queue in ZeroMQ reaches ``sndhwm`` messages, ZeroMQ drops
further messages *for that subscriber only*; others are unaffected and acquisition never
waits. ZeroMQ does not tell the publisher about those drops, so they are counted where
they are visible: by each subscriber, as sequence gaps (``Message.gap``, `ionstream listen`).
Memory held for one stuck subscriber is at most ``sndhwm`` x the largest message (with
spectra on, 1000 x 768 KiB = 750 MiB at 64k points: lower ``publish.hwm`` if that is too much).

Buffer lifetime (zero-copy)
---------------------------
Arrays of ``copy_threshold`` bytes or more (default 64 KiB, pyzmq's own threshold) are sent
without a copy: ZeroMQ reads them in its I/O thread after ``publish()`` has returned, while
a reference held by the message keeps the memory alive. Smaller arrays are copied inside
``publish()`` (``ndarray.tobytes``, a microsecond or two for a few-KiB peak list), and
the caller may reuse them as soon as it returns.

A reference keeps memory alive, but does not stop the caller writing into it. So a caller
that *reuses* a large buffer (a pool, a ring slot) passes ``release``: a callable that the
publisher calls exactly once when it no longer needs the arrays: when ZeroMQ has
released every zero-copy frame of the message (pyzmq ``MessageTracker.done``), or at once
if the message was dropped or had no zero-copy arrays. The caller must not write to the
arrays before then. :class:`ionstream.daemon.buffers.BufferPool` does this bookkeeping. A
caller whose arrays are fresh for each message passes no ``release``: nothing else is needed.

Without ``release`` a large array goes zero-copy only if nothing else can write its memory
(:func:`ionstream.daemon.buffers.owns_its_memory`: it owns its data, or it views read-only
memory); a view of someone's writable buffer (a ring slot, say) is copied instead, counted in
``pub_guard_copies`` and logged at DEBUG, so a forgotten ``release`` costs a copy, never
corrupted data. With ``release`` the caller vouches for every array of the message.

Why this split (docs/wire.md § 12 has the figures): a tracked zero-copy frame costs a round
trip through pyzmq's garbage-collector thread, 15-20 us, against 2-3 us to copy a
1.6 KiB peak list; a 256-512 KiB spectrum costs 180-390 us to copy (a fresh allocation and
its page faults) against ~15 us zero-copy. The daemon's processed spectra come from a
BufferPool, so a stuck subscriber costs pool misses (counted, allocation instead of
reuse), never a wait.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from ionstream.client import wire
from ionstream.daemon.buffers import owns_its_memory
from ionstream.daemon.security import CurveServer, check_bind_endpoint
from ionstream.daemon.zmqutil import close_and_wait

log = logging.getLogger("ionstream.daemon.publisher")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"

_STOP = object()


class PublisherError(RuntimeError):
    """The publisher thread could not start (bind failed, ...) or died."""


class Publisher:
    """Publishes ``[topic, header, buffer, ...]`` messages from one owner thread.

    Parameters
    ----------
    endpoint
        Where to bind: ``tcp://127.0.0.1:5556`` (default), ``tcp://127.0.0.1:*`` (any free
        port; read :attr:`endpoint` after :meth:`start`), ``ipc:///run/ionstream/pub``.
    source
        The source id written into every header (e.g. the source URL or an instrument name).
    queue_size
        Messages buffered between ``publish()`` and the socket before drops (messages).
    sndhwm
        ZeroMQ send high-water mark per subscriber (messages); see the module docstring.
    allow_remote
        Allow binding plain TCP beyond loopback (refused otherwise; CURVE needs no flag).
    curve
        A :class:`~ionstream.daemon.security.CurveServer` to encrypt and authenticate, or None.
    copy_threshold
        Arrays smaller than this (bytes) are copied in ``publish()``; larger ones are zero-copy.
    linger_s
        How long close() lets ZeroMQ deliver queued messages (s).
    context
        A ``zmq.Context``; default ``zmq.Context.instance()``.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, source: str = "", queue_size: int = 1024,
                 sndhwm: int = 1000, allow_remote: bool = False, curve: CurveServer | None = None,
                 copy_threshold: int = zmq.COPY_THRESHOLD, linger_s: float = 0.5,
                 context: zmq.Context | None = None):
        check_bind_endpoint(endpoint, allow_remote=allow_remote, curve=curve is not None, key="publish.endpoint")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if sndhwm < 0:
            raise ValueError(f"sndhwm must be >= 0 (0 = no limit), got {sndhwm!r}")
        self.requested_endpoint = endpoint
        self.endpoint = endpoint
        self.source = source
        self.session = os.urandom(8).hex()
        self.sndhwm = sndhwm
        self.copy_threshold = copy_threshold
        self.linger_s = linger_s
        self.curve = curve
        self._context = context or zmq.Context.instance()
        # A deque and an Event rather than queue.Queue: append/popleft are atomic and cost
        # ~0.1 us; only the wake-up of an idle publisher thread takes a lock.
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._queue_size = queue_size
        self._encoder = wire.HeaderEncoder(source, self.session)
        self._topics: dict[str, bytes] = {}
        self._seq_lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stopping = False
        self._closed = False
        self._subs_cond = threading.Condition()
        self._subscriptions: dict[str, int] = {}
        self._peers: dict[int, dict[str, int]] = {}  # connection (fd) -> its subscriptions (topic -> count)
        # counters (each written by one thread; read racily by stats(), which is fine for status)
        self.published = 0        # accepted by publish()
        self.drops_queue = 0      # publish() found the queue full
        self.drops_stopped = 0    # publish() after stop()
        self.sent = 0             # handed to ZeroMQ
        self.bytes_sent = 0
        self.send_errors = 0
        self.zero_copy_arrays = 0
        self.copied_arrays = 0
        self.guard_copies = 0     # large arrays copied because they were views without a release
        self._per_topic: dict[str, list[int]] = {}  # topic -> [published, dropped]
        self._pending: deque[tuple[zmq.MessageTracker, Callable[[], None]]] = deque()
        self.release_errors = 0

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "Publisher":
        """Start the owner thread; return once the socket is bound. PublisherError if it fails."""
        if self._thread is not None:
            raise PublisherError("publisher already started")
        self._thread = threading.Thread(target=self._run, name="ionstream-pub", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise PublisherError(f"publisher thread did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(1.0)
            raise PublisherError(f"cannot publish on {self.requested_endpoint}: {self._error}") from self._error
        log.info("publishing on %s%s", self.endpoint, " (CURVE)" if self.curve else "")
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Send what is queued, close the socket, join the thread. True if it ended in time."""
        if self._thread is None or self._stopping:
            return self._thread is None or not self._thread.is_alive()
        with self._seq_lock:  # no publish() is between its check and its append
            self._stopping = True
            self._queue.append(_STOP)  # after everything queued before it: that is sent first
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("publisher thread did not stop within %.1f s", timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop (if running); the publisher cannot be restarted."""
        if not self._closed:
            self.stop()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        """True once start() was called (the thread may have ended since)."""
        return self._thread is not None

    def __enter__(self) -> "Publisher":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the pipeline's side ------------------------------------------------------------
    def publish(self, topic: str, fields: Mapping[str, Any],
                arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray] = (),
                *, release: Callable[[], None] | None = None) -> bool:
        """Queue one message; never blocks. True if queued, False if dropped (counted).

        Parameters
        ----------
        topic
            ``peaks``, ``class``, ``spectrum``, ``trace``, ``status`` (docs/wire.md), or another
            lowercase name.
        fields
            Header fields: ``scan``, ``t_device_ns``, ``t_acq_ns``, ``t_dsp_ns``,
            ``t_infer_ns`` (ns since the epoch) and the topic's own fields. JSON-serialisable
            (NumPy scalars are fine); ``schema``, ``source``, ``session``, ``seq``,
            ``buffers`` and ``t_pub_ns`` are written by the publisher.
        arrays
            The buffers, in the topic's layout order (``wire.LAYOUTS``), or a mapping
            name -> array. Numeric dtypes only; non-contiguous or big-endian arrays are copied.
        release
            Called once, from the publisher thread (or from this call, if the message is
            dropped or fully copied), when the arrays may be written again. See the module
            docstring. Must be quick and must not raise.

        Raises
        ------
        ValueError, TypeError
            Bad topic, reserved or unserialisable field, wrong number of buffers, or a
            dtype that cannot travel (the message names it). Nothing is queued.
        """
        if self._thread is None:
            raise PublisherError("publish() before start()")
        topic_b = self._topics.get(topic)
        if topic_b is None:
            topic_b = self._topics[topic] = wire.check_topic(topic)
        header, wire_arrays = self._encoder.prepare(topic, fields, arrays)
        parts: list[Any] = []
        zero_copy = 0
        threshold = self.copy_threshold
        for wire_array, array in zip(wire_arrays, arrays.values() if isinstance(arrays, Mapping) else arrays):
            if wire_array is not array:
                parts.append(wire_array)  # already a private copy (made contiguous / little-endian)
            elif wire_array.nbytes < threshold:
                parts.append(wire_array.tobytes())  # small: copy now, the caller may reuse it at once
            elif release is None and not owns_its_memory(wire_array):
                # No release, so nothing tells the caller when the memory may change: a view of a
                # buffer someone reuses (a ring slot, a pool) would be read after it changed.
                parts.append(np.array(wire_array, copy=True))  # a private copy, like the case above
                self.guard_copies += 1
                log.debug("%s: a %d-byte array is a view of memory the caller does not own and no "
                          "release was given; copied (%d so far)", topic, wire_array.nbytes, self.guard_copies)
            else:
                parts.append(wire_array)  # zero-copy: kept alive (and unwritten, see release) until sent
                zero_copy += 1
        self.copied_arrays += len(parts) - zero_copy
        with self._seq_lock:  # one order per topic: the sequence number and the queue position agree
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            counts = self._per_topic.setdefault(topic, [0, 0])
            if self._stopping:
                self.drops_stopped += 1
                counts[1] += 1
                queued = False
            elif len(self._queue) >= self._queue_size:
                self.drops_queue += 1
                counts[1] += 1
                queued = False
            else:
                self._queue.append((topic_b, header + b',"seq":%d' % seq, parts, release if zero_copy else None))
                queued = True
                self.published += 1
                counts[0] += 1
                self.zero_copy_arrays += zero_copy
        if queued:
            self._wake.set()
        if release is not None and (not queued or not zero_copy):
            release()
        return queued

    def stats(self) -> dict[str, Any]:
        """Counters for the status topic and `ionstream status` (flat, ``pub_`` prefixed)."""
        with self._subs_cond:
            subscriptions = {("*" if not k else k): v for k, v in self._subscriptions.items() if v > 0}
        stats = {
            "pub_endpoint": self.endpoint,
            "pub_alive": self.alive,
            "pub_session": self.session,
            "pub_published": self.published,
            "pub_sent": self.sent,
            "pub_bytes_sent": self.bytes_sent,
            "pub_drops_queue": self.drops_queue,
            "pub_drops_stopped": self.drops_stopped,
            "pub_send_errors": self.send_errors,
            "pub_queue_depth": len(self._queue),
            "pub_queue_size": self._queue_size,
            "pub_sndhwm": self.sndhwm,
            "pub_zero_copy_arrays": self.zero_copy_arrays,
            "pub_copied_arrays": self.copied_arrays,
            "pub_guard_copies": self.guard_copies,
            "pub_pending_release": len(self._pending),
            "pub_subscriptions": subscriptions,
            "pub_per_topic": {t: {"published": c[0], "dropped": c[1]} for t, c in self._per_topic.items()},
        }
        if self.curve is not None:
            stats.update({f"pub_{k}": v for k, v in self.curve.stats().items()})
        return stats

    def wait_for_subscribers(self, count: int = 1, topic: str | None = None, timeout: float = 10.0) -> bool:
        """Wait until ``count`` subscribers (connections) have subscribed to ``topic`` (to
        anything, if None). True if they did within ``timeout`` (s).

        A subscriber is one connection, whatever its number of subscriptions: one subscribing
        to ``peaks`` and ``class`` counts once. A subscription reaches the publisher a little
        after the subscriber connects (ZeroMQ's "slow joiner"); messages published before it
        are not delivered to that subscriber. Tests, benchmarks and ``--wait-subscribers`` use
        this instead of sleeping.
        """
        def matches(subscribed: str) -> bool:
            return topic is None or topic.startswith(subscribed)

        def enough() -> bool:
            peers = list(self._peers.values())  # the owner thread replaces entries; copy first
            return sum(any(n > 0 and matches(t) for t, n in subs.items()) for subs in peers) >= count

        with self._subs_cond:
            return self._subs_cond.wait_for(enough, timeout)

    # ---- the owner thread -----------------------------------------------------------------
    def _run(self) -> None:
        sock = None
        curve_setup = False
        try:
            sock = self._context.socket(zmq.XPUB)
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, so counts are per subscriber
            sock.sndhwm = self.sndhwm
            sock.linger = int(self.linger_s * 1000)
            if self.curve is not None:
                self.curve.setup(sock)
                curve_setup = True
            try:
                sock.bind(self.requested_endpoint)
            except zmq.ZMQError as exc:
                raise PublisherError(f"bind failed: {exc.strerror}") from None
            self.endpoint = sock.get(zmq.LAST_ENDPOINT).decode()
        except BaseException as exc:  # reported by start(), which raises it in the caller
            self._error = exc
            self._started.set()
            if sock is not None:
                sock.close(0)
            if curve_setup:
                self.curve.teardown(self._context)
            return
        self._started.set()
        try:
            self._loop(sock)
        except BaseException:
            self._stopping = True  # publish() now drops (counted as drops_stopped) instead of queueing
            log.exception("publisher thread failed; nothing more will be published")
            raise
        finally:
            try:
                close_and_wait(sock, int(self.linger_s * 1000) + 1000)  # linger: deliver what is queued
            finally:
                if curve_setup:
                    self.curve.teardown(self._context)
                self._release_all(wait_s=self.linger_s)

    def _loop(self, sock: zmq.Socket) -> None:
        q, wake = self._queue, self._wake
        next_housekeeping = 0.0
        while True:
            wake.clear()
            while q:  # everything queued, then housekeeping, then sleep until publish() wakes us
                item = q.popleft()
                if item is _STOP:
                    return
                self._send(sock, item)
                now = time.monotonic()
                if now >= next_housekeeping:
                    next_housekeeping = now + 0.02
                    self._read_subscriptions(sock)
                    self._release_done()
            self._read_subscriptions(sock)
            self._release_done()
            if not q:
                wake.wait(0.02 if self._pending else 0.05)

    def _send(self, sock: zmq.Socket, item: tuple) -> None:
        topic_b, header, parts, release = item
        header += b',"t_pub_ns":%d}' % time.time_ns()  # closes the header (wire.close_header)
        flags = zmq.NOBLOCK | zmq.SNDMORE
        try:
            sock.send(topic_b, flags)
            if not parts:
                sock.send(header, zmq.NOBLOCK)
            else:
                sock.send(header, flags)
                last = len(parts) - 1
                trackers = []
                for i, part in enumerate(parts):
                    f = zmq.NOBLOCK if i == last else flags
                    if isinstance(part, bytes):
                        sock.send(part, f)
                    elif release is not None:
                        trackers.append(sock.send(part, f, copy=False, track=True))
                    else:
                        sock.send(part, f, copy=False)
                if release is not None:
                    self._pending.append((zmq.MessageTracker(*trackers), release))
                    release = None
        except zmq.ZMQError as exc:
            self.send_errors += 1
            if self.send_errors <= 3 or self.send_errors % 1000 == 0:
                log.warning("send failed (%s); counted, continuing (%d so far)", exc.strerror, self.send_errors)
        else:
            self.sent += 1
            self.bytes_sent += len(topic_b) + len(header) + sum(len(p) if isinstance(p, bytes) else p.nbytes
                                                                for p in parts)
        finally:
            if release is not None:  # failed before the tracker took it over
                self._call_release(release)

    def _read_subscriptions(self, sock: zmq.Socket) -> None:
        """Take the (un)subscriptions XPUB_VERBOSER passes up: per topic, and per connection.

        The connection is the message's source fd (ZMQ_SRCFD). A subscriber that goes away
        shows as unsubscriptions without a source: the connections whose fd is closed are
        dropped then.
        """
        changed = False
        while sock.poll(0, zmq.POLLIN):
            frame = sock.recv(copy=False)
            msg = frame.bytes
            if not msg:
                continue
            topic = msg[1:].decode("ascii", "replace")
            delta = 1 if msg[0] == 1 else -1 if msg[0] == 0 else 0
            self._subscriptions[topic] = max(0, self._subscriptions.get(topic, 0) + delta)
            try:
                fd = frame.get(zmq.SRCFD)
            except zmq.ZMQError:  # made by ZeroMQ for a closed connection: no source
                fd = -1
            if fd >= 0:
                subs = self._peers.setdefault(fd, {})
                subs[topic] = max(0, subs.get(topic, 0) + delta)
            elif delta > 0:  # a libzmq without ZMQ_SRCFD: each subscription counts as a subscriber
                self._peers[-1 - len(self._peers)] = {topic: 1}
            else:
                self._drop_closed_peers()
            changed = True
        if changed:
            with self._subs_cond:
                self._subs_cond.notify_all()

    def _drop_closed_peers(self) -> None:
        import stat

        for fd in [fd for fd in self._peers if fd >= 0]:
            try:
                alive = stat.S_ISSOCK(os.fstat(fd).st_mode)
            except OSError:
                alive = False
            if not alive:
                del self._peers[fd]

    def _release_done(self) -> None:
        pending = self._pending
        while pending and pending[0][0].done:
            self._call_release(pending.popleft()[1])
        # a later message may be done before an earlier one (another subscriber, another size)
        if len(pending) > 64:
            still = deque()
            for tracker, release in pending:
                if tracker.done:
                    self._call_release(release)
                else:
                    still.append((tracker, release))
            self._pending = still

    def _release_all(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while self._pending:
            tracker, release = self._pending.popleft()
            try:
                tracker.wait(max(0.0, deadline - time.monotonic()))
            except zmq.NotDone:
                pass  # the socket is closed; ZeroMQ will not send it any more
            self._call_release(release)

    def _call_release(self, release: Callable[[], None]) -> None:
        try:
            release()
        except Exception:
            self.release_errors += 1
            log.exception("a release callback raised; counted, continuing")
