"""``tcp://HOST:PORT`` — frames from a TCP server (a network bridge, or `ionstream simulate --tcp`).

Options: timeout_s (read timeout, default 0.1), connect_timeout_s (default 2).
"""
from __future__ import annotations

import socket
from typing import Any

from instrument.sources.base import Source, SourceConfigError, SourceDisconnected, SourceUnavailable, SourceURL

OPTIONS = {"timeout_s", "connect_timeout_s"}


def create(url: SourceURL) -> "TcpSource":
    url.check_options(OPTIONS)
    return TcpSource(url)


def parse_address(url: SourceURL) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT``; SourceConfigError names a missing host or a bad port."""
    netloc = url.netloc
    if netloc.endswith("]") or ":" not in netloc:  # no ':PORT' ([::1] is a bracketed IPv6 host)
        host, port = netloc, ""
    else:
        host, _, port = netloc.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise SourceConfigError(f"source {url.text!r}: no host; expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    if not port:
        raise SourceConfigError(f"source {url.text!r}: no port; expected tcp://HOST:PORT, e.g. tcp://{url.netloc}:5555")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SourceConfigError(f"source {url.text!r}: port {port} is not 1..65535")
    return host, int(port)


class TcpSource(Source):
    def __init__(self, url: SourceURL):
        super().__init__(url)
        self.address = parse_address(url)
        self.timeout_s = url.option("timeout_s", 0.1, float)
        self.connect_timeout_s = url.option("connect_timeout_s", 2.0, float)
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0):
            raise SourceConfigError(f"source {url.text!r}: timeout_s and connect_timeout_s must be > 0 (s)")
        self._sock: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        except OSError as exc:
            raise SourceUnavailable(f"cannot connect to {self.address[0]}:{self.address[1]}: {exc}") from None
        sock.settimeout(self.timeout_s)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock = sock

    def readinto(self, buf: memoryview) -> int:
        sock = self._sock
        if sock is None:
            raise SourceDisconnected("not connected")
        try:
            n = sock.recv_into(buf)
        except socket.timeout:
            return 0
        except OSError as exc:
            raise SourceDisconnected(f"{self.address[0]}:{self.address[1]}: {exc}") from None
        if n == 0:
            raise SourceDisconnected(f"{self.address[0]}:{self.address[1]} closed the connection")
        return n

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "host": self.address[0], "port": self.address[1]}
