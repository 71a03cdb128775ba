"""Memory for zero-copy publishing: which arrays are safe to send without a copy, and a pool
of reusable arrays released by the publisher when ZeroMQ is done with them (see
:mod:`ionstream.daemon.publisher`, "Buffer lifetime").
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["BufferPool", "owns_its_memory"]


def owns_its_memory(array: np.ndarray) -> bool:
    """True if nothing but ``array`` itself can write its memory, so a zero-copy send is safe
    without a ``release``: it owns its data (a fresh array), or it views read-only memory (a
    read-only array, ``bytes``). A view of a writable array (a ring slot, a pooled or reused
    buffer, a slice of anything) is False: its owner may write it while ZeroMQ still reads it.
    """
    if array.flags.owndata:
        return True
    base = array.base
    while isinstance(base, np.ndarray):
        if base.base is None:
            return not base.flags.writeable
        base = base.base
    return isinstance(base, bytes)


class BufferPool:
    """Preallocated arrays for zero-copy publishing, recycled when the publisher releases them.

    ::

        pool = BufferPool(shape=(65536,), dtype=np.float32, count=16)
        buf, release = pool.acquire()      # never blocks: a fresh array if the pool is empty
        np.multiply(raw, gain, out=buf)
        publisher.publish("spectrum", fields, [mz, buf], release=release)

    ``acquire()`` never waits: when every pooled array is still held (a slow subscriber
    keeps messages queued in ZeroMQ), it allocates a new one (``misses`` counts them) and
    takes it into the pool on release if the pool has room. ``release`` is idempotent.
    """

    def __init__(self, shape: int | tuple[int, ...], dtype: Any, count: int):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.dtype = np.dtype(dtype)
        self.count = count
        self._free: list[np.ndarray] = [np.zeros(self.shape, self.dtype) for _ in range(count)]
        self._lock = threading.Lock()
        self._companions: dict[np.dtype, BufferPool] = {}
        self.misses = 0
        self.in_use = 0

    def companion(self, dtype: Any) -> "BufferPool":
        """A pool of the same shape and count for ``dtype``, made on first use and then shared.

        For a second array that travels with this pool's (an explicit m/z axis next to the
        intensities): every thread using this pool gets the same companion.
        """
        dtype = np.dtype(dtype)
        with self._lock:
            pool = self._companions.get(dtype)
            if pool is None:
                pool = self._companions[dtype] = BufferPool(self.shape, dtype, self.count)
        return pool

    def acquire(self) -> tuple[np.ndarray, Callable[[], None]]:
        """(array, release): write the array, pass ``release`` to ``publish``."""
        with self._lock:
            self.in_use += 1
            if self._free:
                # Last released, first reused: while the pool is not exhausted only a few of its
                # arrays are ever written, so the rest never become resident memory.
                array = self._free.pop()
            else:
                self.misses += 1
                array = None
        if array is None:
            array = np.empty(self.shape, self.dtype)
        done = False

        def release() -> None:
            nonlocal done
            with self._lock:
                if done:
                    return
                done = True
                self.in_use -= 1
                if len(self._free) < self.count:
                    self._free.append(array)

        return array, release

    def stats(self) -> dict[str, int]:
        return {"pool_size": self.count, "pool_in_use": self.in_use, "pool_misses": self.misses}
