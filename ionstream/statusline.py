"""The live status line: one redrawn line on a terminal, a plain log line otherwise."""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("ionstream.status")


def _num(value: float, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def format_status(s: dict[str, Any]) -> str:
    """One line from a pipeline snapshot (see Pipeline.snapshot)."""
    parts = [
        f"{s.get('state', 'running')}",
        f"{_num(s.get('scans_per_s', 0.0))} scans/s",
        f"{_num(s.get('MBps', 0.0), ' MB/s', 2)}",
        f"peaks/scan {_num(s.get('peaks_per_scan', float('nan')))}",
        f"drops {s.get('drops_total', 0)}",
        f"crc {s.get('crc_errors', 0)}",
        f"resync {s.get('resyncs', 0)}",
        f"gaps {s.get('sequence_gaps', 0)}",
        f"ring {100 * s.get('ring_fill', 0.0):.0f}%",
    ]
    if "latency_p50_ms" in s:
        parts.append(f"lat p50/p99 {_num(s['latency_p50_ms'], '', 1)}/{_num(s.get('latency_p99_ms'), ' ms', 1)}")
    if s.get("backend"):
        parts.append(f"{s['backend']} b{_num(s.get('batch_mean', float('nan')))}")
    if s.get("last_class"):
        parts.append(f"{s['last_class']} {_num(100 * s.get('last_confidence', 0.0), '%', 0)}")
    if s.get("recording"):
        parts.append(f"REC {s['recording']}")
    if s.get("reconnecting"):
        parts.append("SOURCE LOST, reconnecting")
    return " | ".join(parts)


class StatusLine:
    """Shows snapshots: redrawn in place on a TTY, one log line every ``log_interval_s`` otherwise."""

    def __init__(self, stream: TextIO | None = None, log_interval_s: float = 10.0,
                 tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_interval_s = log_interval_s
        self._last_log = 0.0
        self._width = 0

    def show(self, snapshot: dict[str, Any]) -> None:
        line = format_status(snapshot)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._width = len(line)
        elif time.monotonic() - self._last_log >= self.log_interval_s:
            self._last_log = time.monotonic()
            log.info("status: %s", line)

    def finish(self) -> None:
        """End the redrawn line so later log output starts on a fresh line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
