"""USB source through REAL libusb, against an emulated kernel and device (umockdev).

Real: libusb 1.0 from the libusb-package wheel, pyusb, the USB source, the acquisition thread,
the decoder and the ring, all in a separate process of this Python started with
``LD_PRELOAD=libumockdev-preload.so.0 UMOCKDEV_DIR=<test bed>`` (tests/usb/umockdev_client.py).
libusb enumerates the device from /sys, parses its descriptors, opens /dev/bus/usb/001/002 and
drives it with the same usbdevfs ioctls it uses on a real device: GET_CAPABILITIES, GETDRIVER
and DISCONNECT/CONNECT (kernel driver), CLAIMINTERFACE, control URBs (string descriptors,
vendor start/stop requests), bulk IN URBs (SUBMITURB/REAPURB/DISCARDURB), timeouts and errors.
Emulated: the kernel's usbdevfs and the device. tests/usb/umockdev_testbed.py (run with
Debian's /usr/bin/python3, which has umockdev's GObject bindings) answers those ioctls for the
device that instrument/usbsim.py defines, the same behaviour the fast tests (test_usb.py) serve
through a simulated pyusb backend. Unplug = URBs fail with ESHUTDOWN/ENODEV and the device
leaves /sys; replug = it is added again. umockdev's uevents reach only libudev listeners, not
libusb's own netlink monitor (the pip libusb has no libudev), so libusb's device list is not
refreshed by hotplug here: the device comes back at the same address, and the source re-opens
it through the stale list entry (on a real kernel it comes back at a new address, which the
fast tests cover). Not covered here: permission denied (the test bed runs as root); see
test_usb.py.

Needs: apt-get install umockdev gir1.2-umockdev-1.0 python3-gi (x86-64); skipped otherwise.
"""
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import instrument.usbsim
from instrument.frames import encode_scan
from instrument.usbsim import UsbDeviceSpec

HERE = Path(__file__).parents[1] / "usb"
TESTBED = HERE / "umockdev_testbed.py"
CLIENT = HERE / "umockdev_client.py"
DEBIAN_PYTHON = "/usr/bin/python3"
PRELOAD = "libumockdev-preload.so.0"


def _why_not() -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the test bed's usbdevfs struct layouts are for x86-64, this is {platform.machine()}"
    if not os.path.exists(DEBIAN_PYTHON):
        return f"{DEBIAN_PYTHON} (Debian's python3, which has umockdev's GObject bindings) is missing"
    code = "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"
    probe = subprocess.run([DEBIAN_PYTHON, "-c", code], capture_output=True, text=True, check=False)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{DEBIAN_PYTHON} cannot import gi.repository.UMockdev ({last}); "
                "apt-get install umockdev gir1.2-umockdev-1.0 python3-gi")
    probe = subprocess.run(["true"], env={**os.environ, "LD_PRELOAD": PRELOAD}, capture_output=True, text=True,
                           check=False)
    if "cannot be preloaded" in probe.stderr:
        return f"{PRELOAD} cannot be preloaded (apt-get install umockdev)"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"umockdev: {WHY_NOT}")


