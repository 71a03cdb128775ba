"""Micro-batcher: groups feature vectors into batches for a classifier backend, in order.

Semantics are those of Triton's dynamic batcher: a batch is formed as soon as ``max_batch``
vectors are queued, or when the oldest queued vector has waited ``max_delay_ms`` (the *queue
delay*), whichever comes first; while the backend is busy, vectors keep queuing and the next
batch takes up to ``max_batch`` of them at once. ``max_delay_ms = 0`` sends whatever is queued
as soon as the backend is free (no waiting for company).

Usage (what the daemon does)::

    batcher = MicroBatcher(lambda: open_backend(bundle, "auto", max_batch=32),
                           n_features=bundle.feature_spec.bins, labels=bundle.labels,
                           max_batch=32, max_delay_ms=5.0, on_result=publish_class)
    batcher.start()                    # creates the backend *in the batcher thread*; raises if it fails
    ok = batcher.submit(seq, vector)   # copies the vector; False = dropped (queue full), counted
    ...
    batcher.stop()                     # drains the queue, delivers everything, closes the backend
    batcher.stats()                    # counters, batch-size histogram, queue-delay percentiles

Contract
--------
- Results are delivered in submission order, one :class:`ClassResult` per submitted vector,
  to ``on_result(result)`` (called in the batcher thread: keep it short, e.g. put it on the
  publisher's queue) or, without a callback, to the ``results`` queue.
- ``submit`` copies the vector into a preallocated slot, so the caller may reuse its buffer at
  once. Memory is bounded: ``queue_size`` slots of ``n_features`` float32, allocated up front.
  When the queue is full ``submit`` waits up to ``timeout`` seconds (``None``: until there is
  room, ``0``: not at all) and returns False if still full; the drop is counted.
- The batcher thread owns the backend: it creates it (so a CUDA context is current in the
  thread that uses it), runs every batch and closes it. A backend with ``max_in_flight > 1``
  (TensorRT: one execution context per CUDA stream) gets up to that many batches in flight,
  round-robin over its contexts; results are still delivered in order.
- A batch that fails is delivered as results with ``error`` set (index -1) and counted; the
  batcher keeps running.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("ionstream.inference")

DELAY_WINDOW = 8192
"""Queue delays (ns) kept for the percentiles in stats(): the most recent this many vectors."""


@dataclass(slots=True)
class ClassResult:
    """The classifier's answer for one submitted vector (times in ns)."""

    key: Any                  # what was passed to submit (e.g. the scan's sequence number)
    index: int                # top class index, -1 on error
    label: str | None         # labels[index] when labels were given
    confidence: float         # probability of the top class (0..1)
    probs: np.ndarray | None  # (classes,) float32 probabilities; the receiver may keep it
    batch_size: int           # size of the batch it ran in
    queue_delay_ns: int       # submit -> its batch was formed (the delay batching added)
    latency_ns: int           # submit -> result delivered
    error: str | None = None


