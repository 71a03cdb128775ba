"""Signals for long-running commands (the daemon, standalone record, simulate)."""
from __future__ import annotations

import os
import signal
import sys
import threading


class SignalHandler:
    """First SIGINT/SIGTERM asks for a clean stop; a second one exits at once with status
    128 + signal (130 for Ctrl-C, 143 for SIGTERM). SIGHUP asks for a reload."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _stop(self, signum, _frame) -> None:
        if self.stop_requested.is_set():
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now without draining\n")
            os._exit(128 + signum)
        self.stop_requested.set()
