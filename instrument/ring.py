"""Ring buffer of device frames: preallocated slots, one producer, several read cursors.

Each slot holds one whole raw frame (header + payload + CRC) copied once from the
decoder, plus its decoded header and host receive time. Readers get the slot itself:
sample arrays are views into the slot, never copies. Several consumers (DSP, the
capture recorder, a spectrum tap) read the same frames through their own cursors, so a
frame is copied once however many consumers there are.

Concurrency (why there is no lock on the hot path)
---------------------------------------------------
The producer is the only writer of ``_head`` and of slot contents; each reader is the
only writer of its own ``_cursor`` and ``_held``. Under CPython's GIL every attribute
load/store is atomic and all threads observe them in one global order (sequential
consistency), which is all the protocol below needs. It is *not* valid on a
free-threaded (no-GIL) build without adding memory barriers or a lock.

* Publish: the producer fills slot ``h % N`` and stamps it with ``h`` before storing
  ``_head = h + 1``; a reader only touches slots with index < ``_head``.
* ``block`` policy: the producer never overwrites a slot any reader has not released
  (it waits while ``_head - min(cursors) >= N``).
* ``drop-oldest`` policy: the producer may overwrite the oldest slot ``k = h - N``.
  Before writing it stamps the slot WRITING, then checks whether a reader holds ``k``.
  A reader sets ``_held = k`` first, then checks the slot's stamp is still ``k``. With
  sequentially consistent stores (Dekker's argument) at least one side sees the other:
  either the reader sees the stamp changed and skips ``k`` (counting it dropped), or the
  producer sees ``k`` held and drops the *incoming* frame instead (counted as
  ``dropped_busy``). A slot a reader holds is therefore never overwritten under it.
  In the rare interleaving where both back off, both drops are counted.
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass

import numpy as np

from instrument.frames import HEADER_SIZE, AxisKind, FrameHeader, FrameType

_WRITING = -1
_EMPTY = -2


class OverflowPolicy(str, enum.Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


class Slot:
    """One preallocated frame slot. Valid for a reader between get() and release()."""

    __slots__ = ("index", "stamp", "raw", "nbytes", "header", "host_time_ns")

    def __init__(self, index: int, slot_bytes: int):
        self.index = index
        self.stamp = _EMPTY
        # 64-byte aligned so the payload (at HEADER_SIZE = 80) is 16-byte aligned for SIMD.
        buf = np.empty(slot_bytes + 64, dtype=np.uint8)
        offset = (-buf.ctypes.data) % 64
        self.raw = buf[offset:offset + slot_bytes]
        self.nbytes = 0
        self.header: FrameHeader | None = None
        self.host_time_ns = 0

    @property
    def frame(self) -> memoryview:
        """The whole raw frame as received (for the capture recorder)."""
        return memoryview(self.raw[: self.nbytes])

    @property
    def is_scan(self) -> bool:
        return self.header is not None and self.header.frame_type == FrameType.SCAN

    def samples(self) -> np.ndarray:
        """The scan's samples as a zero-copy view in the frame's own dtype."""
        h = self.header
        # header_size, not HEADER_SIZE: newer firmware may send a longer (compatible) header.
        start = h.header_size + (8 * h.n_samples if h.axis_kind == AxisKind.EXPLICIT else 0)
        dtype = h.sample_type.numpy_dtype
        return self.raw[start:start + h.n_samples * dtype.itemsize].view(dtype)

    def mz_axis(self) -> np.ndarray | None:
        """Explicit float64 m/z axis carried by the frame, or None for TOF-calibrated frames."""
        h = self.header
        if h.axis_kind != AxisKind.EXPLICIT:
            return None
        return self.raw[h.header_size:h.header_size + 8 * h.n_samples].view("<f8")

    def payload(self) -> np.ndarray:
        """The payload bytes as a uint8 view (status frames)."""
        h = self.header
        return self.raw[h.header_size:h.header_size + h.payload_size]


@dataclass
class RingStats:
    """Producer-side counters (frames)."""

    written: int = 0
    dropped_busy: int = 0       # drop-oldest: incoming frame dropped because its slot was held
    dropped_oversize: int = 0   # frame larger than a slot
    dropped_closed: int = 0     # put() after close() or while stopping
    blocked_s: float = 0.0      # block policy: seconds the producer waited for space


class RingReader:
    """One consumer's cursor. Only the owning thread may call get()/release()."""

    def __init__(self, ring: "RingBuffer", name: str):
        self.ring = ring
        self.name = name
        self._cursor = ring._head  # a new reader starts at the present
        self._held: int | None = None
        self._ready = threading.Event()
        self.dropped = 0  # frames overwritten before this reader got to them

    @property
    def cursor(self) -> int:
        """The next ring index this reader will take."""
        return self._cursor

    @property
    def lag(self) -> int:
        """Frames written but not yet read by this reader."""
        return self.ring._head - self._cursor

    def get(self, timeout: float | None = None) -> Slot | None:
        """The next slot, held until release(); None on timeout or when the ring is closed and drained."""
        ring = self.ring
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            k = self._cursor
            if k < ring._head:
                slot = ring._slots[k % ring.capacity]
                self._held = k
                if slot.stamp == k:
                    return slot
                # Overwritten (drop-oldest) or being overwritten: skip to the oldest still present.
                self._held = None
                newest_kept = max(k + 1, ring._head - ring.capacity)
                self.dropped += newest_kept - k
                self._cursor = newest_kept
                continue
            if ring._closed:
                return None
            self._ready.clear()
            if self._cursor < ring._head or ring._closed:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._ready.wait(remaining)

    def release(self) -> None:
        """Give the held slot back to the producer."""
        if self._held is None:
            return
        self._cursor = self._held + 1
        self._held = None
        if self.ring._producer_waiting:
            self.ring._space.set()

    def close(self) -> None:
        """Stop reading: the producer no longer waits for this reader."""
        self.release()
        self.ring._remove_reader(self)


