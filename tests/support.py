"""Helpers shared by the tests that run ionstream as a subprocess (not a test module)."""
import socket
import sys

IONSTREAM = [sys.executable, "-m", "ionstream.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
