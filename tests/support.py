"""Helpers shared by the tests (not a test module): the CLI as a subprocess, free ports, polling."""
import socket
import sys
import time
from collections.abc import Callable

# -P: the working directory is not put on sys.path, so a test run from a checkout imports the
# installed package (with its compiled cext), never the checkout's unbuilt sources.
IONSTREAM = [sys.executable, "-P", "-m", "ionstream.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float = 10.0, *, interval: float = 0.01,
               step: Callable[[], object] | None = None) -> bool:
    """Poll ``condition`` (made true by another thread or process) until it is true or ``timeout``
    seconds pass; the last evaluation's truth. Callers assert it: ``assert wait_until(...)``.
    ``step`` runs before each poll (a Qt app's ``processEvents``). A deadline, never a sleep that
    stands in for synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
