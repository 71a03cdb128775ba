"""USB source, fast layer: the source's own logic against a SIMULATED device behind pyusb.

Real: pyusb's core (usb.core.find, its Device/Configuration/Endpoint objects built from the
descriptors, Device.read into an array, ctrl_transfer, claim/release bookkeeping), the USB
source (instrument/sources/usb.py), the acquisition thread, the frame decoder and the ring.
Simulated: everything below pyusb's backend interface. ``instrument.usbsim.SimulatedBackend``
is a pyusb IBackend whose device is ``UsbDeviceBehaviour`` (descriptors, strings, vendor
start/stop requests, a tape of frames made with instrument.frames.encode_scan, scheduled
pauses and unplugs). libusb and the kernel are not involved here: tests/instrument_tests/test_usb_umockdev.py
runs the same device behaviour under real libusb. The last tests use real libusb on this
machine, where no USB device is attached (no device is an ordinary, testable state).
"""
import errno
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from instrument.acquisition import AcquisitionThread
from instrument.frames import encode_scan
from instrument.ring import RingBuffer
from instrument.sources import (
    SourceConfigError,
    SourceDisconnected,
    SourceUnavailable,
    SourceURL,
    open_source,
)
from instrument.sources.usb import UsbSource, create, parse_selector
from instrument.usbdev import list_devices, suggest_url, udev_rule
from instrument.usbsim import (
    REQUEST_START,
    REQUEST_STOP,
    SimulatedBackend,
    UsbDeviceSpec,
)
from support import wait_until

N_SAMPLES = 256


def make_tape(count: int, first: int = 0) -> tuple[bytes, list[int]]:
    """``count`` SCAN frames (sequence first..), and the byte offset where each starts."""
    frames = [encode_scan(np.arange(N_SAMPLES, dtype=np.uint16) + seq, sequence=seq, scan_number=seq,
                          device_time_ns=seq * 10**6) for seq in range(first, first + count)]
    offsets = np.cumsum([0] + [len(f) for f in frames]).tolist()
    return b"".join(frames), offsets


def source(url: str, backend) -> UsbSource:
    return create(SourceURL.parse(url), backend=backend)


def read_all(src: UsbSource, total: int, buf_size: int = 1 << 20, timeout=5.0) -> bytes:
    buf = bytearray(buf_size)
    view = memoryview(buf)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < total and time.monotonic() < deadline:
        n = src.readinto(view)
        out += view[:n]
    return bytes(out)


def drain(reader, until, timeout=10.0) -> list[int]:
    """Sequence numbers of the frames in the ring, checking every frame's samples."""
    seen = []
    deadline = time.monotonic() + timeout
    while not until(seen) and time.monotonic() < deadline:
        slot = reader.get(timeout=0.05)
        if slot is None:
            continue
        seq = slot.header.sequence
        assert (slot.samples() == np.arange(N_SAMPLES, dtype=np.uint16) + seq).all(), f"frame {seq} corrupted"
        seen.append(seq)
        reader.release()
    return seen


class TestURL:
    def test_vid_pid(self):
        sel = parse_selector(SourceURL.parse("usb://04b4:00F1?serial=A1"))
        assert (sel.vid, sel.pid, sel.serial, sel.bus) == (0x04B4, 0x00F1, "A1", None)

    def test_bus_address_and_port(self):
        sel = parse_selector(SourceURL.parse("usb://bus=1,address=5"))
        assert (sel.bus, sel.address, sel.ports, sel.vid) == (1, 5, None, None)
        sel = parse_selector(SourceURL.parse("usb://bus=2,port=1.4.3"))
        assert (sel.bus, sel.address, sel.ports) == (2, None, (1, 4, 3))

    @pytest.mark.parametrize("url, match", [
        ("usb://1234", "expected usb://VID:PID"),
        ("usb://xyz:5678", "expected usb://VID:PID"),
        ("usb://12345:5678", "expected usb://VID:PID"),
        ("usb://bus=1", "exactly one of address= or port="),
        ("usb://bus=1,address=2,port=1", "exactly one of"),
        ("usb://bus=1,speed=2", "bad device selector"),
        ("usb://1234:5678?ep=0x02", "not an IN endpoint"),
        ("usb://1234:5678?ep=abc", "not an endpoint address"),
        ("usb://1234:5678?start_ctrl=0x40,1", "bmRequestType,bRequest,wValue,wIndex"),
        ("usb://1234:5678?start_ctrl=0xc0,1,0,0", "device-to-host"),
        ("usb://1234:5678?timeout_ms=0", "must be positive"),
        ("usb://1234:5678?speed=9", "unknown option"),
    ])
    def test_raises(self, url, match):
        with pytest.raises(SourceConfigError, match=match):
            open_source(url)


