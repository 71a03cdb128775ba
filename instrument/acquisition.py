"""The acquisition thread: read bytes from a Source, decode frames, fill the ring.

It only reads, decodes and enqueues: it never waits on DSP, inference or a subscriber
(under the drop-oldest policy; under ``block`` it waits for the ring only, by choice of
the operator). A device that vanishes is reopened with exponential backoff, counted,
and logged once per episode, so an unplugged adapter at 3 a.m. produces two log lines
(lost, back) rather than thousands.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from instrument.frames import FrameDecoder
from instrument.ring import DropLog, RingBuffer
from instrument.sources.base import EndOfSource, Source, SourceBusy, SourceDisconnected, SourceUnavailable

log = logging.getLogger("ionstream.acquisition")


@dataclass
class AcquisitionStats:
    """Counters of one acquisition thread (bytes, reads, episodes)."""

    bytes_read: int = 0
    reads: int = 0
    frames: int = 0
    disconnects: int = 0       # device lost mid-stream
    reconnects: int = 0        # successful re-opens after a loss
    open_failures: int = 0     # failed open attempts (each retry counts)
    connected: bool = False
    ended: bool = False        # a finite source delivered everything
    error: str | None = None   # an unexpected exception that stopped the thread


class AcquisitionThread:
    """Owns one Source and feeds a RingBuffer. start() / stop() / join(); stats; decoder.stats."""

    def __init__(self, source: Source, ring: RingBuffer, *, read_size: int = 1 << 20,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0,
                 close_ring_at_end: bool = True, name: str = "acquisition"):
        self.source = source
        self.ring = ring
        # Every frame the protocol allows is decoded, whatever the ring's slot size: what fits a
        # slot goes to every reader, a larger one to the recorder only (ring.py), so what was
        # received is recorded whatever the ring does.
        self.decoder = FrameDecoder()
        self.drop_log = DropLog(ring)
        self.stats = AcquisitionStats()
        self._read_buffer = bytearray(read_size)
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._close_ring_at_end = close_ring_at_end
        self._stop = threading.Event()
        self._started = threading.Event()     # set once the first open of the source was tried
        self._start_error: SourceBusy | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ---- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "AcquisitionThread":
        """Start the thread; return once it has tried to open the source (``timeout`` s at most).

        A source that is busy at start-up (SourceBusy: another process holds the port) is a
        start-up error, raised here; the thread has then ended and closed the ring. A source
        that is merely absent (unplugged) is retried in the background, as after a disconnect.
        """
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"acquisition thread for {self.source.url.text} did not start in {timeout} s")
        if self._start_error is not None:
            self._thread.join(timeout)
            raise self._start_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` s for it (safe before start())."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("acquisition thread did not stop within %.1f s (source %s)", timeout, self.source.url.text)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (returns at once if it never started)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def started(self) -> bool:
        """True once start() was called (the thread may have ended since)."""
        return self._thread.ident is not None

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    # ---- the loop ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug, not an I/O failure: report it once, loudly
            self.stats.error = f"{type(exc).__name__}: {exc}"
            log.exception("acquisition stopped by an unexpected error (source %s)", self.source.url.text)
        finally:
            self._close_source()
            if self._close_ring_at_end:
                self.ring.close()
            self.drop_log.flush()
            self._started.set()  # start() never waits for a thread that has ended

    def _loop(self) -> None:
        view = memoryview(self._read_buffer)
        source, ring, decoder, stats, stop = self.source, self.ring, self.decoder, self.stats, self._stop
        lost_since: float | None = None
        delay = self._backoff[0]
        while not stop.is_set():
            if not stats.connected:
                try:
                    source.open()
                except SourceUnavailable as exc:
                    if isinstance(exc, SourceBusy) and not self._started.is_set():
                        self._start_error = exc  # start() raises it: another process has the device
                        return                   # (_run's finally wakes start())
                    self._started.set()
                    stats.open_failures += 1
                    if lost_since is None:
                        lost_since = time.monotonic()
                        log.warning("cannot open %s: %s; retrying with backoff", source.url.text, exc)
                    stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._started.set()
                stats.connected = True
                delay = self._backoff[0]
                if lost_since is not None:
                    stats.reconnects += 1
                    log.warning("%s is back after %.1f s", source.url.text, time.monotonic() - lost_since)
                    lost_since = None
                else:
                    log.info("acquiring from %s", source.url.text)
            try:
                n = source.readinto(view)
            except SourceDisconnected as exc:
                stats.disconnects += 1
                stats.connected = False
                lost_since = time.monotonic()
                log.warning("lost %s: %s; reopening with backoff (frames already acquired are kept)",
                            source.url.text, exc)
                self._close_source()
                decoder.reset()  # a partial frame from before the loss can never complete
                continue
            except EndOfSource:
                stats.ended = True
                log.info("%s: end of source", source.url.text)
                return
            if n == 0:
                continue
            host_time_ns = time.time_ns()
            stats.reads += 1
            stats.bytes_read += n
            for frame in decoder.feed(view[:n]):
                stats.frames += 1
                ring.put(frame.header, frame.raw, host_time_ns, stop)
            self.drop_log.check()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:  # closing a vanished device may fail; it is gone either way
            log.debug("closing %s failed", self.source.url.text, exc_info=True)
        self.stats.connected = False