class RingBuffer:
    """Preallocated frame ring. One producer thread; readers via add_reader()."""

    def __init__(self, slots: int = 256, slot_bytes: int = 1 << 18,
                 policy: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST):
        if slots < 2:
            raise ValueError(f"ring slots must be >= 2, got {slots}")
        if slot_bytes < HEADER_SIZE + 4:
            raise ValueError(f"ring slot_bytes must hold at least a frame header, got {slot_bytes}")
        self.capacity = slots
        self.slot_bytes = slot_bytes
        self.policy = OverflowPolicy(policy)
        self._slots = [Slot(i, slot_bytes) for i in range(slots)]
        self._head = 0
        self._readers: tuple[RingReader, ...] = ()
        self._closed = False
        self._space = threading.Event()
        self._producer_waiting = False
        self.stats = RingStats()

    # ---- readers -------------------------------------------------------------
    def add_reader(self, name: str) -> RingReader:
        reader = RingReader(self, name)
        self._readers = self._readers + (reader,)  # replaced whole: the producer iterates a snapshot
        return reader

    def _remove_reader(self, reader: RingReader) -> None:
        self._readers = tuple(r for r in self._readers if r is not reader)
        self._space.set()

    @property
    def fill(self) -> float:
        """Fraction of slots written but not yet read by the slowest reader (0..1)."""
        readers = self._readers
        if not readers:
            return 0.0
        return min(1.0, max(self._head - r._cursor for r in readers) / self.capacity)

    # ---- producer ------------------------------------------------------------
    def put(self, header: FrameHeader, frame: memoryview | bytes, host_time_ns: int,
            stop: threading.Event | None = None) -> bool:
        """Copy one raw frame into the next slot. Returns False if it was dropped (counted).

        Under the block policy it waits for space, giving up when ``stop`` is set or the
        ring is closed. Never allocates: the frame is copied into a preallocated slot.
        """
        nbytes = len(frame)
        if nbytes > self.slot_bytes:
            self.stats.dropped_oversize += 1
            return False
        if self._closed:
            self.stats.dropped_closed += 1
            return False
        h = self._head
        slot = self._slots[h % self.capacity]
        readers = self._readers
        if readers and h - min(r._cursor for r in readers) >= self.capacity:
            if self.policy is OverflowPolicy.BLOCK:
                if not self._wait_for_space(h, stop):
                    self.stats.dropped_closed += 1
                    return False
            else:
                oldest = h - self.capacity
                slot.stamp = _WRITING
                if any(r._held == oldest for r in readers):
                    slot.stamp = oldest
                    self.stats.dropped_busy += 1
                    return False
        slot.stamp = _WRITING
        slot.raw[:nbytes] = np.frombuffer(frame, dtype=np.uint8)
        slot.nbytes = nbytes
        slot.header = header
        slot.host_time_ns = host_time_ns
        slot.stamp = h
        self._head = h + 1
        self.stats.written += 1
        for r in readers:
            r._ready.set()
        return True

    def _wait_for_space(self, h: int, stop: threading.Event | None) -> bool:
        start = time.monotonic()
        self._producer_waiting = True
        try:
            while True:
                readers = self._readers
                if not readers or h - min(r._cursor for r in readers) < self.capacity:
                    return True
                if self._closed or (stop is not None and stop.is_set()):
                    return False
                self._space.clear()
                readers = self._readers
                if not readers or h - min(r._cursor for r in readers) < self.capacity:
                    return True
                self._space.wait(0.05)
        finally:
            self._producer_waiting = False
            self.stats.blocked_s += time.monotonic() - start

    def close(self) -> None:
        """No more frames: readers drain what is left, then get() returns None."""
        self._closed = True
        for r in self._readers:
            r._ready.set()
        self._space.set()

    @property
    def head(self) -> int:
        """The ring index the next put() will write (the number of frames ever put)."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._closed