class TestFind:
    def test_by_vid_pid_and_describe(self):
        backend = SimulatedBackend(UsbDeviceSpec(), b"\x00" * 4096)
        src = source("usb://1234:5678", backend)
        src.open()
        d = src.describe()
        assert (d["vid"], d["pid"], d["serial"], d["bus"], d["address"]) == ("1234", "5678", "SIM0001", 1, 2)
        assert (d["endpoint"], d["max_packet"], d["read_size"]) == ("0x81", 512, 65536)
        assert backend.claims == [0]
        src.close()
        src.close()   # idempotent
        assert backend.releases == [0] and backend.open_handles == 0

    def test_by_serial_among_identical_devices(self):
        a, b = UsbDeviceSpec(serial="A1", address=2, port=1), UsbDeviceSpec(serial="B2", address=3, port=2)
        backend = SimulatedBackend(a, b"\x01" * 1024, more=[(b, b"\x02" * 1024)])
        src = source("usb://1234:5678?serial=B2", backend)
        src.open()
        assert src.describe()["address"] == 3
        assert read_all(src, 1024)[:4] == b"\x02" * 4
        src.close()
        with pytest.raises(SourceUnavailable, match=r"2 USB devices match 1234:5678 .*serial"):
            source("usb://1234:5678", backend).open()
        with pytest.raises(SourceUnavailable, match=r"serial numbers seen: 'A1', 'B2'"):
            source("usb://1234:5678?serial=C3", backend).open()

    def test_by_bus_address_and_port(self):
        a, b = UsbDeviceSpec(serial="", address=7, port=3), UsbDeviceSpec(serial="", address=9, port=4)
        backend = SimulatedBackend(a, b"\x01" * 1024, more=[(b, b"\x02" * 1024)])
        for url in ("usb://bus=1,address=9", "usb://bus=1,port=4"):
            src = source(url, backend)
            src.open()
            assert read_all(src, 512)[:1] == b"\x02"
            src.close()
        with pytest.raises(SourceUnavailable, match="no USB device bus 1 address 8"):
            source("usb://bus=1,address=8", backend).open()

    def test_absent_device(self):
        backend = SimulatedBackend(UsbDeviceSpec(), b"\x00")
        with pytest.raises(SourceUnavailable, match=r"no USB device abcd:0001 is attached .*ionstream devices"):
            source("usb://abcd:0001", backend).open()

    def test_missing_endpoint_or_interface(self):
        backend = SimulatedBackend(UsbDeviceSpec(), b"\x00")
        with pytest.raises(SourceUnavailable, match=r"no bulk/interrupt IN endpoint 0x83 \(it has: 0x81\)"):
            source("usb://1234:5678?ep=0x83", backend).open()
        with pytest.raises(SourceUnavailable, match="no interface 1"):
            source("usb://1234:5678?interface=1", backend).open()
        assert backend.open_handles == 0


class TestPermission:
    def test_open_denied_names_the_udev_rule(self):
        backend = SimulatedBackend(UsbDeviceSpec(permission_denied=True), b"\x00")
        with pytest.raises(SourceUnavailable) as info:
            source("usb://1234:5678", backend).open()
        message = str(info.value)
        assert "permission denied opening USB device 1234:5678 at bus 1 address 2" in message
        assert udev_rule(0x1234, 0x5678) in message
        assert 'ATTR{idVendor}=="1234", ATTR{idProduct}=="5678", GROUP="ionstream", MODE="0660"' in message
        assert "docs/operations.md" in message and "/etc/udev/rules.d/70-ionstream.rules" in message

    def test_serial_unreadable_without_permission(self):
        backend = SimulatedBackend(UsbDeviceSpec(permission_denied=True), b"\x00")
        with pytest.raises(SourceUnavailable, match=r"permission denied reading the serial number .*udev rule"):
            source("usb://1234:5678?serial=SIM0001", backend).open()

    def test_acquisition_keeps_retrying_and_logs_once(self, caplog):
        backend = SimulatedBackend(UsbDeviceSpec(permission_denied=True), b"\x00")
        ring = RingBuffer(slots=8, slot_bytes=4096)
        acq = AcquisitionThread(source("usb://1234:5678", backend), ring,
                                backoff_initial_s=0.01, backoff_max_s=0.02).start()
        try:
            assert wait_until(lambda: acq.stats.open_failures >= 5)
        finally:
            acq.stop()
        warnings = [r for r in caplog.records if "cannot open" in r.getMessage()]
        assert len(warnings) == 1 and "udev" in warnings[0].getMessage()
        assert acq.stats.error is None


