"""The benchmarks' instrument in a process of its own: the simulator's frames over TCP.

    python -m ionstream.benchmarks.feeder "sim://?rate=0&samples=65536&seed=3&repeat=64"
    # prints "tcp: 127.0.0.1:PORT", serves one client, exits when it goes (or this parent dies)

In-process (``sim://``), the simulator runs under the pipeline's interpreter lock and on its
cores, so a benchmark would measure both. Here it is a separate process feeding a TCP socket,
as a network bridge to a real instrument would; ``sendall`` blocks while the pipeline's socket
buffer is full, so with ring policy ``block`` the feeder waits for the pipeline (the sustained
rate with zero drops), and with ``rate=R`` it is paced by the simulator's own pacer.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from instrument.sources.base import EndOfSource, SourceURL
from instrument.sources.sim import create as create_sim

CHUNK = 1 << 20  # bytes handed to sendall at once


@dataclass
class Feeder:
    """A running feeder process (the parent's handle): ``url`` is what the pipeline reads."""

    process: subprocess.Popen
    url: str

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the feeder (it also ends by itself when its client disconnects)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def start_feeder(sim_url: str, timeout_s: float = 30.0) -> Feeder:
    """Start ``python -m ionstream.benchmarks.feeder SIM_URL`` and wait for its port (``tcp://...``)."""
    process = subprocess.Popen([sys.executable, "-m", "ionstream.benchmarks.feeder", sim_url],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # the child prints its port first, or exits (then: "")
    if not line.startswith("tcp: "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the benchmark feeder did not start (exit {process.returncode}); see its error above")
    return Feeder(process, f"tcp://{line[5:].strip()}")


def _accept(server: socket.socket, parent: int) -> socket.socket | None:
    """The one client, or None if the parent died first (then nobody will come)."""
    server.settimeout(0.2)
    while os.getppid() == parent:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        return conn
    return None


def serve(sim_url: str) -> int:
    """Serve the frames of ``sim_url`` to one TCP client until it disconnects; exit status."""
    source = create_sim(SourceURL.parse(sim_url))
    server = socket.create_server(("127.0.0.1", 0))
    print(f"tcp: 127.0.0.1:{server.getsockname()[1]}", flush=True)
    conn = _accept(server, os.getppid())
    server.close()
    if conn is None:
        return 0
    source.open()
    buf = memoryview(bytearray(CHUNK))
    with conn:
        try:
            while True:
                n = source.readinto(buf)
                if n:
                    conn.sendall(buf[:n])
        except (EndOfSource, BrokenPipeError, ConnectionResetError):
            return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith("sim://"):
        print("usage: python -m ionstream.benchmarks.feeder 'sim://?rate=...&samples=...'", file=sys.stderr)
        return 2
    try:
        return serve(argv[0])
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
