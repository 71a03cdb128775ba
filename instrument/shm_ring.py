"""Ring slots in POSIX shared memory, so worker processes can read frames without a copy.

Building block of issue 17's ``pipeline.mode = "processes"`` (not wired into the pipeline yet):
``RingBuffer(..., shared=True)`` keeps its slots in one :class:`SharedSlots` segment; a worker
process maps the same segment with :meth:`SharedSlots.attach` and reads slot ``i`` as the
parent wrote it.

Segment names are ``ionstream-ring-<owner pid>-<random>``. The owner unlinks its segment when
the ring is freed (:meth:`RingBuffer.free`). If the owner is killed (SIGKILL, OOM killer) it
cannot; multiprocessing's resource tracker usually unlinks it then, and if that died too,
:func:`sweep_stale` (run at daemon start) removes every segment whose owner pid is gone.
"""
from __future__ import annotations

import logging
import os
import secrets
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

log = logging.getLogger("ionstream.ring")

PREFIX = "ionstream-ring-"
SHM_DIR = Path("/dev/shm")
ALIGN = 64  # bytes: each slot starts 64-byte aligned (the payload at 80 is then 16-byte aligned)


def _stride(slot_bytes: int) -> int:
    return -(-slot_bytes // ALIGN) * ALIGN


class SharedSlots:
    """``slots`` buffers of ``slot_bytes`` bytes in one shared-memory segment."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int, slot_bytes: int, owner: bool):
        self.shm = shm
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.owner = owner
        stride = _stride(slot_bytes)
        whole = np.ndarray((slots * stride,), np.uint8, buffer=shm.buf)
        self.views = [whole[i * stride:i * stride + slot_bytes] for i in range(slots)]

    @property
    def name(self) -> str:
        return self.shm.name

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> "SharedSlots":
        """A new segment owned (and later unlinked) by this process."""
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            shm = shared_memory.SharedMemory(name, create=True, size=slots * _stride(slot_bytes))
        except OSError as exc:
            raise OSError(f"cannot create {slots} x {slot_bytes} bytes of shared memory for the ring ({exc}); "
                          f"free space in {SHM_DIR} or lower ring.slots / ring.max_samples") from None
        return cls(shm, slots, slot_bytes, owner=True)

    @classmethod
    def attach(cls, name: str, slots: int, slot_bytes: int) -> "SharedSlots":
        """Map another process's segment (a worker). Never unlinks it: the owner does."""
        shm = shared_memory.SharedMemory(name)
        # Python < 3.13 registers an attached segment with this process's resource tracker,
        # which would unlink it when this process exits, under the owner's feet.
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 (no public API before 3.13)
        return cls(shm, slots, slot_bytes, owner=False)

    def unlink(self) -> None:
        """Owner: remove the segment's name (mappings stay valid until they are dropped)."""
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            self.owner = False


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove ring segments whose owner process is gone; returns the names removed."""
    removed = []
    try:
        entries = list(shm_dir.glob(PREFIX + "*"))
    except OSError:
        return removed
    for path in entries:
        pid_text = path.name[len(PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _owner_alive(int(pid_text)):
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("cannot remove the stale ring segment %s: %s", path, exc)
            continue
        removed.append(path.name)
        log.warning("removed shared memory %s left by process %s, which is gone", path.name, pid_text)
    return removed
