"""``replay://path/to/capture.isc?speed=1.0|N|max&loop=0|1`` — replay a capture file.

The path is ``netloc + path`` of the URL, so ``replay://captures/run1.isc`` is relative
to the working directory and ``replay:///data/run1.isc`` is absolute.

Options:
  speed  1.0 (default) paces frames by the recorded host-time deltas; N > 0 scales the
         pace (2 = twice as fast); ``max`` (or ``inf``) emits as fast as the reader goes.
  loop   0 (default) ends with EndOfSource after the last record; 1 starts over for ever
         (soak tests). Each pass replays the same bytes; the frames' sequence numbers
         start over too, which the decoder counts as a device restart, not a gap.

Bit-exact: the bytes read are exactly the recorded frames, in order, as
``instrument.capture.iter_frames(reader, per_record=True)`` finds them (the one
definition every capture reader shares): a record that is not exactly one valid frame
contributes only the valid frames inside it, and is counted in ``invalid_records`` and
logged once, so replay, `capture info`, mzML export and reprocess agree on every file.
A torn tail and damaged records are ignored and logged once. Paced replay follows an absolute
schedule (no drift); negative host-time steps (a wall clock set back) count as zero.
A read returns only frames that are due, so the acquisition thread stamps each batch
close to its recorded pace.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from instrument.capture import CaptureError, CaptureFrames, CaptureReader, iter_frames, read_header
from instrument.sources.base import EndOfSource, Source, SourceConfigError, SourceURL

OPTIONS = {"speed", "loop"}
MAX_WAIT_S = 0.1  # the Source contract: readinto returns within ~0.1 s
log = logging.getLogger("ionstream.replay")


def create(url: SourceURL) -> "ReplaySource":
    url.check_options(OPTIONS)
    return ReplaySource(url)


def capture_path(url: SourceURL) -> Path:
    """The capture file a replay URL names (relative paths against the working directory)."""
    text = (url.netloc + url.path) if url.netloc else url.path
    if not text:
        raise SourceConfigError(f"source {url.text!r}: no capture path; expected replay://path/to/capture.isc")
    path = Path(text)
    if not path.exists() and "%" in text:
        path = Path(unquote(text))
    return path.expanduser()


def parse_speed(url: SourceURL) -> float:
    raw = url.options.get("speed", "1.0").strip().lower()
    if raw in ("max", "inf", "infinity"):
        return math.inf
    if raw.endswith("x"):  # "2x"
        raw = raw[:-1]
    try:
        speed = float(raw)
    except ValueError:
        speed = float("nan")
    if not speed > 0:  # also rejects NaN
        raise SourceConfigError(f"source {url.text!r}: option speed={url.options.get('speed')!r} "
                                "must be a positive number (1.0 = recorded pace) or max")
    return speed


class ReplaySource(Source):
    """Emits a capture's recorded frame bytes, paced or as fast as possible."""

    finite = True

    def __init__(self, url: SourceURL):
        super().__init__(url)
        self.path = capture_path(url)
        self.speed = parse_speed(url)
        loop = url.options.get("loop", "0").strip().lower()
        if loop not in ("0", "1", "false", "true", "no", "yes", ""):
            raise SourceConfigError(f"source {url.text!r}: option loop={loop!r} must be 0 or 1")
        self.loop = loop in ("1", "true", "yes")
        self.finite = not self.loop
        try:
            self.header, *_ = read_header(self.path)
        except FileNotFoundError:
            raise SourceConfigError(f"source {url.text!r}: capture file {self.path} does not exist") from None
        except IsADirectoryError:
            raise SourceConfigError(f"source {url.text!r}: {self.path} is a directory, not a capture file") from None
        except CaptureError as exc:
            raise SourceConfigError(f"source {url.text!r}: {exc}") from None
        # counters
        self.frames = 0        # frames emitted (whole or started)
        self.bytes = 0         # bytes emitted
        self.passes = 0        # completed passes over the file
        self.torn_tail_bytes = 0
        self.invalid_records = 0   # records that were not exactly one valid frame (first pass)
        self._reader: CaptureReader | None = None
        self._frames: CaptureFrames | None = None
        self._records = None
        self._pending = memoryview(b"")
        self._next: tuple[int, memoryview] | None = None   # read ahead, not yet due
        self._t_start = 0.0     # monotonic time of the first frame's schedule
        self._offset_ns = 0     # recorded time since the first frame, clamped deltas summed
        self._last_host = None
        self._warned_tail = False

    # ---- Source --------------------------------------------------------------------
    def open(self) -> None:
        if self._reader is not None:
            return  # a re-open after a (never raised) disconnect continues where it was
        try:
            self._reader = CaptureReader(self.path)
        except FileNotFoundError:
            raise SourceConfigError(f"capture file {self.path} disappeared") from None
        except CaptureError as exc:
            raise SourceConfigError(str(exc)) from None
        self._start_pass()
        self._t_start = time.monotonic()

    def readinto(self, buf: memoryview) -> int:
        if self._reader is None:
            self.open()
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
        size = len(buf)
        filled = 0
        paced = self.speed != math.inf
        while filled < size:
            if not self._pending:
                if not self._advance(paced, waited=filled > 0):
                    break
            n = min(size - filled, len(self._pending))
            buf[filled:filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        self.bytes += filled
        if filled == 0 and self._next is None and self._records is None:
            raise EndOfSource()
        return filled

    def close(self) -> None:
        reader, self._reader = self._reader, None
        self._records = None
        self._frames = None
        self._next = None
        self._pending = memoryview(b"")
        if reader is not None:
            reader.close()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": str(self.path.resolve()),
            "speed": "max" if self.speed == math.inf else self.speed,
            "loop": self.loop,
            "recorded": self.header.get("description"),
            "recorded_created": self.header.get("created"),
        }

    # ---- internals -----------------------------------------------------------------
    def _advance(self, paced: bool, waited: bool) -> bool:
        """Load the next frame into _pending if it is due. False: nothing now (or the end)."""
        if self._next is None:
            rec = self._read_record()
            if rec is None:
                return False
            self._next = rec
        t, frame = self._next
        if paced:
            last = self._last_host
            if last is not None and t > last:
                self._offset_ns += t - last
            due = self._t_start + self._offset_ns / 1e9 / self.speed
            wait = due - time.monotonic()
            if wait > 0:
                if waited:  # hand over what is already due; this frame waits for the next read
                    self._undo_offset(t, last)
                    return False
                time.sleep(min(wait, MAX_WAIT_S))
                if wait > MAX_WAIT_S:
                    self._undo_offset(t, last)
                    return False
            self._last_host = t
        self._next = None
        self._pending = frame
        self.frames += 1
        return True

    def _undo_offset(self, t: int, last: int | None) -> None:
        if last is not None and t > last:
            self._offset_ns -= t - last

    def _start_pass(self) -> None:
        self._frames = iter_frames(self._reader, per_record=True)
        self._records = iter(self._frames)

    def _read_record(self):
        """The next (host_time_ns, frame bytes), starting a new pass when looping; None at the end."""
        while self._records is not None:
            item = next(self._records, None)
            if item is not None:
                # per_record frames are views of the reader's immutable record bytes: no copy
                return item[0], item[1].raw
            reader, frames = self._reader, self._frames
            self.passes += 1
            self.torn_tail_bytes = reader.torn_tail_bytes
            if reader.torn_tail_bytes and not self._warned_tail:
                self._warned_tail = True
                log.warning("%s: torn tail of %d bytes after the last whole record (ignored)",
                            self.path, reader.torn_tail_bytes)
            if self.passes == 1:
                self.invalid_records = frames.invalid_records
                if reader.corrupt_bytes:
                    log.warning("%s: %d damaged bytes skipped between whole records", self.path,
                                reader.corrupt_bytes)
                if frames.invalid_records:
                    log.warning("%s: %d records were not exactly one valid device frame; only the valid "
                                "frames inside them were replayed", self.path, frames.invalid_records)
            if self.loop and reader.records > 0:
                self._start_pass()
                self._last_host = None  # the next pass starts right after the last frame
                continue
            self._records = None
        return None
