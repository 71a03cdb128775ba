"""`ionstream simulate`: emit device frames from the simulated instrument.

    ionstream simulate --count 100 > frames.bin       # stdout (never to a terminal)
    ionstream simulate --out frames.bin --duration 10s
    ionstream simulate --tcp 5555                     # then: ionstream run --source tcp://127.0.0.1:5555
    ionstream simulate --pty                          # prints "pty: /dev/pts/N"; then
                                                      # ionstream run --source serial:///dev/pts/N
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import socket
import sys
import threading
import time
import tty
from collections import deque

from ionstream.cli.common import SignalHandler, parse_duration

HELP = "emit device frames from the simulated instrument (stdout, file, TCP or pseudo-terminal)"
DESCRIPTION = (
    "Run the built-in simulated instrument (a looping LC-MS run, see docs/simulator.md) and write its "
    "device frames (docs/protocol.md) to stdout, a file (--out), TCP clients (--tcp) or a "
    "pseudo-terminal (--pty). The same --seed and settings give byte-identical frames. "
    "Ctrl-C or SIGTERM stop it cleanly."
)
log = logging.getLogger("ionstream.simulate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=20.0, metavar="HZ",
                        help="scans per second (0 = as fast as possible; default %(default)s)")
    parser.add_argument("--samples", type=int, default=65536, metavar="N", help="samples per scan (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="run seed (default %(default)s)")
    parser.add_argument("--dtype", choices=("uint16", "int16", "float32"), default="uint16",
                        help="sample dtype on the wire (default %(default)s)")
    stop = parser.add_argument_group("when to stop (default: when killed)")
    stop.add_argument("--count", type=int, metavar="N", help="stop after N scans")
    stop.add_argument("--duration", type=parse_duration, metavar="TIME", help="stop after TIME (e.g. 10s, 5m)")
    run = parser.add_argument_group("simulated run")
    run.add_argument("--cycle", type=float, default=60.0, metavar="S",
                     help="length of the chromatographic run in s; it loops (default %(default)s)")
    run.add_argument("--compounds", type=int, default=32, metavar="N", help="compounds in the run (default %(default)s)")
    run.add_argument("--status-interval", type=float, default=1.0, metavar="S",
                     help="a STATUS frame every S s of device time, 0 = none (default %(default)s)")
    run.add_argument("--ms-level", type=int, default=1, help="MS level in the headers (default %(default)s)")
    run.add_argument("--polarity", choices=("positive", "negative"), default="positive",
                     help="polarity in the headers (default %(default)s)")
    img = parser.add_argument_group("imaging mode (docs/imaging.md)")
    img.add_argument("--imaging", metavar="WxH", default="",
                     help="raster a synthetic tissue sample, one scan per pixel with its position "
                          "(default --count: one pass, W x H scans)")
    img.add_argument("--pixel-size", type=float, default=10.0, metavar="UM", help="pixel size in um (default %(default)s)")
    img.add_argument("--truth", metavar="FILE", help="write the sample's ground truth (cell and region masks, .npz)")
    out = parser.add_argument_group("output (default: stdout)").add_mutually_exclusive_group()
    out.add_argument("-o", "--out", metavar="FILE", help="write frames to FILE")
    out.add_argument("--tcp", metavar="[HOST:]PORT",
                     help="listen on HOST:PORT (HOST default 127.0.0.1; PORT 0 picks one) and stream to each "
                          "client; waits for the first client, prints 'tcp: HOST:PORT' first")
    out.add_argument("--pty", action="store_true",
                     help="open a pseudo-terminal pair, print 'pty: /dev/pts/N' first, write frames to it")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on a terminal")


def main(args: argparse.Namespace) -> int:
    from instrument.simulator import Pacer, SimConfig, Simulator

    if args.count is not None and args.count < 0:
        log.error("--count must be >= 0, got %r", args.count)
        return 2
    try:
        config = SimConfig(scan_rate_hz=args.rate, n_samples=args.samples, seed=args.seed, dtype=args.dtype,
                           cycle_s=args.cycle, status_interval_s=args.status_interval, ms_level=args.ms_level,
                           polarity=args.polarity, n_compounds=args.compounds, imaging=args.imaging,
                           pixel_size_um=args.pixel_size)
        if config.imaging and args.count is None and args.duration is None:
            width, height = config.raster_size
            args.count = width * height
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if not (args.out or args.tcp or args.pty) and sys.stdout.isatty():
        log.error("refusing to write binary frames to a terminal: redirect stdout "
                  "(ionstream simulate > frames.bin) or use --out FILE, --tcp PORT or --pty")
        return 2

    signals = SignalHandler()
    signals.install()
    try:
        sink = _open_sink(args)
    except (OSError, ValueError) as exc:
        log.error("cannot open the output: %s", exc)
        return 1
    try:
        sink.announce()
        if not sink.ready(signals.stop_requested):
            return 0
        simulator = Simulator(config)
        if args.truth and simulator.sample is not None:
            simulator.sample.save_truth(args.truth)
        progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())
        pacer = Pacer(config.scan_rate_hz)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        scans = 0
        nbytes = 0
        t0 = time.monotonic()
        try:
            while not signals.stop_requested.is_set():
                if args.count is not None and scans >= args.count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                frame, truth = next(simulator)
                if truth is not None:
                    pacer.wait(signals.stop_requested)
                    if signals.stop_requested.is_set():
                        break
                    scans += 1
                if not sink.write(frame):
                    break
                nbytes += len(frame)
                progress.update(scans, nbytes, sink.describe())
        finally:
            progress.finish()
        elapsed = time.monotonic() - t0
        log.info("simulate: %d scans, %d frames, %.1f MB in %.2f s (%.1f scans/s) to %s", scans,
                 simulator.sequence, nbytes / 1e6, elapsed, scans / elapsed if elapsed else 0.0, sink.describe())
        return 0
    finally:
        sink.close()


# --------------------------------------------------------------------------------------------
# Sinks: write(frame) -> False when the output is gone; describe() for progress; close().
# --------------------------------------------------------------------------------------------

class _StreamSink:
    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name

    def announce(self) -> None:
        pass

    def ready(self, stop: threading.Event) -> bool:
        return True

    def write(self, frame: bytes) -> bool:
        try:
            self.stream.write(frame)
        except BrokenPipeError:  # `ionstream simulate | head -c 1000` is not an error
            self._silence_stdout()
            return False
        return True

    def describe(self) -> str:
        return self.name

    def _silence_stdout(self) -> None:
        # So that the interpreter's final flush of stdout does not complain about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    def close(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._silence_stdout()
        if self.stream is not sys.stdout.buffer:
            self.stream.close()


class _PtySink:
    """Writes to the master of a new pty; the slave path is what a serial reader opens.

    The sink keeps the slave open itself (raw mode), so the path stays valid and bytes are
    buffered by the kernel while no reader has it open. When the kernel buffer is full (no reader,
    or a reader slower than the rate), whole frames are dropped and counted; a frame already
    started is always finished first, so a reader sees at most one torn frame when it opens.
    """

    PATIENCE_S = 0.2

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self._poll = select.poll()
        self._poll.register(self.master, select.POLLOUT)
        self._pending = memoryview(b"")
        self.dropped = 0

    def announce(self) -> None:
        _announce(f"pty: {self.path}")

    def ready(self, stop: threading.Event) -> bool:
        return True

    def _drain(self, patience_s: float) -> None:
        deadline = time.monotonic() + patience_s
        while self._pending:
            try:
                n = os.write(self.master, self._pending)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                self._pending = self._pending[n:]
                deadline = time.monotonic() + patience_s
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll.poll(remaining * 1000.0)

    def write(self, frame: bytes) -> bool:
        if self._pending:
            self._drain(0.0)
            if self._pending:
                self.dropped += 1
                return True
        self._pending = memoryview(frame)
        self._drain(self.PATIENCE_S)
        return True

    def describe(self) -> str:
        return f"pty {self.path} (dropped {self.dropped})"

    def close(self) -> None:
        self._drain(self.PATIENCE_S)
        os.close(self.slave)
        os.close(self.master)


class _Client:
    def __init__(self, conn: socket.socket, addr, max_frames: int):
        self.conn, self.addr = conn, addr
        self.queue: deque[bytes] = deque()
        self.max_frames = max_frames
        self.cond = threading.Condition()
        self.alive = True
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"simulate-tcp-{addr[1]}", daemon=True)
        self.thread.start()

    def put(self, frame: bytes) -> None:
        with self.cond:
            if len(self.queue) >= self.max_frames:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(frame)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.alive = False
            self.cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while self.alive and not self.queue:
                        self.cond.wait()
                    if not self.queue:  # stopped and drained
                        return
                    frame = self.queue.popleft()
                self.conn.sendall(frame)
        except OSError as exc:
            log.info("tcp client %s:%d gone (%s)", self.addr[0], self.addr[1], exc.strerror or exc)
        finally:
            self.alive = False
            self.conn.close()


class _TcpSink:
    """Listens on HOST:PORT; every connected client gets every frame from when it connected
    (whole frames only). Each client has its own sender thread and a queue of at most
    ``max_frames`` frames: a slow client loses its oldest frames (counted), never slows the others."""

    def __init__(self, spec: str, max_frames: int = 64):
        host, _, port = spec.rpartition(":")
        try:
            port_n = int(port)
        except ValueError:
            raise ValueError(f"--tcp wants [HOST:]PORT, got {spec!r}") from None
        self.server = socket.create_server((host or "127.0.0.1", port_n))
        self.server.settimeout(0.2)
        self.host, self.port = self.server.getsockname()[:2]
        self.max_frames = max_frames
        self.clients: list[_Client] = []
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="simulate-tcp-accept", daemon=True)
        self._acceptor.start()

    def announce(self) -> None:
        _announce(f"tcp: {self.host}:{self.port}")
        log.info("listening on %s:%d; waiting for the first client", self.host, self.port)

    def ready(self, stop: threading.Event) -> bool:
        while not self._first.wait(0.1):
            if stop.is_set():
                return False
        return True

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("tcp client %s:%d connected", addr[0], addr[1])
            with self._lock:
                self.clients.append(_Client(conn, addr, self.max_frames))
            self._first.set()

    def write(self, frame: bytes) -> bool:
        with self._lock:
            self.clients = [c for c in self.clients if c.alive]
            for c in self.clients:
                c.put(frame)
        return True

    def describe(self) -> str:
        with self._lock:
            dropped = sum(c.dropped for c in self.clients)
            return f"tcp {self.host}:{self.port} clients {len(self.clients)} (dropped {dropped})"

    def close(self) -> None:
        self._closed.set()
        self.server.close()
        self._acceptor.join(2.0)
        with self._lock:
            clients = list(self.clients)
        for c in clients:
            c.stop()
        for c in clients:
            c.thread.join(5.0)


def _open_sink(args: argparse.Namespace):
    if args.pty:
        return _PtySink()
    if args.tcp:
        return _TcpSink(args.tcp)
    if args.out:
        return _StreamSink(open(args.out, "wb"), args.out)
    return _StreamSink(sys.stdout.buffer, "stdout")


def _announce(line: str) -> None:
    """The first line on stdout (what a script waits for), flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Progress:
    """A live line on stderr (scans, scans/s, MB/s, output) redrawn twice a second."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = 0.0
        self._last_scans = 0
        self._last_bytes = 0
        self._width = 0

    def update(self, scans: int, nbytes: int, where: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self._last:
            self._last = now
            return
        dt = now - self._last
        if dt < 0.5:
            return
        line = (f"simulate | {scans} scans | {(scans - self._last_scans) / dt:.1f} scans/s | "
                f"{(nbytes - self._last_bytes) / dt / 1e6:.2f} MB/s | {where}")
        self._last, self._last_scans, self._last_bytes = now, scans, nbytes
        sys.stderr.write("\r" + line + " " * max(0, self._width - len(line)))
        sys.stderr.flush()
        self._width = len(line)

    def finish(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