class Bed:
    """tests/usb/umockdev_testbed.py in a child process; run() starts a preloaded client in it."""

    def __init__(self, tmp_path: Path, spec: UsbDeviceSpec, tape: bytes):
        (tmp_path / "spec.json").write_text(spec.to_json())
        (tmp_path / "tape.bin").write_bytes(tape)
        self.tape_path = str(tmp_path / "tape.bin")
        self.proc = subprocess.Popen(
            [DEBIAN_PYTHON, str(TESTBED), instrument.usbsim.__file__, str(tmp_path / "spec.json"), self.tape_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._got_root = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()
        if not self._got_root.wait(15):
            self.close()
            pytest.fail(f"the umockdev test bed did not start: {self.proc.stderr.read()}")
        self.root = self.lines[0].split(" ", 1)[1]

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            self._got_root.set()

    @property
    def events(self) -> list[str]:
        return [line.split(" ", 1)[1] for line in self.lines if line.startswith("event ")]

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_PRELOAD": PRELOAD, "UMOCKDEV_DIR": self.root, "PYTHONUNBUFFERED": "1"}

    def run(self, argv: list[str], timeout: float = 45) -> dict:
        out = subprocess.run([sys.executable, *argv], env=self.env(), capture_output=True, text=True,
                             timeout=timeout, check=False)
        if out.returncode != 0:
            self.close()
            pytest.fail(f"client failed ({out.returncode}):\n{out.stderr[-3000:]}\n"
                        f"test bed stderr:\n{self.proc.stderr.read()[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def scenario(self, name: str, **args) -> dict:
        return self.run([str(CLIENT), name, json.dumps({"tape": self.tape_path, **args})])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def bed(tmp_path):
    beds = []

    def start(spec: UsbDeviceSpec, tape: bytes) -> Bed:
        beds.append(Bed(tmp_path, spec, tape))
        return beds[-1]

    yield start
    for b in beds:
        b.close()


def test_devices_command_lists_the_emulated_device(bed):
    tb = bed(UsbDeviceSpec(serial="UMD0001"), b"\x00" * 1024)
    listing = tb.run(["-m", "ionstream.cli", "devices", "--json"])
    assert "libusb 1." in listing["libusb"]
    [dev] = listing["usb"]
    assert (dev["vid_pid"], dev["manufacturer"], dev["product"], dev["serial"]) == (
        "1234:5678", "ionstream", "simulated acquisition bridge", "UMD0001")
    assert (dev["bus"], dev["address"], dev["ports"], dev["bulk_in"]) == (1, 2, "1", ["0x81"])
    assert dev["suggested_url"] == "usb://1234:5678?serial=UMD0001"


def test_read_timeout_unplug_and_reopen(bed):
    tape = bytes(range(256)) * 4096
    spec = UsbDeviceSpec(serial="UMD0002", sysfs_strings=False, pause_after=200_000, pause_s=0.3,
                         unplug_after=600_000, replug_after_s=0.5, lost_while_away=1000,
                         new_address_on_replug=False)
    tb = bed(spec, tape)
    r = tb.scenario("read", url="usb://1234:5678?serial=UMD0002&timeout_ms=50&read_size=16384",
                    lost_while_away=1000)
    # found by VID:PID and by the serial number read through libusb (string descriptors, no sysfs)
    d = r["describe"]
    assert (d["serial"], d["manufacturer"], d["endpoint"], d["max_packet"], d["read_size"]) == (
        "UMD0002", "ionstream", "0x81", 512, 16384)
    assert d["libusb"].startswith("libusb 1.") and "libusb-package" in d["libusb"]
    # everything up to the unplug, byte-exact; timeouts during the pause returned 0 bytes
    assert r["bytes_before_unplug"] == 600_000 and r["data_matches_tape"]
    assert r["zero_reads"] >= 3, "a 0.3 s pause with 50 ms timeouts must give several empty reads"
    assert 0.03 < r["zero_read_s_min"] and r["zero_read_s_max"] < 0.5
    assert "No such device" in r["disconnect_error"] and "errno 19" in r["disconnect_error"]
    # while away: open fails (SourceUnavailable); once back: reopened, data continues
    assert r["open_failures"] >= 1 and 0.3 < r["back_after_s"] < 5
    assert r["resumed_at_expected_offset"]
    assert "start" not in tb.events and tb.events[:1] == ["pause"]


def test_acquisition_streams_frames_through_unplug_and_replug(bed):
    n_samples, count = 4096, 3000
    frames = [encode_scan(np.arange(n_samples, dtype=np.uint16) + np.uint16(seq), sequence=seq,
                          scan_number=seq, device_time_ns=seq * 1000) for seq in range(count)]
    offsets = np.cumsum([0] + [len(f) for f in frames]).tolist()
    cut = offsets[1500] + 3000                        # inside frame 1500
    lost = offsets[1600] + 37 - cut                   # back inside frame 1600
    spec = UsbDeviceSpec(loop=False, unplug_after=cut, lost_while_away=lost, replug_after_s=0.3,
                         new_address_on_replug=False)
    tb = bed(spec, b"".join(frames))
    r = tb.scenario("acquire", url="usb://1234:5678?timeout_ms=50&read_size=16384", n_samples=n_samples,
                    slot_bytes=16384, last_sequence=count - 1, reconnects=1)
    assert r["error"] is None and r["bad"] == []
    assert r["seen"] == list(range(1500)) + list(range(1601, count))
    assert (r["disconnects"], r["reconnects"]) == (1, 1) and r["open_failures"] >= 1
    assert r["decoder"]["payload_crc_errors"] == 0 and r["decoder"]["header_crc_errors"] == 0
    assert r["bytes_read"] == cut + offsets[-1] - (cut + lost)
    print(f"\nreal libusb via umockdev: {r['bytes_read'] / 1e6:.1f} MB in {r['reads']} reads, "
          f"{r['MBps']:.1f} MB/s including a {spec.replug_after_s} s unplug")


def test_kernel_driver_and_vendor_requests(bed):
    tb = bed(UsbDeviceSpec(kernel_driver=True, require_start=True), bytes(range(256)) * 256)
    r = tb.scenario("driver", url="usb://1234:5678?start_ctrl=0x40,1,0,0&stop_ctrl=0x40,2,0,0&timeout_ms=50")
    assert r["bytes"] >= 8192
    deadline = time.monotonic() + 2
    while len(tb.events) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tb.events == ["driver-detached", "start", "stop", "driver-attached"]


def test_bench_usb_through_umockdev():
    """`ionstream bench usb --umockdev`: the same loops through real libusb in a preloaded child."""
    out = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "bench", "usb", "--json", "--seconds", "0.05",
                          "--repeat", "1", "--umockdev", "--umockdev-seconds", "0.3", "--testbed", str(TESTBED)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert "umockdev_skipped" not in figures, figures.get("umockdev_skipped")
    assert figures["umockdev_libusb"].startswith("libusb 1.")
    assert figures["umockdev_source_MBps"] > 0 and figures["umockdev_bare_MBps"] > 0
    assert isinstance(figures["umockdev_ratio"], float)


def test_record_command_captures_frames_across_a_replug(bed, tmp_path):
    """`ionstream record -s usb://...`, the technician's command, through real libusb into a capture file."""
    import itertools

    from instrument.capture import capture_info
    from instrument.simulator import SimConfig, Simulator

    frames = [f for f, _ in itertools.islice(Simulator(SimConfig(n_samples=8192, scan_rate_hz=0, seed=3)), 400)]
    offsets = np.cumsum([0] + [len(f) for f in frames]).tolist()
    cut = offsets[200] + 5000                         # inside frame 200
    lost = offsets[230] + 11 - cut                    # back inside frame 230
    spec = UsbDeviceSpec(loop=False, unplug_after=cut, lost_while_away=lost, replug_after_s=0.3,
                         new_address_on_replug=False)
    tb = bed(spec, b"".join(frames))
    out = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "record", "-s", "usb://1234:5678?serial=SIM0001",
                          "--duration", "3s", "-o", str(tmp_path / "usb.isc"), "--no-status-line"],
                         env=tb.env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "USB: using libusb 1." in out.stderr and "is back after" in out.stderr
    info = capture_info(tmp_path / "usb.isc")
    assert info.records == 200 + (400 - 231)          # whole frames before the cut and after the gap
    assert info.frame_bytes == offsets[200] + offsets[400] - offsets[231]
    assert info.crc_errors == 0 and info.invalid_records == 0 and not info.torn_tail
    assert info.sequence_gaps == 31