class TestRead:
    def test_one_preallocated_buffer_sized_in_packets(self):
        tape = bytes(range(256)) * 64
        backend = SimulatedBackend(UsbDeviceSpec(max_packet=512), tape)
        src = source("usb://1234:5678?read_size=1000", backend)   # rounded up to 2 packets
        src.open()
        got = read_all(src, 3 * len(tape))
        assert got == tape * 3
        assert src.describe()["read_size"] == 1024
        assert backend.reads >= 3 * len(tape) // 1024
        assert backend.read_buffers == {id(src._buffer)}, "every read must go into the same array"
        buffer_before = src._buffer
        src.close()
        src.open()   # a re-open keeps the buffer
        read_all(src, 1024)
        assert src._buffer is buffer_before and backend.read_buffers == {id(buffer_before)}
        src.close()

    def test_caller_buffer_smaller_than_a_transfer(self):
        tape = bytes(range(256)) * 16
        backend = SimulatedBackend(UsbDeviceSpec(), tape)
        src = source("usb://1234:5678?read_size=4096", backend)
        src.open()
        assert read_all(src, len(tape), buf_size=100) == tape   # 100-byte pieces of 4096-byte transfers
        src.close()

    def test_timeout_is_no_data_yet(self):
        backend = SimulatedBackend(UsbDeviceSpec(pause_after=2048, pause_s=0.3), bytes(range(256)) * 8)
        src = source("usb://1234:5678?timeout_ms=20&read_size=512", backend)
        src.open()
        buf = memoryview(bytearray(4096))
        got = [src.readinto(buf) for _ in range(4)]
        assert got == [512] * 4
        t0 = time.monotonic()
        assert src.readinto(buf) == 0             # the device went quiet: a timeout, not an error
        assert time.monotonic() - t0 > 0.015   # it waited for the 20 ms timeout (no upper bound: a timed assert)
        assert wait_until(lambda: src.readinto(buf) == 512, timeout=2)
        src.close()

    def test_vendor_start_and_stop_requests(self):
        backend = SimulatedBackend(UsbDeviceSpec(require_start=True), b"\x05" * 4096)
        quiet = source("usb://1234:5678?timeout_ms=10", backend)
        quiet.open()
        assert quiet.readinto(memoryview(bytearray(1024))) == 0    # not started: nothing comes
        quiet.close()
        src = source("usb://1234:5678?start_ctrl=0x40,0x01,0x0102,0&stop_ctrl=0x40,2,0,0", backend)
        src.open()
        assert read_all(src, 1024)[:1] == b"\x05"
        src.close()
        assert backend.device.vendor_requests == [(0x40, REQUEST_START, 0x0102, 0), (0x40, REQUEST_STOP, 0, 0)]
        assert not backend.device.streaming

    def test_kernel_driver_detached_then_reattached(self):
        backend = SimulatedBackend(UsbDeviceSpec(kernel_driver=True), b"\x00" * 1024)
        with pytest.raises(SourceUnavailable, match="claimed by another program or driver .*detach=0"):
            source("usb://1234:5678?detach=0", backend).open()
        src = source("usb://1234:5678", backend)
        src.open()
        assert not backend.device.kernel_driver
        src.close()
        assert backend.device.kernel_driver
        assert backend.device.events == ["driver-detached", "driver-attached"]


