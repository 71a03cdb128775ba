"""Ring buffer of device frames: preallocated slots, one producer, several read cursors.

Each slot holds one whole raw frame (header + payload + CRC) copied once from the
decoder, plus its decoded header and host receive time. Readers get the slot itself:
sample arrays are views into the slot, never copies. Several consumers (DSP, the
capture recorder, a spectrum tap) read the same frames through their own cursors, so a
frame is copied once however many consumers there are.

Concurrency (why no lock guards the slots and cursors)
-------------------------------------------------------
The producer is the only writer of ``_head`` and of slot contents; each reader is the
only writer of its own ``_cursor`` and ``_held``. Under CPython's GIL every attribute
load/store is atomic and all threads observe them in one global order (sequential
consistency), which is all the protocol below needs. It is *not* valid on a
free-threaded (no-GIL) build without adding memory barriers or a lock. (The wake-ups are not
lock-free: ``put()`` sets each reader's ``threading.Event``, which takes that event's lock,
once per reader per frame.)

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

Oversize frames
---------------
Slots are sized for the largest frame the protocol allows at the configured scan size
(:func:`slot_bytes_for`). A valid frame that is still bigger (more samples than configured)
cannot go into a slot and is not processed (``dropped_oversize``), but what was received is
still recorded: if a reader asked for oversize frames (``add_reader(..., oversize=True)``,
the capture recorder), the producer puts the frame in its place in the ring, in a buffer
allocated for it; such buffers hold at most ``oversize_bytes`` together (beyond that it
counts ``oversize_not_kept``). Other readers skip that ring index without seeing it. The
producer frees the buffer once every oversize reader has moved past it (or when it
overwrites the slot), so the budget only runs out while the recorder lags behind.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from instrument.frames import HEADER_SIZE, MAX_HEADER_SIZE, TRAILER_SIZE, AxisKind, FrameHeader, FrameType

log = logging.getLogger("ionstream.ring")

_WRITING = -1
_EMPTY = -2


def slot_bytes_for(max_samples: int) -> int:
    """Bytes of the largest valid SCAN frame with ``max_samples`` samples (docs/protocol.md):
    the longest header a version 1 decoder accepts (MAX_HEADER_SIZE, 1024 bytes), an explicit
    float64 m/z axis and float64 samples (16 bytes a sample), and the payload CRC. Slots of this
    size hold every frame of up to ``max_samples`` samples, whatever its header length, sample
    type or axis kind. Memory is committed only as far as frames fill a slot: 256 slots for
    65,536 samples reserve 256 MiB of address space, but 16-bit TOF scans touch 128 KiB each.
    """
    return MAX_HEADER_SIZE + 16 * max_samples + TRAILER_SIZE


class OverflowPolicy(str, enum.Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


class Slot:
    """One preallocated frame slot. Valid for a reader between get() and release()."""

    __slots__ = ("index", "stamp", "raw", "own_raw", "oversize", "nbytes", "header", "host_time_ns",
                 "host_mono_ns")

    def __init__(self, index: int, slot_bytes: int, buffer: np.ndarray | None = None):
        """``buffer``: the slot's bytes (64-byte aligned, e.g. in shared memory); default: its own."""
        self.index = index
        self.stamp = _EMPTY
        if buffer is None:
            # 64-byte aligned so the payload (at HEADER_SIZE = 80) is 16-byte aligned for SIMD.
            buf = np.empty(slot_bytes + 64, dtype=np.uint8)
            offset = (-buf.ctypes.data) % 64
            buffer = buf[offset:offset + slot_bytes]
        self.own_raw = buffer
        self.raw = self.own_raw     # or, while ``oversize``, a buffer allocated for one frame
        self.oversize = False       # holds a frame larger than a slot: only oversize readers see it
        self.nbytes = 0
        self.header: FrameHeader | None = None
        self.host_time_ns = 0       # wall clock (ns since the epoch): for headers and files
        self.host_mono_ns = 0       # time.monotonic_ns() when stored: for latency (no NTP steps)

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
    dropped_oversize: int = 0   # frame larger than a slot: not processed (see oversize_kept)
    oversize_kept: int = 0      # of those, handed to the oversize readers (the recorder)
    oversize_not_kept: int = 0  # of those, lost to the oversize readers too (side buffers full)
    last_oversize_bytes: int = 0  # size of the latest oversize frame (bytes)
    dropped_closed: int = 0     # put() after close() or while stopping
    blocked_s: float = 0.0      # block policy: seconds the producer waited for space


