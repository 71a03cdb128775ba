"""The status line on a real pseudo-terminal of a set width (issue 15 item 4)."""
import fcntl
import logging
import os
import pty
import struct
import termios

import pytest

from ionstream.daemon.statusline import StatusLine, format_status_line

SNAPSHOT = {
    "state": "running", "scans_per_s": 20.0, "MBps": 2.62, "peaks_per_scan": 41.0, "drops_total": 3,
    "crc_errors": 0, "resyncs": 0, "sequence_gaps": 0, "ring_fill": 0.12, "latency_p50_ms": 1.2,
    "latency_p99_ms": 2.9, "backend": "onnxruntime", "batch_mean": 1.0, "last_class": "small_molecule",
    "last_confidence": 0.99,
}


class Screen:
    """A minimal terminal: printable characters, CR, LF, ESC[K and autowrap at ``width``."""

    def __init__(self, width: int):
        self.width = width
        self.rows = [""]
        self.col = 0
        self.wraps = 0

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if text.startswith("\x1b[K", i):
                self.rows[-1] = self.rows[-1][: self.col]
                i += 3
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.rows.append("")
                self.col = 0
            else:
                if self.col >= self.width:  # autowrap
                    self.rows.append("")
                    self.col = 0
                    self.wraps += 1
                row = self.rows[-1].ljust(self.col)
                self.rows[-1] = row[: self.col] + ch + row[self.col + 1:]
                self.col += 1
            i += 1


@pytest.fixture
def pty_stream():
    """The slave side of a pty (80 columns, set with TIOCSWINSZ) and a reader of the master side."""
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # keep "\n" as written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)

    def set_width(cols: int) -> None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))

    set_width(80)
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")

    def read_all() -> str:
        stream.flush()
        chunks = []
        os.set_blocking(master, False)
        while True:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8")

    yield stream, read_all, set_width
    stream.close()
    os.close(master)


@pytest.fixture
def root_handler_on(request):
    """Point the root logger at a stream for one test, as setup_logging does; restore after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level

    def install(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)

    yield install
    root.handlers[:] = saved
    root.setLevel(level)


class TestOnAPty:
    def test_log_line_clears_the_status_line_first(self, pty_stream, root_handler_on):
        stream, read_all, _ = pty_stream
        root_handler_on(stream)
        status = StatusLine(stream=stream)
        screen = Screen(80)
        status.show(SNAPSHOT)
        logging.getLogger("ionstream.test").warning("source lost: reconnecting")
        status.show(SNAPSHOT)
        status.finish()
        screen.feed(read_all())
        assert screen.rows[0] == "WARNING source lost: reconnecting"   # alone on its row, status cleared
        assert screen.rows[1].startswith("running | 20.0 scans/s")      # redrawn below it
        assert screen.rows[2] == ""                                       # finish() ended the line
        assert screen.wraps == 0

    def test_fits_the_terminal_width_without_wrapping(self, pty_stream, root_handler_on):
        stream, read_all, set_width = pty_stream
        root_handler_on(stream)
        for cols in (100, 80, 60, 40):
            set_width(cols)
            screen = Screen(cols)
            status = StatusLine(stream=stream)
            for _ in range(5):
                status.show(SNAPSHOT)
            status.finish()
            screen.feed(read_all())
            assert screen.wraps == 0, cols
            assert [r for r in screen.rows if r] == [screen.rows[0]], (cols, screen.rows)  # one line, redrawn
            assert len(screen.rows[0]) < cols
            assert screen.rows[0].startswith("running | 20.0 scans/s | ") and "drops 3" in screen.rows[0]

    def test_not_hooked_after_finish(self, pty_stream, root_handler_on):
        stream, _, _ = pty_stream
        root_handler_on(stream)
        before = logging.getLogger().handlers[:]
        status = StatusLine(stream=stream)
        status.show(SNAPSHOT)
        assert logging.getLogger().handlers != before
        status.finish()
        assert logging.getLogger().handlers == before


class TestFormatStatus:
    def test_class_is_labelled(self):
        assert "class small_molecule 99%" in format_status_line(SNAPSHOT)

    def test_least_important_dropped_first(self):
        full = format_status_line(SNAPSHOT)
        assert "onnxruntime" in full and "peaks/scan" in full
        line = format_status_line(SNAPSHOT, 100)
        assert len(line) <= 100
        # ring, class and latency outlast the link details and the backend
        for kept in ("ring 12%", "class small_molecule 99%", "lat p50/p99", "drops 3"):
            assert kept in line
        assert "onnxruntime" not in line and "peaks/scan" not in line

    def test_essentials_at_any_width(self):
        assert format_status_line(SNAPSHOT, 30).startswith("running | 20.0 scans/s")
        assert len(format_status_line(SNAPSHOT, 10)) <= 10

    def test_alarm_outlasts_details(self):
        line = format_status_line({**SNAPSHOT, "reconnecting": True}, 60)
        assert "SOURCE LOST, reconnecting" in line and len(line) <= 60


def test_unhealthy_and_reloading_are_shown_and_kept_longest():
    from ionstream.daemon.statusline import format_status_line

    line = format_status_line({"state": "degraded", "health": "unhealthy", "scans_per_s": 0.0, "model_reload": "reloading"})
    assert line.startswith("degraded | UNHEALTHY | 0.0 scans/s") and "reloading model" in line
    narrow = format_status_line({"state": "running", "health": "unhealthy", "scans_per_s": 20.0, "drops_total": 5,
                            "crc_errors": 1, "ring_fill": 0.95}, width=40)
    assert "UNHEALTHY" in narrow and len(narrow) <= 40
