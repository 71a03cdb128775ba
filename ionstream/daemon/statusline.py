"""The live status line: one redrawn line on a terminal, a plain log line otherwise.

On a terminal the line is fitted to the terminal's width (read at every redraw, so a resize
is followed): fields are dropped least important first, never wrapped. While the line is
shown, log records written to the same terminal clear it first and redraw it after, so a log
line never lands in the middle of the status line.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

log = logging.getLogger("ionstream.status")

CLEAR_LINE = "\r\x1b[K"   # carriage return, then erase to the end of the line (VT100/ECMA-48)
SEPARATOR = " | "


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def status_fields(s: dict[str, Any]) -> list[tuple[int, str]]:
    """``(importance, text)`` for each figure of a pipeline snapshot, in display order.

    Importance 0 is kept longest: what says whether data is flowing and being lost comes first,
    then alarms, ring, class and latency; link counters and details go first when space is short.
    """
    fields = [
        (0, f"{s.get('state', 'running')}"),
        (0, f"{_num(s.get('scans_per_s', 0.0))} scans/s"),
        (7, f"{_num(s.get('MBps', 0.0), ' MB/s', 2)}"),
        (1, f"drops {s.get('drops_total', 0)}"),
        (5, f"crc {s.get('crc_errors', 0)}"),
        (8, f"resync {s.get('resyncs', 0)}"),
        (6, f"gaps {s.get('sequence_gaps', 0)}"),
        (3, f"ring {100 * s.get('ring_fill', 0.0):.0f}%"),
    ]
    if "peaks_per_scan" in s:  # the daemon's; a standalone recorder picks no peaks
        fields.insert(3, (9, f"peaks/scan {_num(s['peaks_per_scan'])}"))
    if "latency_p50_ms" in s:
        fields.append((4, f"lat p50/p99 {_num(s['latency_p50_ms'], '', 1)}/{_num(s.get('latency_p99_ms'), ' ms', 1)}"))
    if s.get("backend"):
        where = " ".join(x for x in (s.get("backend_device"), s.get("backend_precision")) if x)
        fields.append((10, f"{s['backend']}{' ' + where if where else ''} b{_num(s.get('batch_mean', float('nan')))}"))
    if s.get("last_class"):
        fields.append((3, f"class {s['last_class']} {_num(100 * s.get('last_confidence', 0.0), '%', 0)}"))
    if s.get("recording"):
        fields.append((2, f"REC {s['recording']}"))
    if s.get("reconnecting"):
        fields.append((0, "SOURCE LOST, reconnecting"))
    if s.get("health", "ok") != "ok":  # the reasons are in the log (once) and in `ionstream status`
        fields.insert(1, (0, "UNHEALTHY"))
    if s.get("model_reload") == "reloading":
        fields.append((2, "reloading model"))
    return fields


def format_status_line(s: dict[str, Any], width: int | None = None) -> str:
    """One line from a pipeline snapshot (see Pipeline.snapshot), at most ``width`` characters.

    Without ``width`` every field is shown. With it, the least important fields are dropped
    until the line fits (ties: the rightmost first); if even the essential ones do not fit,
    the line is cut and ends with "…".
    """
    fields = status_fields(s)
    if width is None:
        return SEPARATOR.join(text for _, text in fields)
    width = max(width, 1)
    # Drop order: least important first, rightmost first among equals.
    order = sorted(range(len(fields)), key=lambda i: (fields[i][0], i), reverse=True)
    keep = set(range(len(fields)))
    line = SEPARATOR.join(fields[i][1] for i in sorted(keep))
    for i in order:
        if len(line) <= width or len(keep) == 1:
            break
        keep.discard(i)
        line = SEPARATOR.join(fields[j][1] for j in sorted(keep))
    if len(line) > width:
        line = line[: width - 1] + "…"
    return line


def terminal_width(stream: TextIO, default: int = 80) -> int:
    """Columns of the terminal ``stream`` writes to (``default`` when it is not one)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or default
    except (AttributeError, ValueError, OSError):
        return default


class _ClearingHandler(logging.Handler):
    """Wraps a log handler: clears the status line before a record, redraws it after."""

    def __init__(self, inner: logging.Handler, line: "StatusLine"):
        super().__init__(inner.level)
        self.inner = inner
        self.line = line

    def handle(self, record: logging.LogRecord) -> bool:  # inner handler's filters and lock apply
        with self.line._lock:
            self.line._clear()
            try:
                return self.inner.handle(record)
            finally:
                self.line._redraw()

    def emit(self, record: logging.LogRecord) -> None:  # not called: handle() delegates
        self.inner.emit(record)


class StatusLine:
    """Shows snapshots: redrawn in place on a TTY, one log line every ``log_interval_s`` otherwise.

    ``width``: the columns to fit (a number, or a callable asked at each redraw); default: the
    terminal's width. On a TTY, the first ``show()`` hooks the root logger's handlers so log
    lines clear the status line first; ``finish()`` (or leaving ``attached()``) unhooks them.
    """

    def __init__(self, stream: TextIO | None = None, log_interval_s: float = 10.0,
                 tty: bool | None = None, width: int | Callable[[], int] | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_interval_s = log_interval_s
        self._width = width
        self._last_log = 0.0
        self._line = ""          # what is on screen now ("" = nothing)
        self._lock = threading.RLock()
        self._hooked: list[tuple[logging.Handler, _ClearingHandler]] = []

    def columns(self) -> int:
        """The width the line is fitted to (one column is left free: no autowrap at the edge)."""
        if callable(self._width):
            return self._width()
        return self._width if self._width is not None else terminal_width(self.stream)

    def show(self, snapshot: dict[str, Any]) -> None:
        if self.tty:
            if not self._hooked:
                self._hook_logging()
            with self._lock:
                self._line = format_status_line(snapshot, max(1, self.columns() - 1))
                self._redraw()
        elif time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            log.info("status: %s", format_status_line(snapshot))

    def finish(self) -> None:
        """End the redrawn line so later output starts on a fresh line; unhook logging."""
        self._unhook_logging()
        with self._lock:
            if self.tty and self._line:
                self.stream.write("\n")
                self.stream.flush()
            self._line = ""

    @contextlib.contextmanager
    def attached(self) -> Iterator["StatusLine"]:
        """``with status.attached():`` show snapshots inside; finish() on the way out, always."""
        try:
            yield self
        finally:
            self.finish()

    # ---- drawing (caller holds the lock) ---------------------------------------------------
    def _clear(self) -> None:
        if self._line:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()

    def _redraw(self) -> None:
        if self._line:
            self.stream.write(CLEAR_LINE + self._line)
            self.stream.flush()

    # ---- logging cooperation ---------------------------------------------------------------
    def _hook_logging(self) -> None:
        root = logging.getLogger()
        with self._lock:
            for i, handler in enumerate(root.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, _ClearingHandler):
                    wrapper = _ClearingHandler(handler, self)
                    root.handlers[i] = wrapper
                    self._hooked.append((handler, wrapper))

    def _unhook_logging(self) -> None:
        root = logging.getLogger()
        with self._lock:
            for handler, wrapper in self._hooked:
                if wrapper in root.handlers:
                    root.handlers[root.handlers.index(wrapper)] = handler
            self._hooked.clear()
