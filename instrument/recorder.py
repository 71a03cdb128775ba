"""The capture recorder: a ring reader that appends every raw frame to a capture file.

It reads the same ring slots as DSP through its own cursor (no second copy of the data)
and owns its CaptureWriter: one thread, one file. start()/stop(); stop drains what the
ring still holds for it, then flushes, fsyncs and closes the file.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from instrument.capture import CaptureWriter
from instrument.ring import RingBuffer

log = logging.getLogger("ionstream.recorder")


class Recorder:
    """Records frames from ``ring`` into ``path`` until stop()."""

    def __init__(self, ring: RingBuffer, path: str | Path, description: dict[str, Any], *,
                 fsync_interval_s: float = 1.0, compress: bool = False):
        self.path = Path(path)
        self._ring = ring
        # exclusive: never overwrite an earlier capture by reusing its name. The file is opened
        # before the ring reader exists: a refused path must not leave a reader that nobody
        # releases (under ring.policy "block" that would stop acquisition for good).
        self._writer = CaptureWriter(self.path, description, fsync_interval_s=fsync_interval_s,
                                     compress=compress, exclusive=True)
        self._reader = ring.add_reader(f"recorder:{self.path.name}", oversize=True)  # records every frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self.frames = 0
        self.error: str | None = None

    @property
    def dropped(self) -> int:
        """Frames the ring overwrote before the recorder got to them."""
        return self._reader.dropped

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "Recorder":
        self._thread.start()
        log.info("recording to %s", self.path)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Drain what the ring holds for the recorder (up to ``timeout`` s), then close the file."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder did not finish within %.1f s; the file is closed as it stands", timeout)

    def _run(self) -> None:
        reader, writer = self._reader, self._writer
        last_flush = time.monotonic()
        try:
            while True:
                # While running, wait for frames; once stopping, take only what is already there.
                slot = reader.get(timeout=0.0 if self._stop.is_set() else 0.2)
                if slot is None:
                    if self._stop.is_set() or self._ring.closed:
                        break
                    writer.flush()  # idle: let the writer fsync on schedule
                    continue
                try:
                    writer.append(slot.frame, slot.host_time_ns)
                finally:
                    reader.release()
                self.frames += 1
                # Hand buffered records to the OS often, so a SIGKILL loses at most ~0.2 s of
                # frames even while the stream never pauses (fsync still follows its own interval).
                if time.monotonic() - last_flush > 0.2:
                    writer.flush()
                    last_flush = time.monotonic()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("recording to %s failed; acquisition continues without it", self.path)
        finally:
            reader.close()
            writer.close()
            log.info("recording closed: %s (%d frames)", self.path, self.frames)
