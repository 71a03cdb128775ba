"""Pipeline stages between the ring and the publisher: DSP workers and the in-order sequencer.

DSP workers are ring readers. Worker ``w`` of ``N`` processes ring index ``k`` when
``k % N == w`` and releases the others at once, so frames are distributed without a
dispatcher thread and without copies, and which worker handles a frame depends only on
its ring index, never on timing.

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

import numpy as np

from instrument.frames import FrameType
from instrument.ring import RingBuffer, Slot

log = logging.getLogger("ionstream.pipeline")


@dataclass(slots=True)
class ScanResult:
    """What one DSP worker made of one ring slot (times in ns since the epoch)."""

    index: int                    # ring index (global arrival order)
    sequence: int
    scan_number: int
    device_time_ns: int
    host_time_ns: int             # frame received
    t_dsp_ns: int = 0             # DSP finished
    kind: str = "scan"            # "scan", "status" or "error"
    payload: Any = None           # the processor's per-scan output (peaks, features, ...)
    meta: dict = field(default_factory=dict)


class DspWorkers:
    """N worker threads turning ring slots into ScanResults via ``process(slot) -> payload``."""

    def __init__(self, ring: RingBuffer, n_workers: int, make_processor: Callable[[], Callable[[Slot], Any]],
                 out: "queue.Queue[ScanResult]"):
        self.n = n_workers
        self._out = out
        self._stop = threading.Event()
        self.watermarks = [0] * n_workers
        self.processed = [0] * n_workers
        self.errors = 0
        self.busy_ns = [0] * n_workers
        self._readers = [ring.add_reader(f"dsp{w}") for w in range(n_workers)]
        start = self._readers[0]._cursor
        self.watermarks = [start] * n_workers
        self._threads = [threading.Thread(target=self._run, args=(w, make_processor()),
                                          name=f"dsp{w}", daemon=True) for w in range(n_workers)]

    @property
    def dropped(self) -> int:
        """Frames the ring overwrote before the DSP stage got to them (counted once)."""
        return max(r.dropped for r in self._readers)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
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

    def _run(self, w: int, process: Callable[[Slot], Any]) -> None:
        reader, n, out = self._readers[w], self.n, self._out
        try:
            while not self._stop.is_set():
                slot = reader.get(timeout=0.1)
                if slot is None:
                    if reader.ring.closed:
                        break
                    continue
                k = slot.stamp
                if k % n != w:
                    reader.release()
                    continue
                try:
                    result = self._process_one(k, slot, process, w)
                finally:
                    reader.release()
                out.put(result)
                self.watermarks[w] = k + 1
        finally:
            # Nothing more will come from this worker: once the ring is closed its head is
            # final, and every index below it that this worker did not produce was dropped.
            self.watermarks[w] = max(self.watermarks[w], reader.ring._head)
            reader.close()

    def _process_one(self, k: int, slot: Slot, process: Callable[[Slot], Any], w: int) -> ScanResult:
        h = slot.header
        result = ScanResult(k, h.sequence, h.scan_number, h.device_time_ns, slot.host_time_ns)
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
    """Restores ring order across DSP workers and hands each result to ``emit`` in order."""

    def __init__(self, workers: DspWorkers, results: "queue.Queue[ScanResult]",
                 emit: Callable[[ScanResult], None], start_index: int):
        self._workers = workers
        self._results = results
        self._emit = emit
        self._pending: dict[int, ScanResult] = {}
        self.next_index = start_index
        self.emitted = 0
        self.skipped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="sequencer", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
            if watermark > k:
                self.next_index = k + 1
                self.skipped += 1
                continue
            if not workers.alive and self._results.empty() and not self._pending:
                return  # every worker finished and everything was emitted
            self._drain(block=True)


def tic_only(slot: Slot) -> dict[str, Any]:
    """Minimal processing: the total ion current (sum of samples)."""
    return {"tic": float(np.sum(slot.samples(), dtype=np.float64))}