class TestDisconnect:
    def test_unplug_raises_disconnected_then_reopens_at_new_address(self):
        tape = bytes(range(256)) * 64
        backend = SimulatedBackend(UsbDeviceSpec(unplug_after=5000, replug_after_s=0.2), tape)
        src = source("usb://bus=1,address=2?read_size=1024", backend)
        src.open()
        assert read_all(src, 5000) == tape[:5000]
        with pytest.raises(SourceDisconnected, match=r"1234:5678 at bus 1 address 2: .*No such device .*errno 19"):
            src.readinto(memoryview(bytearray(4096)))
        src.close()
        with pytest.raises(SourceUnavailable, match="no USB device 1234:5678 serial SIM0001 is attached"):
            src.open()        # away; and looked for by what it was, not by its old address
        assert wait_until(backend.device.replug_due, timeout=2)
        src.open()
        assert src.describe()["address"] == 3
        assert read_all(src, 1024) == tape[5000:6024]
        src.close()

    @pytest.mark.parametrize("code", [errno.EPIPE, errno.EIO])
    def test_other_usb_errors_are_disconnects(self, code, monkeypatch):
        from instrument import usbsim

        backend = SimulatedBackend(UsbDeviceSpec(), b"\x00" * 1024)
        src = source("usb://1234:5678", backend)
        src.open()

        def failing_read(*args):
            raise usbsim.usb_error(code)

        monkeypatch.setattr(backend, "bulk_read", failing_read)
        with pytest.raises(SourceDisconnected, match=f"errno {code}"):
            src.readinto(memoryview(bytearray(1024)))
        src.close()

    def test_acquisition_resumes_with_frames_intact_in_the_ring(self):
        tape, offsets = make_tape(600)
        cut = offsets[250] + 100                     # inside frame 250
        lost = offsets[300] - cut + 37               # away while frames 250..300 are made
        backend = SimulatedBackend(UsbDeviceSpec(unplug_after=cut, lost_while_away=lost, loop=False,
                                                 replug_after_s=0.15), tape)
        ring = RingBuffer(slots=1024, slot_bytes=4096, policy="block")
        reader = ring.add_reader("test")
        acq = AcquisitionThread(source("usb://1234:5678?timeout_ms=20", backend), ring,
                                backoff_initial_s=0.02, backoff_max_s=0.05).start()
        try:
            seen = drain(reader, until=lambda s: s and s[-1] == 599)
            assert wait_until(lambda: acq.stats.reconnects == 1)
        finally:
            acq.stop()
        expected = list(range(250)) + list(range(301, 600))   # whole frames before the cut and after the gap
        assert seen == expected
        assert acq.stats.disconnects == 1 and acq.stats.reconnects == 1 and acq.stats.error is None
        assert acq.decoder.stats.payload_crc_errors == 0 and acq.decoder.stats.sequence_gaps == 51
        assert backend.device.events == ["unplug", "replug"]

    def test_restarts_streaming_after_replug(self):
        tape, offsets = make_tape(200)
        backend = SimulatedBackend(UsbDeviceSpec(require_start=True, unplug_after=offsets[100], loop=False,
                                                 replug_after_s=0.1), tape)
        ring = RingBuffer(slots=512, slot_bytes=4096, policy="block")
        reader = ring.add_reader("test")
        acq = AcquisitionThread(source("usb://1234:5678?timeout_ms=20&start_ctrl=0x40,1,0,0", backend), ring,
                                backoff_initial_s=0.02, backoff_max_s=0.05).start()
        try:
            seen = drain(reader, until=lambda s: len(s) >= 200)
        finally:
            acq.stop()
        assert seen == list(range(200))
        assert backend.device.events == ["start", "unplug", "replug", "start"]


class TestDevices:
    def test_lists_simulated_devices_with_urls(self):
        a = UsbDeviceSpec(serial="A1")
        b = UsbDeviceSpec(serial="", address=5, port=2, vid=0x1111, pid=0x2222)
        c = UsbDeviceSpec(serial="", address=6, port=3, vid=0x1111, pid=0x2222)
        infos = list_devices(SimulatedBackend(a, b"\0", more=[(b, b"\0"), (c, b"\0")]))
        assert [i.suggested_url for i in infos] == [
            "usb://1234:5678?serial=A1", "usb://bus=1,port=2", "usb://bus=1,port=3"]
        first = infos[0].as_dict()
        assert (first["vid_pid"], first["manufacturer"], first["product"], first["bulk_in"]) == (
            "1234:5678", "ionstream", "simulated acquisition bridge", ["0x81"])
        assert suggest_url(infos[1], infos[1:2]) == "usb://1111:2222"

    def test_strings_unreadable_without_permission(self):
        infos = list_devices(SimulatedBackend(UsbDeviceSpec(permission_denied=True), b"\0"))
        assert infos[0].serial is None and infos[0].strings_error == "no permission to open it"


class TestRealLibusb:
    """Real libusb (from the libusb-package wheel) on this machine: no USB device is attached."""

    def test_no_device_is_source_unavailable(self):
        src = open_source("usb://1234:5678")
        with pytest.raises(SourceUnavailable, match="no USB device 1234:5678 is attached"):
            src.open()
        src.close()
        assert "libusb 1." in src.describe()["libusb"]

    def test_devices_command_json(self):
        out = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "devices", "--json"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        listing = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(listing) >= {"serial", "usb", "libusb"}
        assert isinstance(listing["serial"], list) and isinstance(listing["usb"], list)


def test_bench_usb_json():
    """`ionstream bench usb --json` on the simulated device: the figures are there (no timed asserts)."""
    out = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "bench", "usb", "--json", "--seconds", "0.05",
                          "--repeat", "2"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("bare_MBps", "bare_copy_MBps", "source_MBps", "source_view_MBps", "ratio", "ratio_vs_copy",
                "ratio_view", "per_read_overhead_us", "source_per_read_us", "bare_per_read_us"):
        assert isinstance(figures[key], float), key
    assert figures["source_MBps"] > 0 and figures["bare_MBps"] > 0
    assert "simulated" in figures["device"]
