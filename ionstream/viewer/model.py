"""The viewer's Qt-free half: what was received (ViewerModel), the receiver thread, health rows.

The receiver thread (``ionstream-view-rx``) owns the Subscriber. For each message it only stores
a reference (the arrays are zero-copy views over the received frames) in :class:`ViewerModel`:
the latest spectrum, peaks, class, ion images and status replace the previous ones; trace points
go into a bounded history. It is stopped by a message on an inproc PAIR pipe and closes its sockets
itself. The Qt window (ionstream.viewer.window) draws snapshots of the model; tests drive the
model without Qt.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("ionstream.viewer.model")

TOPICS = ("peaks", "spectrum", "class", "trace", "image", "status")


# ---------------------------------------------------------------------------------------
# Model: what the receiver thread stores and the display reads (no Qt here)
# ---------------------------------------------------------------------------------------

@dataclass
class ModelSnapshot:
    """A consistent view of the model for one redraw (references, not copies)."""

    version: int
    peaks: Any = None                  # latest peaks Message
    spectrum: Any = None               # latest spectrum Message (its scan may lag the peaks)
    spectrum_peaks: Any = None         # the peaks Message of the spectrum's scan, if still held
    cls: Any = None                    # latest class Message
    image: Any = None                  # latest image Message (imaging runs only; docs/wire.md `image`)
    status: dict = field(default_factory=dict)   # latest status stats
    trace_names: list = field(default_factory=list)
    trace_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trace_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    events: list = field(default_factory=list)   # (t_s, trace name, kind, intensity)
    received: dict = field(default_factory=dict)
    missed: dict = field(default_factory=dict)
    restarts: int = 0
    errors: int = 0
    last_message_ns: int = 0
    rates: dict = field(default_factory=dict)    # messages/s per topic, over the last few s


class ViewerModel:
    """Latest messages and a bounded trace history; fed by one thread, read by another.

    ``history`` bounds the trace points kept (scans) and ``max_events`` the elution events.
    Every method is quick: the receiver calls :meth:`feed` once per message.
    """

    def __init__(self, history: int = 4000, max_events: int = 500):
        self._lock = threading.Lock()
        self._history = history
        self._version = 0
        self._peaks = self._spectrum = self._cls = self._image = None
        self._recent_peaks: deque = deque(maxlen=32)   # to pair a spectrum with its own peaks
        self._status: dict = {}
        self._names: list = []
        self._trace: deque = deque(maxlen=history)     # (t_s, values array)
        self._events: deque = deque(maxlen=max_events)
        self._t0_ns: int | None = None
        self._session = ""
        self._received: dict[str, int] = {}
        self._missed: dict[str, int] = {}
        self._restarts = 0
        self.errors = 0
        self._last_ns = 0
        self._rate_marks: deque = deque(maxlen=64)     # (monotonic s, received total per topic)

    def _time_s(self, header) -> float:
        t = header.get("t_device_ns", header.get("t_acq_ns", 0)) or 0
        if self._t0_ns is None:
            self._t0_ns = t
        return (t - self._t0_ns) / 1e9

    def feed(self, msg) -> None:
        """Store one :class:`ionstream.Message` (receiver thread)."""
        topic = msg.topic
        with self._lock:
            self._version += 1
            self._received[topic] = self._received.get(topic, 0) + 1
            if msg.gap:
                self._missed[topic] = self._missed.get(topic, 0) + msg.gap
            if msg.restarted or (msg.session and msg.session != self._session and self._session):
                self._restarts += 1
                self._reset_traces()
                self._image = None   # a restarted daemon's images start again (or not at all)
            self._session = msg.session or self._session
            self._last_ns = msg.received_ns
            if topic == "peaks":
                self._peaks = msg
                self._recent_peaks.append(msg)
            elif topic == "spectrum":
                self._spectrum = msg
            elif topic == "class":
                self._cls = msg
            elif topic == "image":
                self._feed_image(msg)
            elif topic == "status":
                self._status = dict(msg.header.get("stats") or {})
            elif topic == "trace":
                self._feed_trace(msg)

    def _feed_image(self, msg) -> None:
        # each message carries the whole images so far: the latest one is all the display needs
        images = msg.arrays.get("images")
        names = msg.header.get("names") or []
        if images is None or images.ndim != 3 or images.shape[0] != len(names):
            self.errors += 1   # not the layout of docs/wire.md: counted, not drawn
            return
        self._image = msg

    def _reset_traces(self) -> None:
        self._trace.clear()
        self._events.clear()
        self._names = []
        self._t0_ns = None

    def _feed_trace(self, msg) -> None:
        names = list(msg.header.get("names") or [])
        if names != self._names:
            self._reset_traces()
            self._names = names
        values = msg.arrays.get("values")
        if values is None or len(values) != len(names):
            return
        t = self._time_s(msg.header)
        self._trace.append((t, values))
        for ev in msg.header.get("events") or ():
            try:
                t_ev = (int(ev["t_ns"]) - self._t0_ns) / 1e9 if "t_ns" in ev else t
                self._events.append((t_ev, str(ev.get("trace", "tic")), str(ev.get("kind", "")),
                                     float(ev.get("intensity", math.nan))))
            except (TypeError, ValueError, KeyError):
                continue

    def snapshot(self) -> ModelSnapshot:
        """Everything the display needs, taken under the lock (display thread)."""
        now = time.monotonic()
        with self._lock:
            trace = list(self._trace)
            snap = ModelSnapshot(self._version, peaks=self._peaks, spectrum=self._spectrum, cls=self._cls,
                                 image=self._image,
                                 status=dict(self._status), trace_names=list(self._names),
                                 events=list(self._events), received=dict(self._received),
                                 missed=dict(self._missed), restarts=self._restarts, errors=self.errors,
                                 last_message_ns=self._last_ns)
            if self._spectrum is not None:
                scan, session = self._spectrum.scan, self._spectrum.session
                snap.spectrum_peaks = next((p for p in reversed(self._recent_peaks)
                                            if p.scan == scan and p.session == session), None)
            self._rate_marks.append((now, dict(self._received)))
        if trace:
            snap.trace_t = np.fromiter((t for t, _ in trace), dtype=np.float64, count=len(trace))
            snap.trace_values = np.vstack([v for _, v in trace]).astype(np.float64, copy=False)
        else:
            snap.trace_values = np.zeros((0, len(snap.trace_names)))
        # message rates over the last ~2 s of snapshots
        old = next(((t, r) for t, r in self._rate_marks if now - t <= 2.5), None)
        if old is not None and now - old[0] > 0.2:
            dt = now - old[0]
            snap.rates = {k: (v - old[1].get(k, 0)) / dt for k, v in snap.received.items()}
        return snap


@dataclass
class IonImage:
    """One ion image of an `image` message, ready to draw (see :func:`ion_image`)."""

    name: str                      # e.g. "tic" or "xic:760.5-760.7"
    names: list                    # every name in the message, in buffer order
    data: np.ndarray               # float32 [height, width], counts; NaN where no scan landed yet
    width: int                     # pixels
    height: int                    # pixels
    pixel_size_um: tuple           # (x, y) in µm; (1.0, 1.0) if the device does not say
    filled: int                    # pixels with a value
    pixels: int                    # width x height
    last: tuple                    # (x, y) of the newest pixel
    complete: bool
    levels: tuple                  # (low, high) counts for the colour scale, from the filled pixels


def ion_image(msg, name: str | None = None) -> IonImage | None:
    """The image ``name`` (the TIC when None or not in the message) of an `image` message.

    Colour levels span the 1st to 99.5th percentile of the pixels filled so far, so one hot
    pixel does not wash out the rest; None when ``msg`` is None.
    """
    if msg is None:
        return None
    h = msg.header
    names = [str(n) for n in h.get("names") or []]
    images = msg.arrays["images"]
    k = names.index(name) if name in names else (names.index("tic") if "tic" in names else 0)
    data = images[k]
    finite = data[np.isfinite(data)]
    if finite.size:
        lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
        levels = (lo, hi if hi > lo else lo + 1.0)
    else:
        levels = (0.0, 1.0)
    raster = h.get("raster") or {}
    size = (float(raster.get("pixel_size_x_um") or 1.0), float(raster.get("pixel_size_y_um") or 1.0))
    last = tuple(int(v) for v in (h.get("last") or (-1, -1)))
    return IonImage(name=names[k], names=names, data=data, width=int(data.shape[1]), height=int(data.shape[0]),
                    pixel_size_um=size, filled=int(h.get("filled", finite.size)),
                    pixels=int(h.get("pixels", data.size)), last=last, complete=bool(h.get("complete")),
                    levels=levels)


# ---------------------------------------------------------------------------------------
# Receiver thread
# ---------------------------------------------------------------------------------------

class Receiver:
    """Owns the :class:`ionstream.Subscriber`; feeds a :class:`ViewerModel` until stopped.

    ``start()`` waits until the subscriber is connected (RuntimeError after ``timeout``);
    ``stop()`` sends ``b"TERMINATE"`` over an inproc PAIR pipe and joins the thread.
    """

    def __init__(self, endpoint: str, model: ViewerModel, *, topics=None, curve=None, rcvhwm: int = 200):
        import zmq

        self.endpoint = endpoint
        self.model = model
        self.topics = topics
        self.curve = curve
        self.rcvhwm = rcvhwm
        self._ctx = zmq.Context.instance()
        self._pipe_addr = f"inproc://ionstream-view-{id(self):x}"
        self._pipe = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self.stats: dict[str, Any] = {}

    def start(self, timeout: float = 10.0) -> Receiver:
        import zmq

        self._pipe = self._ctx.socket(zmq.PAIR)
        self._pipe.linger = 0
        self._pipe.bind(self._pipe_addr)
        self._thread = threading.Thread(target=self._run, name="ionstream-view-rx", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"viewer receiver did not start within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"viewer receiver failed: {self.error}") from self.error
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        if self._thread is None:
            return True
        try:
            self._pipe.send(b"TERMINATE")
        except Exception:
            pass
        self._thread.join(timeout)
        self._pipe.close(0)
        return not self._thread.is_alive()

    def _run(self) -> None:
        import zmq

        from ionstream import Subscriber
        from ionstream.client.wire import WireError, WireVersionError

        pipe = self._ctx.socket(zmq.PAIR)
        pipe.linger = 0
        sub = None
        try:
            pipe.connect(self._pipe_addr)
            sub = Subscriber(self.endpoint, self.topics, curve=self.curve, rcvhwm=self.rcvhwm,
                             context=self._ctx)
            poller = zmq.Poller()
            poller.register(pipe, zmq.POLLIN)
            poller.register(sub.socket, zmq.POLLIN)
            self._started.set()
            model = self.model
            while True:
                ready = dict(poller.poll(1000))
                if pipe in ready:
                    pipe.recv()
                    break
                if sub.socket not in ready:
                    continue
                # drain what is waiting, then look at the pipe again
                for _ in range(256):
                    try:
                        msg = sub.recv(timeout=0)  # non-blocking: what is already here
                    except TimeoutError:
                        break
                    except WireVersionError as exc:
                        log.error("%s", exc)
                        model.errors += 1
                        continue
                    except WireError as exc:
                        log.debug("bad message: %s", exc)
                        model.errors += 1
                        continue
                    model.feed(msg)
        except BaseException as exc:  # reported once, to the display
            self.error = exc
            log.error("viewer receiver stopped: %s", exc)
        finally:
            if sub is not None:
                self.stats = sub.stats()
                sub.close()
            pipe.close(0)
            self._started.set()


# ---------------------------------------------------------------------------------------
# The window (Qt)
# ---------------------------------------------------------------------------------------

DROP_KEYS = ("drops_ring_dsp", "drops_ring_busy", "drops_ring_oversize", "drops_recorder", "drops_batcher")


def _fmt(value, spec: str = ".1f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return f"{value:{spec}}{unit}"
    except (TypeError, ValueError):
        return str(value)


def health_rows(snap: ModelSnapshot, now_ns: int | None = None, stale_s: float = 3.0) -> list[tuple[str, str, bool]]:
    """(name, value, bad) rows of the health panel (pure function: tested without Qt)."""
    s = snap.status
    now_ns = time.time_ns() if now_ns is None else now_ns
    age = (now_ns - snap.last_message_ns) / 1e9 if snap.last_message_ns else math.inf
    rows = [
        ("state", str(s.get("state", "no status yet")) + ("" if age < stale_s else f" (no data for {age:.0f} s)"
                                                           if math.isfinite(age) else ""),
         age >= stale_s or s.get("state") not in (None, "running")),
        ("health", str(s.get("health_reasons") or s.get("health", "–")), s.get("health", "ok") != "ok"),
        ("source", str(s.get("source", "–")), False),
        ("scans/s", _fmt(s.get("scans_per_s")), False),
        ("MB/s", _fmt(s.get("MBps"), ".2f"), False),
        ("ring fill", _fmt(100 * s["ring_fill"], ".0f", " %") if isinstance(s.get("ring_fill"), (int, float))
         else "–", isinstance(s.get("ring_fill"), (int, float)) and s["ring_fill"] > 0.8),
        ("latency p50 / p99", f"{_fmt(s.get('latency_p50_ms'))} / {_fmt(s.get('latency_p99_ms'))} ms", False),
        ("backend", str(s.get("backend", "–")), False),
        ("drops total", str(s.get("drops_total", "–")), bool(s.get("drops_total"))),
    ]
    for key in DROP_KEYS:
        if key in s:
            rows.append(("  " + key[len("drops_"):].replace("_", " "), str(s[key]), bool(s[key])))
    rows += [
        ("CRC errors / gaps", f"{s.get('crc_errors', '–')} / {s.get('sequence_gaps', '–')}",
         bool(s.get("crc_errors") or s.get("sequence_gaps"))),
        ("recording", str(s.get("recording") or "no"), False),
        ("viewer: received", ", ".join(f"{t} {n}" for t, n in sorted(snap.received.items())) or "nothing yet",
         not snap.received),
        ("viewer: missed", str(sum(snap.missed.values())), bool(sum(snap.missed.values()))),
    ]
    return rows


def top_peaks(mz: np.ndarray, intensity: np.ndarray, k: int, min_separation: float = 0.0) -> np.ndarray:
    """Indices of up to ``k`` tallest peaks, tallest first, no two closer than ``min_separation`` (m/z).

    The separation keeps labels readable: an isotope cluster gets one label, on its tallest peak.
    """
    if k <= 0 or len(intensity) == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.argsort(intensity, kind="stable")[::-1]
    if min_separation <= 0:
        return order[:k]
    chosen: list[int] = []
    for i in order[: max(k * 20, 200)]:
        if all(abs(mz[i] - mz[j]) >= min_separation for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return np.asarray(chosen, dtype=np.intp)