class MicroBatcher:
    """See the module docstring.

    Parameters
    ----------
    backend_factory : callable
        Returns a started :class:`inference.backend.Backend`; called once, in the batcher thread.
    n_features : int
        Length of each feature vector (``bundle.feature_spec.bins``).
    max_batch : int
        Largest batch (vectors).
    max_delay_ms : float
        Longest a vector waits in the queue for its batch to fill (ms).
    queue_size : int
        Vectors that may wait (bounded memory); default ``8 * max_batch``, at least 64.
    on_result : callable, optional
        ``on_result(ClassResult)``, in order, in the batcher thread. Without it results go to
        :attr:`results` (a ``queue.Queue``).
    labels : sequence of str, optional
        Class labels, to fill ``ClassResult.label``.
    name : str
        Thread name.
    """

    def __init__(self, backend_factory: Callable[[], Any], *, n_features: int, max_batch: int = 32,
                 max_delay_ms: float = 5.0, queue_size: int | None = None,
                 on_result: Callable[[ClassResult], None] | None = None,
                 labels: Sequence[str] | None = None, name: str = "batcher"):
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
        if max_delay_ms < 0:
            raise ValueError(f"`max_delay_ms` must be >= 0 (ms), got {max_delay_ms}")
        if n_features < 1:
            raise ValueError(f"`n_features` must be >= 1, got {n_features}")
        self._factory = backend_factory
        self.n_features = int(n_features)
        self.max_batch = int(max_batch)
        self.max_delay_ms = float(max_delay_ms)
        self._max_delay_ns = int(max_delay_ms * 1e6)
        self.queue_size = int(queue_size or max(64, 8 * self.max_batch))
        if self.queue_size < self.max_batch:
            raise ValueError(f"`queue_size` ({self.queue_size}) must be >= max_batch ({self.max_batch})")
        self.labels = tuple(labels) if labels is not None else None
        self._on_result = on_result
        self.results: "queue.Queue[ClassResult]" = queue.Queue()

        # The queue: a ring of preallocated slots. head = oldest, count = queued.
        self._slots = np.zeros((self.queue_size, self.n_features), dtype=np.float32)
        self._keys: list[Any] = [None] * self.queue_size
        self._t_submit = np.zeros(self.queue_size, dtype=np.int64)
        self._head = 0
        self._count = 0
        self._cond = threading.Condition(threading.Lock())
        self._batch = np.zeros((self.max_batch, self.n_features), dtype=np.float32)

        # Counters (written by the batcher thread, except submitted/dropped under the lock).
        self.submitted = 0
        self.dropped = 0
        self.completed = 0
        self.errors = 0
        self.batches = 0
        self.batch_hist = np.zeros(self.max_batch + 1, dtype=np.int64)
        self._delays = np.zeros(DELAY_WINDOW, dtype=np.int64)
        self._n_delays = 0
        self.max_queue_delay_ns = 0
        self._infer_ns = collections.deque(maxlen=1024)
        self.backend_info: dict[str, Any] = {}

        self._stopping = False
        self._drain = True
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._reload: tuple[Callable[[], Any], threading.Event, list] | None = None
        self.error: BaseException | None = None   # set if the thread died of a bug

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> "MicroBatcher":
        """Start the thread and wait until its backend is ready (TensorRT may build an engine).

        Raises whatever the backend factory raised (e.g. BundleError, BackendError), or
        RuntimeError if the backend is not ready within ``timeout`` seconds.
        """
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop(drain=False, timeout=1.0)
            raise RuntimeError(f"classifier backend not ready within {timeout:g} s")
        if self._start_error is not None:
            self._thread.join(5.0)
            raise self._start_error
        return self

    def stop(self, drain: bool = True, timeout: float = 10.0) -> bool:
        """Stop the thread: with ``drain`` every queued vector is still classified and delivered.

        Returns True if the thread ended within ``timeout`` seconds.
        """
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    close = stop

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def started(self) -> bool:
        """True once start() was called (the thread may have ended since)."""
        return self._thread.ident is not None

    def __enter__(self) -> "MicroBatcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reload(self, backend_factory: Callable[[], Any], timeout: float = 300.0) -> None:
        """Replace the backend between batches (e.g. a new model bundle); order is kept.

        The new backend is created in the batcher thread; if that fails the old one stays and
        the error is raised here.
        """
        done, box = threading.Event(), []
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise RuntimeError("batcher is not running")
            self._reload = (backend_factory, done, box)
            self._cond.notify_all()
        if not done.wait(timeout):
            raise RuntimeError(f"backend reload not done within {timeout:g} s")
        if box and box[0] is not None:
            raise box[0]

    # -- producer side -----------------------------------------------------------------------
    def submit(self, key: Any, features: np.ndarray, timeout: float | None = None) -> bool:
        """Queue one feature vector (copied); False if the queue stayed full (counted as dropped)."""
        if features.shape != (self.n_features,):
            raise ValueError(f"`features` must have shape ({self.n_features},), got {features.shape}")
        with self._cond:
            if self._stopping:         # shutting down: refused, counted
                self.dropped += 1
                return False
            if self._count >= self.queue_size:
                if timeout == 0 or not self._cond.wait_for(
                        lambda: self._count < self.queue_size or self._stopping, timeout):
                    self.dropped += 1
                    return False
                if self._stopping:
                    self.dropped += 1
                    return False
            i = (self._head + self._count) % self.queue_size
            self._slots[i] = features
            self._keys[i] = key
            self._t_submit[i] = time.perf_counter_ns()
            self._count += 1
            self.submitted += 1
            if self._count == 1 or self._count >= self.max_batch:
                self._cond.notify_all()
        return True

    @property
    def queued(self) -> int:
        return self._count

    # -- the batcher thread ------------------------------------------------------------------
    def _run(self) -> None:
        backend = None
        try:
            try:
                backend = self._factory()
                self.backend_info = dict(backend.describe())
            except BaseException as exc:  # reported to start(), not swallowed
                self._start_error = exc
                return
            finally:
                self._started.set()
            inflight: collections.deque = collections.deque()
            while True:
                if self._reload is not None:
                    backend = self._do_reload(backend, inflight)
                    continue
                formed = self._form_batch(wait=not inflight)
                if formed is None:          # stopping, queue drained
                    break
                if formed is False:         # nothing ready yet: finish the oldest batch in flight
                    if inflight:
                        self._complete(inflight.popleft())
                    continue
                self._launch(backend, formed, inflight)
                if len(inflight) >= max(1, getattr(backend, "max_in_flight", 1)):
                    self._complete(inflight.popleft())
            while inflight:
                self._complete(inflight.popleft())
        except BaseException as exc:  # a bug: report once, loudly
            self.error = exc
            log.exception("classifier batcher thread died")
        finally:
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    log.exception("closing the classifier backend failed")
            with self._cond:
                self._stopping = True
                self._cond.notify_all()

    def _form_batch(self, wait: bool):
        """Take the next batch off the queue.

        Returns ``(n, keys, t_submit, t_formed)`` with the rows copied into ``self._batch``,
        False when nothing is ready and ``wait`` is False, None when stopping and drained.
        """
        cond = self._cond
        with cond:
            while True:
                if self._reload is not None:
                    return False
                if self._count == 0:
                    if self._stopping:
                        return None
                    if not wait:
                        return False
                    cond.wait()
                    continue
                if self._stopping and not self._drain:
                    self.dropped += self._count
                    self._head = (self._head + self._count) % self.queue_size
                    self._count = 0
                    cond.notify_all()
                    return None
                if self._count >= self.max_batch or self._stopping:
                    break
                deadline = int(self._t_submit[self._head]) + self._max_delay_ns
                remaining = deadline - time.perf_counter_ns()
                if remaining <= 0:
                    break
                if not wait:
                    return False
                cond.wait(remaining / 1e9)
            n = min(self._count, self.max_batch)
            head = self._head
        # Rows [head, head + n) stay ours until head moves, so copy them outside the lock.
        end = head + n
        if end <= self.queue_size:
            self._batch[:n] = self._slots[head:end]
            keys = self._keys[head:end]
            t_sub = self._t_submit[head:end].copy()
        else:
            k = self.queue_size - head
            self._batch[:k] = self._slots[head:]
            self._batch[k:n] = self._slots[:end - self.queue_size]
            keys = self._keys[head:] + self._keys[:end - self.queue_size]
            t_sub = np.concatenate([self._t_submit[head:], self._t_submit[:end - self.queue_size]])
        t_formed = time.perf_counter_ns()
        with cond:
            self._head = (head + n) % self.queue_size
            self._count -= n
            cond.notify_all()  # room for blocked producers
        return n, keys, t_sub, t_formed

    def _launch(self, backend, formed, inflight) -> None:
        n, keys, t_sub, t_formed = formed
        delays = t_formed - t_sub
        self._record_delays(delays)
        self.batches += 1
        self.batch_hist[n] += 1
        try:
            pending = backend.submit(self._batch[:n])
            error = None
        except Exception as exc:
            pending, error = None, f"{type(exc).__name__}: {exc}"
        inflight.append((pending, error, n, keys, t_sub, delays, t_formed))

    def _complete(self, item) -> None:
        pending, error, n, keys, t_sub, delays, t_formed = item
        probs = None
        if error is None:
            try:
                probs = pending.wait()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        now = time.perf_counter_ns()
        self._infer_ns.append(now - t_formed)
        if error is not None:
            self.errors += n
            if self.errors <= 3 * self.max_batch or self.batches % 1000 == 0:
                log.error("classifier batch of %d failed: %s (%d vectors failed so far)", n, error, self.errors)
            for j, (d, t) in enumerate(zip(delays.tolist(), t_sub.tolist())):
                self._deliver(ClassResult(keys[j], -1, None, 0.0, None, n, d, now - t, error))
            return
        top = probs.argmax(axis=1)
        conf = probs[np.arange(n), top].tolist()
        top = top.tolist()
        delays_l, t_sub_l = delays.tolist(), t_sub.tolist()
        labels = self.labels
        nl = len(labels) if labels else 0
        deliver = self._deliver
        for j in range(n):
            k = top[j]
            deliver(ClassResult(keys[j], k, labels[k] if k < nl else None, conf[j], probs[j], n,
                                delays_l[j], now - t_sub_l[j]))
        self.completed += n

    def _deliver(self, result: ClassResult) -> None:
        if self._on_result is None:
            self.results.put(result)
            return
        try:
            self._on_result(result)
        except Exception:
            log.exception("classifier result callback failed (result for %r)", result.key)

    def _do_reload(self, backend, inflight):
        factory, done, box = self._reload
        while inflight:                      # finish what the old backend started, in order
            self._complete(inflight.popleft())
        try:
            new = factory()
        except BaseException as exc:
            log.error("classifier reload failed, keeping the current backend: %s", exc)
            box.append(exc)
            new = None
        else:
            box.append(None)
            try:
                backend.close()
            except Exception:
                log.exception("closing the old classifier backend failed")
            self.backend_info = dict(new.describe())
            log.info("classifier backend reloaded: %s",  # "backend onnxruntime, precision fp32, ...", no repr
                     ", ".join(f"{k} {str(v).lower() if isinstance(v, bool) else v}"
                               for k, v in self.backend_info.items()))
        with self._cond:
            self._reload = None
        done.set()
        return new if new is not None else backend

    def _record_delays(self, delays: np.ndarray) -> None:
        n = len(delays)
        i = self._n_delays % DELAY_WINDOW
        if i + n <= DELAY_WINDOW:
            self._delays[i:i + n] = delays
        else:
            k = DELAY_WINDOW - i
            self._delays[i:] = delays[:k]
            self._delays[:n - k] = delays[k:]
        self._n_delays += n
        m = int(delays.max())
        if m > self.max_queue_delay_ns:
            self.max_queue_delay_ns = m

    # -- observability -----------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Clear the distributions (batch-size histogram, queue delays, batch times); counters stay."""
        self.batch_hist[:] = 0
        self._n_delays = 0
        self.max_queue_delay_ns = 0
        self._infer_ns.clear()

    def queue_delays_ns(self) -> np.ndarray:
        """The most recent queue delays (ns), up to DELAY_WINDOW of them (unordered)."""
        return self._delays[:min(self._n_delays, DELAY_WINDOW)].copy()

    def stats(self) -> dict[str, Any]:
        """Counters and distributions for `status` (delays in ms)."""
        d = self.queue_delays_ns()
        inf = np.fromiter(self._infer_ns, dtype=np.int64) if self._infer_ns else np.zeros(0, np.int64)
        pct = (lambda a, q: float(np.percentile(a, q)) / 1e6 if a.size else 0.0)
        hist = {int(b): int(c) for b, c in enumerate(self.batch_hist) if c}
        total = int(self.batch_hist.sum())
        return {
            "submitted": self.submitted, "completed": self.completed, "dropped": self.dropped,
            "errors": self.errors, "queued": self._count, "batches": self.batches,
            "mean_batch": float(sum(b * c for b, c in hist.items()) / total) if total else 0.0,
            "batch_hist": hist,
            "queue_delay_ms_p50": pct(d, 50), "queue_delay_ms_p99": pct(d, 99),
            "queue_delay_ms_max": self.max_queue_delay_ns / 1e6,
            "batch_ms_p50": pct(inf, 50), "batch_ms_p99": pct(inf, 99),
            "max_batch": self.max_batch, "max_delay_ms": self.max_delay_ms, "queue_size": self.queue_size,
            "backend": self.backend_info,
        }
