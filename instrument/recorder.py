"""The capture recorder: a ring reader that appends every raw frame to a capture file.

It reads the same ring slots as DSP through its own cursor (no second copy of the data)
and owns its CaptureWriter: one thread, one file at a time. start()/stop(); stop drains
what the ring still holds for it, then closes the file (END record, fsync).

Long recordings rotate (``rotate_bytes`` / ``rotate_s``): ``run1.isc`` is followed by
``run1.0001.isc``, ``run1.0002.isc``, ... each a whole capture whose header ``part`` names
its index and the part before it (docs/capture.md, "Rotation").

Disk space: below ``min_free_bytes`` free on the capture's filesystem, and on a write that
fails for lack of space (ENOSPC, EDQUOT), the recorder stops cleanly: the file is closed and
valid (a failed record is truncated away), a WARNING is logged, ``state`` becomes
``stopped_low_space`` and ``error`` says why. Any other exception in the thread sets
``state = "failed"`` and ``error``. Whenever the thread ends, for whatever reason, it closes
its ring reader first, so the ring never waits for a recorder that is no longer reading and
acquisition goes on.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from instrument.capture import CaptureWriter
from instrument.ring import RingBuffer

log = logging.getLogger("ionstream.recorder")

DEFAULT_MIN_FREE_BYTES = 1 << 30
"""Default free-space floor (1 GiB): below it recording stops."""
FLUSH_INTERVAL_S = 0.2
"""Seconds between flushes: closes a compressed block, so a kill loses at most this much."""
SPACE_CHECK_INTERVAL_S = 0.5
"""Seconds between free-space checks (also checked every SPACE_CHECK_BYTES written)."""
SPACE_CHECK_BYTES = 16 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

STATES = ("created", "recording", "stopped", "stopped_low_space", "failed")
"""``created`` (not started), ``recording``, ``stopped`` (by stop() or the ring's end),
``stopped_low_space`` (free-space floor or disk full), ``failed`` (any other error)."""


class LowDiskSpace(OSError):
    """Free space on the capture's filesystem is below the floor (errno ENOSPC)."""


def part_path(first: Path, index: int) -> Path:
    """The file of part ``index`` of a rotated recording: run1.isc, run1.0001.isc, ..."""
    if index == 0:
        return first
    suffix = first.suffix
    stem = first.name[:-len(suffix)] if suffix else first.name
    return first.with_name(f"{stem}.{index:04d}{suffix}")


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class Recorder:
    """Records frames from ``ring`` into ``path`` (and its rotated parts) until stop().

    Parameters
    ----------
    fsync_interval_s : seconds between fsyncs (the power-loss window; docs/capture.md).
    compress : zstd-compress records (a kill then loses the block in progress, <= 0.2 s).
    rotate_bytes : start a new part before a part would grow past this many bytes (0: never).
    rotate_s : start a new part after this many seconds (0: never).
    min_free_bytes : stop recording when less than this is free on the capture's filesystem
        (0: only a failed write stops it).

    The constructor creates the first file (never overwriting: FileExistsError) and checks
    the free space (LowDiskSpace) before it joins the ring, so a refused start leaves the
    ring untouched. Figures for the daemon: ``state``, ``error``, ``low_space``, ``stats()``.
    """

    def __init__(self, ring: RingBuffer, path: str | Path, description: dict[str, Any], *,
                 fsync_interval_s: float = 1.0, compress: bool = False, rotate_bytes: int = 0,
                 rotate_s: float = 0.0, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.path = Path(path)          # the first part
        self.current_path = self.path
        self._ring = ring
        self._description = description
        self._fsync_interval_s = fsync_interval_s
        self._compress = compress
        self.rotate_bytes = int(rotate_bytes)
        self.rotate_s = float(rotate_s)
        self.min_free_bytes = int(min_free_bytes)
        self._rotating = bool(self.rotate_bytes or self.rotate_s)
        self.state = "created"
        self.error: str | None = None
        self.low_space = False
        self.frames = 0                 # frames appended (all parts)
        self.parts = 1
        self._closed_frames = 0         # frames in parts already closed
        self._closed_bytes = 0
        self.free_bytes: int | None = None
        self._check_space()             # refuse to start below the floor
        self._writer = self._open_part(0, previous=None)
        # Join the ring only once the file exists: a refused start must not leak a reader.
        self._reader = ring.add_reader(f"recorder:{self.path.name}", oversize=True)  # records every frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    @classmethod
    def from_config(cls, ring: RingBuffer, path: str | Path, description: dict[str, Any], capture) -> "Recorder":
        """A recorder with the settings of a ``[capture]`` section (ionstream.config.CaptureConfig)."""
        return cls(ring, path, description, fsync_interval_s=capture.fsync_interval_s, compress=capture.compress,
                   rotate_bytes=capture.rotate_bytes, rotate_s=capture.rotate_s,
                   min_free_bytes=capture.min_free_bytes)

    # ---- public API ----------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Frames the ring overwrote before the recorder got to them."""
        return self._reader.dropped

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def frames_written(self) -> int:
        """Frames handed to the OS (all parts): in the files even if this process is killed now."""
        writer = self._writer
        return self._closed_frames + (writer.frames_written if not writer.closed else 0)

    def stats(self) -> dict[str, Any]:
        """Figures for status (sizes in bytes)."""
        writer = self._writer
        return {
            "state": self.state,
            "path": str(self.current_path),
            "first_path": str(self.path),
            "parts": self.parts,
            "frames": self.frames,
            "frames_written": self.frames_written,
            "bytes_written": self._closed_bytes + (writer.file_bytes if not writer.closed else 0),
            "dropped": self.dropped,
            "low_space": self.low_space,
            "free_bytes": self.free_bytes,
            "error": self.error,
        }

    def start(self) -> "Recorder":
        self.state = "recording"
        self._thread.start()
        log.info("recording to %s", self.path)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Drain what the ring holds for the recorder (up to ``timeout`` s), then close the file."""
        self._stop.set()
        if not self._thread.is_alive() and self.state == "created":  # never started
            self._finish()
            self.state = "stopped"
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder did not finish within %.1f s; the file is closed as it stands", timeout)

    # ---- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        reader = self._reader
        last_flush = last_check = time.monotonic()
        checked_at_bytes = 0
        part_started = time.monotonic()
        end_extra: dict[str, Any] = {}
        try:
            while True:
                # While running, wait for frames; once stopping, take only what is already there.
                slot = reader.get(timeout=0.0 if self._stop.is_set() else 0.2)
                now = time.monotonic()
                if slot is None:
                    if self._stop.is_set() or self._ring.closed:
                        break
                    self._writer.flush()  # idle: close a compressed block, fsync on schedule
                else:
                    try:
                        if self._rotation_due(len(slot.frame), now - part_started):
                            self._rotate()
                            part_started = now
                        self._writer.append(slot.frame, slot.host_time_ns)
                    finally:
                        reader.release()
                    self.frames += 1
                    if self._compress and now - last_flush > FLUSH_INTERVAL_S:
                        self._writer.flush()
                        last_flush = now
                written = self._writer.file_bytes
                if now - last_check >= SPACE_CHECK_INTERVAL_S or written - checked_at_bytes >= self._check_bytes():
                    last_check, checked_at_bytes = now, written
                    self._check_space()
        except OSError as exc:
            if isinstance(exc, LowDiskSpace) or exc.errno in _NO_SPACE:
                self._stopped_low_space(exc)
                end_extra = {"stopped": "low_space"}
            else:
                self._failed(exc)
        except Exception as exc:  # our own bug or the unexpected: report it, never die silently
            self._failed(exc)
        finally:
            self._finish(**end_extra)
        if self.state == "recording":
            self.state = "stopped"

    def _finish(self, **end_extra: Any) -> None:
        # The reader first: from here on the ring never waits for this recorder.
        self._reader.close()
        writer = self._writer
        try:
            writer.close(**end_extra)
        except Exception as exc:  # the file is as valid as the writer left it
            log.warning("closing %s: %s", writer.path, exc)
        self._closed_frames += writer.frames_written
        self._closed_bytes += writer.file_bytes
        log.info("recording closed: %s (%d frames in %d part(s))", self.current_path, self.frames, self.parts)

    def _stopped_low_space(self, exc: OSError) -> None:
        self.low_space = True
        self.state = "stopped_low_space"
        self.error = f"recording stopped: {exc.strerror or exc}"
        log.warning("recording to %s stopped: %s; the file is closed and valid, acquisition continues",
                    self.current_path, exc.strerror or exc)

    def _failed(self, exc: BaseException) -> None:
        self.state = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("recording to %s failed (%s); acquisition continues without it", self.current_path, self.error,
                  exc_info=not isinstance(exc, OSError))

    # ---- free space ---------------------------------------------------------------------
    def _check_bytes(self) -> int:
        """Bytes between space checks: small enough that a floor is not overrun by much."""
        return max(64 << 10, min(SPACE_CHECK_BYTES, self.min_free_bytes // 8))

    def _check_space(self) -> None:
        """LowDiskSpace if less than min_free_bytes is free where the capture is written."""
        directory = self.current_path.parent
        try:
            self.free_bytes = free_bytes(directory if str(directory) else Path("."))
        except OSError:
            return  # no statvfs here: only a failed write can stop the recording
        if self.min_free_bytes and self.free_bytes < self.min_free_bytes:
            raise LowDiskSpace(errno.ENOSPC, f"only {self.free_bytes:,} bytes free on {directory}, below the "
                                             f"[capture] min_free_bytes floor of {self.min_free_bytes:,}; "
                                             "free some space or record elsewhere")

    # ---- rotation -------------------------------------------------------------------------
    def _rotation_due(self, frame_bytes: int, part_age_s: float) -> bool:
        writer = self._writer
        if not self._rotating or writer.records == 0:
            return False
        if self.rotate_s and part_age_s >= self.rotate_s:
            return True
        # +28: the record's header and CRC. A compressed block in progress counts at its
        # uncompressed size (an upper bound), so a part exceeds rotate_bytes only by a single
        # record larger than rotate_bytes.
        size = writer.file_bytes + writer.pending_bytes + frame_bytes + 28
        return bool(self.rotate_bytes) and size > self.rotate_bytes

    def _open_part(self, index: int, previous: Path | None) -> CaptureWriter:
        path = part_path(self.path, index)
        part = ({"index": index, "previous": previous.name if previous else None, "first": self.path.name}
                if self._rotating else None)
        # exclusive: never overwrite an earlier capture by reusing its name.
        writer = CaptureWriter(path, self._description, fsync_interval_s=self._fsync_interval_s,
                               compress=self._compress, exclusive=True, part=part)
        self.current_path = path
        return writer

    def _rotate(self) -> None:
        self._check_space()
        old = self._writer
        new = self._open_part(self.parts, previous=old.path)
        old.close(next_part=new.path.name)
        self._closed_frames += old.frames_written
        self._closed_bytes += old.file_bytes
        self._writer = new
        self.parts += 1
        log.info("recording continues in %s (part %d)", new.path, self.parts - 1)
