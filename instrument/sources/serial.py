"""``serial:///dev/ttyUSB0?baud=921600`` — a serial port through pyserial.

Options: baud (default 921600), timeout_s (read timeout, default 0.1), rtscts (0/1),
xonxoff (0/1). The path may be a udev symlink (e.g. /dev/serial/by-id/...), which is
what keeps working when an adapter is re-plugged and comes back as another ttyUSBn.
"""
from __future__ import annotations

import errno
import os
from typing import Any

import serial

from instrument.sources.base import (Source, SourceBusy, SourceConfigError, SourceDisconnected, SourceUnavailable,
                                    SourceURL)

OPTIONS = {"baud", "timeout_s", "rtscts", "xonxoff"}

# The port is held by another process: its flock (pyserial's exclusive=True: EWOULDBLOCK), or
# its TIOCEXCL (open() fails with EBUSY).
_BUSY_ERRNOS = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EBUSY}


def _busy_message(path: str) -> str:
    real = os.path.realpath(path)
    where = path if real == path else f"{path} ({real})"
    pids = lock_holders(real)
    who = f"pid {', '.join(map(str, pids))}" if pids else "pid unknown"
    return (f"serial port {where} is in use by another process ({who}); stop it (another ionstream "
            "daemon?) or choose another port")


def lock_holders(path: str, locks_file: str = "/proc/locks") -> list[int]:
    """Process ids holding a flock on ``path`` (Linux /proc/locks; [] where unknown).

    A pid from another PID namespace (a container) reads as that namespace's number or 0;
    0 is left out.
    """
    try:
        st = os.stat(path)
        with open(locks_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # /proc/locks: "1: FLOCK  ADVISORY  WRITE 4242 00:19:5 0 EOF" (major:minor in hex, inode).
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident and fields[4].isdigit():
            pid = int(fields[4])
            if pid and pid not in pids:
                pids.append(pid)
    return pids


def create(url: SourceURL) -> "SerialSource":
    url.check_options(OPTIONS)
    return SerialSource(url)


class SerialSource(Source):
    def __init__(self, url: SourceURL):
        super().__init__(url)
        self.path = url.path or url.netloc
        if not self.path:
            raise SourceConfigError(f"source {url.text!r}: no device path; expected serial:///dev/ttyUSB0")
        self.baud = url.option("baud", 921600, int)
        if self.baud <= 0:
            raise SourceConfigError(f"source {url.text!r}: baud must be a positive number of bits/s, e.g. 921600")
        self.timeout_s = url.option("timeout_s", 0.1, float)
        self.rtscts = bool(url.option("rtscts", 0, int))
        self.xonxoff = bool(url.option("xonxoff", 0, int))
        self._port: serial.Serial | None = None

    def open(self) -> None:
        if not os.path.exists(self.path):
            raise SourceUnavailable(f"{self.path} does not exist (adapter unplugged, or wrong path?)")
        try:
            self._port = serial.Serial(self.path, self.baud, timeout=self.timeout_s,
                                       rtscts=self.rtscts, xonxoff=self.xonxoff, exclusive=True)
        except PermissionError as exc:
            raise SourceUnavailable(
                f"no permission to open {self.path} ({exc}); add the user to the 'dialout' group or "
                "install the udev rule in docs/operations.md"
            ) from None
        except (serial.SerialException, OSError) as exc:
            if getattr(exc, "errno", None) in _BUSY_ERRNOS:
                raise SourceBusy(_busy_message(self.path)) from None
            raise SourceUnavailable(f"cannot open {self.path}: {exc}") from None

    def readinto(self, buf: memoryview) -> int:
        port = self._port
        if port is None:
            raise SourceDisconnected(f"{self.path} is not open")
        try:
            # What is waiting, or block up to the timeout for one byte (pyserial's ReaderThread idiom).
            data = port.read(min(port.in_waiting, len(buf)) or 1)
        except (serial.SerialException, OSError) as exc:
            raise SourceDisconnected(f"{self.path}: {exc}") from None
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "baud": self.baud}
