"""Worker-process lifecycle for issue 17's ``pipeline.mode = "processes"`` (building block).

Not wired into the pipeline yet: what is here is the part every worker process needs first,
that it never outlives the daemon. :func:`die_with_parent` asks Linux to SIGKILL this process
when its parent thread ends (``prctl(PR_SET_PDEATHSIG)``), and closes the race where the parent
died before the call. :class:`ParentWatch` is the portable fallback: it polls ``os.getppid()``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """Be killed (SIGKILL) when the parent dies; exit now if it already has.

    ``parent_pid``: the pid the parent had when it started this process. Returns True if the
    kernel will do it (Linux), False if the caller must watch the parent itself (ParentWatch).
    Note: the kernel signals when the parent *thread* that forked ends, so the daemon starts
    workers from a thread that lives as long as they do (its main thread or the supervisor).
    """
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody will signal us
        os._exit(0)
    return armed


class ParentWatch:
    """Exit this process (``os._exit(0)``) within ``interval_s`` seconds of its parent's death."""

    def __init__(self, parent_pid: int, interval_s: float = 0.5):
        self.parent_pid = parent_pid
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parent-watch", daemon=True)

    def start(self) -> "ParentWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if os.getppid() != self.parent_pid:
                os._exit(0)
