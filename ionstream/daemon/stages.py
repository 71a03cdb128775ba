"""Pipeline stages between the ring and the publisher: DSP workers and the in-order sequencer.

DSP workers are strided ring readers: worker ``w`` of ``N`` reads only ring indices ``k``
with ``k % N == w`` (``RingBuffer.add_reader(stride=N, offset=w)``), and the producer wakes
only that worker for ``k``. So frames are distributed without a dispatcher thread, without
copies and with one wake-up per frame, and which worker handles a frame depends only on its
ring index, never on timing.

Each worker pushes its results to one queue and then advances its *watermark* (the next
ring index it may still produce). The sequencer emits index ``k`` when its result has
arrived, or skips it when worker ``k % N`` has moved past ``k`` without producing it
(the ring overwrote it, or it was not a scan). Because a worker enqueues before it moves
its watermark, and the sequencer drains the queue after reading watermarks, a result is
never mistaken for a skip. Subscribers therefore see scans in ring order, whatever the
worker count.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


from instrument.frames import FrameType
from instrument.ring import RingBuffer, RingReader, Slot

log = logging.getLogger("ionstream.daemon.stages")


@dataclass(slots=True)
class WorkerOutput:
    """What one DSP worker made of one ring slot (times in ns since the epoch)."""

    index: int                    # ring index (global arrival order)
    sequence: int
    scan_number: int
    device_time_ns: int
    host_time_ns: int             # frame received
    host_mono_ns: int = 0         # the same moment on the monotonic clock (latency)
    t_dsp_ns: int = 0             # DSP finished
    kind: str = "scan"            # "scan", "status" or "error"
    payload: Any = None           # the processor's per-scan output (peaks, features, ...)
    meta: dict = field(default_factory=dict)


class DspWorkers:
    """N worker threads turning ring slots into ScanResults via ``process(slot) -> payload``."""

    def __init__(self, ring: RingBuffer, n_workers: int, make_processor: Callable[[], Callable[[Slot], Any]],
                 out: "queue.Queue[WorkerOutput]"):
        self.n = n_workers
        self._ring = ring
        self._out = out
        self._make_processor = make_processor
        self._stop = threading.Event()
        self.processed = [0] * n_workers
        self.errors = 0
        self.busy_ns = [0] * n_workers
        self.restarts = 0
        self.failures: list[str | None] = [None] * n_workers   # why worker w last died
        start = ring.head
        self._readers = [self._reader(w) for w in range(n_workers)]
        self.watermarks = [start] * n_workers
        self._threads = [self._thread(w) for w in range(n_workers)]
        self._started = False

    def _reader(self, w: int) -> RingReader:
        return self._ring.add_reader(f"dsp{w}", stride=self.n, offset=w)

    def _thread(self, w: int) -> threading.Thread:
        return threading.Thread(target=self._run, args=(w, self._make_processor()), name=f"dsp{w}", daemon=True)

    @property
    def dropped(self) -> int:
        """Frames the ring overwrote before the DSP stage got to them (each worker counts its own)."""
        return sum(r.dropped for r in self._readers)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def states(self) -> dict[str, str]:
        """``{"dsp0": "running" | "stopped" | "failed: why", ...}`` for status."""
        out = {}
        for w, t in enumerate(self._threads):
            if t.is_alive():
                out[f"dsp{w}"] = "running"
            elif self.failures[w] is not None:
                out[f"dsp{w}"] = f"failed: {self.failures[w]}"
            else:
                out[f"dsp{w}"] = "stopped" if self._started else "not started"
        return out

    def start(self) -> None:
        self._started = True
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop at once (without draining); the normal end is the ring closing."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every worker; True if none is alive (also before start())."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        return not self.alive

    def restart_failed(self) -> list[int]:
        """Restart every worker that died of an error (the supervisor calls this once a tick).

        The dead worker's ring reader was closed when it died, so the frames it held are
        skipped by the sequencer and counted as dropped; the new worker reads from the ring's
        current head with a fresh processor. Returns the restarted worker numbers.
        """
        if self._stop.is_set() or self._ring.closed or not self._started:
            return []
        restarted = []
        for w, t in enumerate(self._threads):
            if t.is_alive() or self.failures[w] is None:
                continue
            reader = self._reader(w)
            self._readers[w] = reader
            self.watermarks[w] = max(self.watermarks[w], reader.cursor)
            self._threads[w] = self._thread(w)
            self._threads[w].start()
            self.restarts += 1
            restarted.append(w)
            log.warning("DSP worker %d restarted after: %s (restart %d)", w, self.failures[w], self.restarts)
        return restarted

    def _run(self, w: int, process: Callable[[Slot], Any]) -> None:
        reader, out = self._readers[w], self._out
        self.failures[w] = None
        try:
            while not self._stop.is_set():
                slot = reader.get(timeout=0.1)
                if slot is None:
                    if reader.ring.closed:
                        break
                    continue
                k = slot.stamp  # k % n == w: the reader is strided
                try:
                    result = self._process_one(k, slot, process, w)
                finally:
                    reader.release()
                while not self._stop.is_set():  # never block for ever on a stalled sequencer
                    try:
                        out.put(result, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                self.watermarks[w] = k + 1
        except BaseException as exc:  # a bug, not a bad scan (those are caught per scan): report it once
            self.failures[w] = f"{type(exc).__name__}: {exc}"
            log.exception("DSP worker %d died; the supervisor restarts it", w)
        finally:
            # Nothing more will come from this reader: every index below the ring's head that
            # this worker did not produce is dropped (a restarted worker starts at the head).
            self.watermarks[w] = max(self.watermarks[w], reader.ring.head)
            reader.close()

    def _process_one(self, k: int, slot: Slot, process: Callable[[Slot], Any], w: int) -> WorkerOutput:
        h = slot.header
        result = WorkerOutput(k, h.sequence, h.scan_number, h.device_time_ns, slot.host_time_ns, slot.host_mono_ns)
        t0 = time.perf_counter_ns()
        if h.frame_type != FrameType.SCAN:
            result.kind = "status"
            result.payload = bytes(slot.payload())
        else:
            try:
                result.payload = process(slot)
            except Exception as exc:  # one bad scan must not stop the stage
                self.errors += 1
                result.kind = "error"
                result.meta["error"] = f"{type(exc).__name__}: {exc}"
                if self.errors <= 3 or self.errors % 1000 == 0:
                    log.exception("DSP failed on scan %d (sequence %d); counted, continuing (%d so far)",
                                  h.scan_number, h.sequence, self.errors)
        self.busy_ns[w] += time.perf_counter_ns() - t0
        result.t_dsp_ns = time.time_ns()
        self.processed[w] += 1
        return result


class Sequencer:
    """Restores ring order across DSP workers and hands each result to ``emit`` in order.

    At most ``max_pending`` results wait for a missing index: beyond that the missing index
    is given up (counted in ``skipped`` and ``stalled``), so a stuck worker costs scans,
    never unbounded memory.
    """

    def __init__(self, workers: DspWorkers, results: "queue.Queue[WorkerOutput]",
                 emit: Callable[[WorkerOutput], None], start_index: int, *, max_pending: int = 4096):
        self._workers = workers
        self._results = results
        self._emit = emit
        self._pending: dict[int, WorkerOutput] = {}
        self.max_pending = max_pending
        self.next_index = start_index
        self.emitted = 0
        self.skipped = 0
        self.stalled = 0
        self.errors = 0
        self.error: str | None = None   # set if the thread died of a bug
        self._thread = threading.Thread(target=self._run, name="sequencer", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def state(self) -> str:
        if self._thread.is_alive():
            return "running"
        if self.error:
            return f"failed: {self.error}"
        return "stopped" if self._thread.ident is not None else "not started"

    @property
    def reorder_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True if the thread is not alive (also before start())."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _drain(self, block: bool) -> None:
        try:
            item = self._results.get(timeout=0.05) if block else self._results.get_nowait()
            self._pending[item.index] = item
            while True:
                item = self._results.get_nowait()
                self._pending[item.index] = item
        except queue.Empty:
            pass

    def _run(self) -> None:
        try:
            self._order()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the sequencer died")

    def _order(self) -> None:
        workers, n = self._workers, self._workers.n
        while True:
            k = self.next_index
            watermark = workers.watermarks[k % n]  # read BEFORE draining (see module docstring)
            self._drain(block=False)
            result = self._pending.pop(k, None)
            if result is not None:
                self.next_index = k + 1
                try:
                    self._emit(result)
                    self.emitted += 1
                except Exception:
                    self.errors += 1
                    log.exception("publishing scan %d failed; counted, continuing", result.scan_number)
                continue
            finished = not workers.alive and self._results.empty()
            if finished and not self._pending:
                # Every worker finished and everything was emitted; indices the workers moved
                # past without a result (the last ones of a dead worker) were dropped.
                self.skipped += max(0, max(workers.watermarks) - k)
                return
            if watermark > k or len(self._pending) > self.max_pending or finished:
                if watermark <= k:
                    self.stalled += 1
                    if self.stalled == 1 or self.stalled % 1000 == 0:
                        log.warning("DSP worker %d holds ring index %d while %d later results wait; "
                                    "giving it up (%d so far)", k % n, k, len(self._pending), self.stalled)
                self.next_index = k + 1
                self.skipped += 1
                continue
            self._drain(block=True)