class RingReader:
    """One consumer's cursor. Only the owning thread may call get()/release().

    A *strided* reader (``stride`` N > 1, ``offset`` w) takes only the ring indices ``k`` with
    ``k % N == w``: the other indices are none of its business, so its cursor jumps N at a
    time, the producer wakes it only for its own indices (one wake-up per frame for N DSP
    workers, not N), and ``dropped`` counts only its own indices that were overwritten.
    """

    def __init__(self, ring: "RingBuffer", name: str, oversize: bool = False, *, stride: int = 1, offset: int = 0):
        if stride < 1 or not 0 <= offset < stride:
            raise ValueError(f"ring reader {name}: need stride >= 1 and 0 <= offset < stride, "
                             f"got stride {stride}, offset {offset}")
        self.ring = ring
        self.name = name
        self.oversize = oversize  # also gets frames larger than a slot (the recorder)
        self.stride = stride
        self.offset = offset
        self._cursor = self._own_at_or_after(ring._head)  # a new reader starts at the present
        self._held: int | None = None
        self._ready = threading.Event()
        self.dropped = 0  # own frames overwritten before this reader got to them

    def _own_at_or_after(self, k: int) -> int:
        """The first ring index >= k that this reader takes."""
        return k + (self.offset - k) % self.stride

    @property
    def cursor(self) -> int:
        """The next ring index this reader will take."""
        return self._cursor

    @property
    def lag(self) -> int:
        """Frames written but not yet read by this reader."""
        return max(0, -(-(self.ring._head - self._cursor) // self.stride))

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
                    if slot.oversize and not self.oversize:
                        self._skip_oversize(k)  # not for this reader: it was counted as dropped_oversize
                        continue
                    return slot
                # Overwritten (drop-oldest) or being overwritten: skip to the oldest still present.
                self._held = None
                newest_kept = self._own_at_or_after(max(k + 1, ring._head - ring.capacity))
                self.dropped += (newest_kept - k) // self.stride
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

    def _skip_oversize(self, k: int) -> None:
        self._held = None
        self._cursor = k + self.stride
        if self.ring._producer_waiting:
            self.ring._space.set()

    def release(self) -> None:
        """Give the held slot back to the producer."""
        if self._held is None:
            return
        self._cursor = self._held + self.stride
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
                 policy: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST, *,
                 oversize_bytes: int | None = None, shared: bool = False):
        """``slots`` frames of up to ``slot_bytes`` bytes each, preallocated. Larger frames go to
        oversize readers only, in buffers of at most ``oversize_bytes`` together (bytes; default
        8 x ``slot_bytes``). ``shared``: the slots live in one shared-memory segment
        (``self.shared``, :mod:`instrument.shm_ring`) that other processes can map; the owner
        calls :meth:`free` when every reader is done."""
        if slots < 2:
            raise ValueError(f"ring slots must be >= 2, got {slots}")
        if slot_bytes < HEADER_SIZE + 4:
            raise ValueError(f"ring slot_bytes must hold at least a frame header, got {slot_bytes}")
        if oversize_bytes is not None and oversize_bytes < 0:
            raise ValueError(f"ring oversize_bytes must be >= 0, got {oversize_bytes}")
        self.capacity = slots
        self.slot_bytes = slot_bytes
        self.oversize_bytes = 8 * slot_bytes if oversize_bytes is None else oversize_bytes
        self._side: list[Slot] = []  # slots holding an oversize frame's own buffer (producer only)
        self.policy = OverflowPolicy(policy)
        self.shared = None
        if shared:
            from instrument.shm_ring import SharedSlots

            self.shared = SharedSlots.create(slots, slot_bytes)
            self._slots = [Slot(i, slot_bytes, view) for i, view in enumerate(self.shared.views)]
        else:
            self._slots = [Slot(i, slot_bytes) for i in range(slots)]
        self._head = 0
        self._readers: tuple[RingReader, ...] = ()
        self._closed = False
        self._space = threading.Event()
        self._producer_waiting = False
        self.stats = RingStats()

    # ---- readers -------------------------------------------------------------
    def add_reader(self, name: str, *, oversize: bool = False, stride: int = 1, offset: int = 0) -> RingReader:
        """A new cursor starting at the present. ``oversize``: also get frames larger than a
        slot (the recorder: whatever was received is recorded); others never see them.
        ``stride``/``offset``: take only indices ``k % stride == offset`` (see RingReader)."""
        reader = RingReader(self, name, oversize, stride=stride, offset=offset)
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
        return min(1.0, max(0, max(self._head - r._cursor for r in readers)) / self.capacity)

    # ---- producer ------------------------------------------------------------
    def put(self, header: FrameHeader, frame: memoryview | bytes, host_time_ns: int,
            stop: threading.Event | None = None) -> bool:
        """Copy one raw frame into the next slot. Returns False if no reader will get it (counted).

        Under the block policy it waits for space, giving up when ``stop`` is set or the
        ring is closed. Never allocates, except for a frame larger than a slot kept for the
        oversize readers (see the module docstring); such a frame counts in
        ``dropped_oversize`` (not processed) even when it is kept (True).
        """
        nbytes = len(frame)
        if self._closed:
            self.stats.dropped_closed += 1
            return False
        if self._side:
            self._free_side_buffers()
        oversize = nbytes > self.slot_bytes
        if oversize and not self._keep_oversize(nbytes):
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
        if slot.oversize or oversize:
            self._reuse_for(slot, nbytes if oversize else 0)
        slot.raw[:nbytes] = np.frombuffer(frame, dtype=np.uint8)
        slot.nbytes = nbytes
        slot.header = header
        slot.host_time_ns = host_time_ns
        slot.host_mono_ns = time.monotonic_ns()
        slot.stamp = h
        self._head = h + 1
        self.stats.written += 1
        for r in readers:
            if r.stride == 1 or (h - r.offset) % r.stride == 0:  # wake only the reader(s) of index h
                r._ready.set()
        return True

    # ---- oversize frames (producer only) ------------------------------------------------
    def _keep_oversize(self, nbytes: int) -> bool:
        """Count a frame larger than a slot; True if it is to be kept for the oversize readers."""
        stats = self.stats
        stats.dropped_oversize += 1
        stats.last_oversize_bytes = nbytes
        if not any(r.oversize for r in self._readers):
            return False  # nobody records: it is simply not processed
        if sum(slot.raw.nbytes for slot in self._side) + nbytes > self.oversize_bytes:
            stats.oversize_not_kept += 1
            return False
        stats.oversize_kept += 1
        return True

    def _free_side_buffers(self) -> None:
        """Give back the buffers of oversize frames every oversize reader has moved past."""
        if not self._side:
            return
        floor = min((r._cursor for r in self._readers if r.oversize), default=self._head)
        for slot in [s for s in self._side if s.stamp < floor]:
            # The slot stays marked oversize: a slower ordinary reader must still skip it.
            slot.raw, slot.nbytes = slot.own_raw, 0
            self._side.remove(slot)

    def _reuse_for(self, slot: Slot, oversize_bytes: int) -> None:
        """Before writing ``slot`` (stamped WRITING): drop its oversize buffer, or give it one."""
        if slot in self._side:
            self._side.remove(slot)
        slot.raw = np.empty(oversize_bytes, np.uint8) if oversize_bytes else slot.own_raw
        slot.oversize = oversize_bytes > 0
        if slot.oversize:
            self._side.append(slot)

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

    def free(self) -> None:
        """Unlink the shared-memory segment, if any (after close() and every reader's end)."""
        if self.shared is not None:
            self.shared.unlink()

    @property
    def head(self) -> int:
        """The ring index the next put() will write (the number of frames ever put)."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._closed


class DropLog:
    """Logs a ring's drops at WARNING, rate-limited: the first drop of each class at once, then
    at most one line per class every ``interval_s`` seconds, with the count since its last line.

    Classes: ``oversize`` (frames larger than a slot: not processed; says whether they were kept
    for the recorder), ``oversize_not_kept`` (not recorded either), ``busy`` (drop-oldest: the
    incoming frame's slot was held), ``overwritten`` (drop-oldest: frames a reader had not read
    yet, per reader), ``closed`` (frames that came while stopping). The owner (the acquisition
    thread) calls :meth:`check` after each batch of frames and :meth:`flush` when it ends; it
    only compares a few counters unless something changed.
    """

    CLASSES = ("oversize", "oversize_not_kept", "busy", "overwritten", "closed")

    def __init__(self, ring: RingBuffer, *, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log):
        self.ring = ring
        self.interval_s = interval_s
        self._clock = clock
        self._log = logger
        self._logged = dict.fromkeys(self.CLASSES, 0)              # totals at the last line
        self._last_line = dict.fromkeys(self.CLASSES, float("-inf"))  # when that line was written (s)
        self.lines = 0

    def _totals(self) -> dict[str, int]:
        st = self.ring.stats
        return {"oversize": st.dropped_oversize, "oversize_not_kept": st.oversize_not_kept,
                "busy": st.dropped_busy, "overwritten": self._overwritten(), "closed": st.dropped_closed}

    def _overwritten(self) -> int:
        # A plain reader sees every frame, so plain readers that fell behind together lost the
        # same frames: the largest count is the number lost. Strided readers (the DSP workers)
        # each lose only their own indices: together they lost the sum.
        readers = self.ring._readers
        if not readers:
            return self._logged["overwritten"]
        plain = max((r.dropped for r in readers if r.stride == 1), default=0)
        return max(plain, sum(r.dropped for r in readers if r.stride > 1))

    def check(self, *, final: bool = False) -> None:
        """Write the lines that are due (``final``: every pending count, whatever the interval)."""
        now = self._clock()
        for name, total in self._totals().items():
            logged = self._logged[name]
            if total <= logged:
                self._logged[name] = total  # a reader that went away took its count with it
                continue
            first = logged == 0
            if first or final or now - self._last_line[name] >= self.interval_s:
                self._write(name, total - logged, total, first, now - self._last_line[name])
                self._logged[name] = total
                self._last_line[name] = now

    def flush(self) -> None:
        self.check(final=True)

    def _write(self, name: str, new: int, total: int, first: bool, since_s: float) -> None:
        ring, st = self.ring, self.ring.stats
        what = {
            "oversize": (f"frame(s) larger than a ring slot not processed (latest {st.last_oversize_bytes} bytes, "
                         f"a slot holds {ring.slot_bytes}; kept for the capture recorder: {st.oversize_kept} of "
                         f"{st.dropped_oversize}): the instrument sends more samples than ring.max_samples"),
            "oversize_not_kept": ("oversize frame(s) not recorded either: the recorder lags, and frames waiting "
                                  f"for it beyond a slot's size already hold the {ring.oversize_bytes} bytes allowed"),
            "busy": "frame(s) dropped on arrival: their ring slot was still being read (ring.policy drop-oldest)",
            "overwritten": ("frame(s) overwritten before a reader got them (ring.policy drop-oldest): "
                            + ", ".join(f"{r.name} {r.dropped}" for r in ring._readers if r.dropped)),
            "closed": "frame(s) arrived while the ring was closing",
        }[name]
        when = "" if first else f" in the last {since_s:.0f} s"
        self._log.warning("ring: %d %s%s (%d in total)", new, what, when, total)
        self.lines += 1
