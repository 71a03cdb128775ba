"""Serial acquisition on real kernel pseudo-terminals, including an unplug/replug cycle.

Real: the pty pair (os.openpty), pyserial opening the slave by path, the acquisition thread,
the decoder and the ring. Simulated: the instrument (frames written by the test to the master)
and "unplug" (closing the master, after which the slave read fails with EIO, as a vanished
USB-serial adapter does). "Replug" is a new pty behind the same udev-style symlink.
"""
import fcntl
import os
import time
import tty

import numpy as np
import pytest

from instrument.acquisition import AcquisitionThread
from instrument.frames import encode_scan
from instrument.ring import RingBuffer
from instrument.sources import open_source
from instrument.sources.base import SourceBusy
from support import wait_until


def _frames(first: int, count: int) -> bytes:
    return b"".join(
        encode_scan(np.arange(256, dtype=np.uint16) + seq, sequence=seq, scan_number=seq, device_time_ns=seq * 10**6)
        for seq in range(first, first + count)
    )


def _new_pty(link: str) -> int:
    master, slave = os.openpty()
    tty.setraw(slave)
    target = os.ttyname(slave)
    os.close(slave)
    tmp = link + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic, like udev updating /dev/serial/by-id
    return master


def _drain(reader, expected: int, timeout=10.0) -> list[int]:
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        slot = reader.get(timeout=0.1)
        if slot is None:
            continue
        assert (slot.samples() == np.arange(256, dtype=np.uint16) + slot.header.sequence).all()
        seen.append(slot.header.sequence)
        reader.release()
    return seen


@pytest.fixture
def link(tmp_path):
    return str(tmp_path / "ttyIS0")


def test_pty_stream_unplug_and_replug(link):
    master = _new_pty(link)
    ring = RingBuffer(slots=256, slot_bytes=4096)
    reader = ring.add_reader("test")
    source = open_source(f"serial://{link}?baud=115200")
    acq = AcquisitionThread(source, ring, backoff_initial_s=0.02, backoff_max_s=0.1).start()
    try:
        assert wait_until(lambda: acq.stats.connected), "the source should open the pty"
        os.write(master, _frames(0, 50))
        assert _drain(reader, 50) == list(range(50))

        os.close(master)  # unplug
        assert wait_until(lambda: acq.stats.disconnects == 1), "the loss must be noticed"
        assert wait_until(lambda: acq.stats.open_failures >= 1), "a failed reopen attempt while unplugged"
        master = _new_pty(link)  # replug, same path
        assert wait_until(lambda: acq.stats.reconnects == 1 and acq.stats.connected), "must reopen by itself"
        os.write(master, _frames(50, 50))
        assert _drain(reader, 50) == list(range(50, 100))
        assert acq.decoder.stats.payload_crc_errors == 0 and acq.decoder.stats.header_crc_errors == 0
        assert acq.stats.open_failures >= 1
        assert acq.stats.error is None
    finally:
        acq.stop()
        os.close(master)


def test_garbage_on_the_line_is_counted_and_skipped(link):
    master = _new_pty(link)
    ring = RingBuffer(slots=64, slot_bytes=4096)
    reader = ring.add_reader("test")
    acq = AcquisitionThread(open_source(f"serial://{link}"), ring).start()
    try:
        assert wait_until(lambda: acq.stats.connected)
        good = _frames(0, 10)
        corrupt = bytearray(_frames(10, 1))
        corrupt[200] ^= 0xFF  # a flipped payload byte
        os.write(master, good[: len(good) // 2] + b"\x00garbage\xa5\x5a" + good[len(good) // 2:]
                 + bytes(corrupt) + _frames(11, 5))
        seen = _drain(reader, 15, timeout=5)
        assert 11 <= len(seen) and seen[-5:] == list(range(11, 16)) and 10 not in seen
        stats = acq.decoder.stats
        assert stats.payload_crc_errors == 1 and stats.resyncs >= 1 and stats.bytes_skipped > 0
    finally:
        acq.stop()
        os.close(master)


def test_missing_device_is_retried_not_fatal(tmp_path):
    ring = RingBuffer(slots=4, slot_bytes=1024)
    acq = AcquisitionThread(open_source(f"serial://{tmp_path}/nothing"), ring,
                            backoff_initial_s=0.01, backoff_max_s=0.02).start()
    try:
        assert wait_until(lambda: acq.stats.open_failures >= 3)
        assert acq.alive and acq.stats.error is None
    finally:
        acq.stop()


def _hold(path: str) -> int:
    """Take the port's lock as another process would (pyserial's exclusive=True: flock)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_port_busy_at_start_up_is_a_start_error_naming_the_holder(link):
    master = _new_pty(link)
    holder = _hold(link)
    ring = RingBuffer(slots=4, slot_bytes=1024)
    acq = AcquisitionThread(open_source(f"serial://{link}"), ring)
    try:
        with pytest.raises(SourceBusy, match=rf"serial port .*ttyIS0 \(/dev/pts/\d+\) is in use by another "
                                             rf"process \(pid {os.getpid()}\)"):
            acq.start()
        assert not acq.alive and ring.closed and acq.stats.open_failures == 0
    finally:
        acq.stop()
        os.close(holder)
        os.close(master)


def test_a_port_busy_after_a_disconnect_is_retried_until_free(link):
    master = _new_pty(link)
    ring = RingBuffer(slots=256, slot_bytes=4096)
    reader = ring.add_reader("test")
    acq = AcquisitionThread(open_source(f"serial://{link}"), ring, backoff_initial_s=0.02,
                            backoff_max_s=0.1).start()
    holder = None
    try:
        assert wait_until(lambda: acq.stats.connected)
        os.close(master)                       # unplug ...
        assert wait_until(lambda: acq.stats.disconnects == 1)
        master = _new_pty(link)                # ... replug, but something else grabbed the port first
        holder = _hold(link)
        assert wait_until(lambda: acq.stats.open_failures >= 3), "a busy port after a loss is retried"
        assert acq.alive and not acq.stats.connected
        os.close(holder)
        holder = None
        assert wait_until(lambda: acq.stats.reconnects == 1 and acq.stats.connected), "reopens once it is free"
        os.write(master, _frames(0, 5))
        assert _drain(reader, 5) == list(range(5))
    finally:
        acq.stop()
        if holder is not None:
            os.close(holder)
        os.close(master)
