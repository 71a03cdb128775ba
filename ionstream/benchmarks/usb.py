"""`ionstream bench usb`: the USB source's read path against a bare pyusb read loop.

Figures (``--json``), from the simulated device (``instrument.usbsim.SimulatedBackend``: a pyusb
backend whose device is as fast as memory, so the loops measure host-side cost only):

* ``bare_MBps``: ``dev.read(ep, array, timeout)`` into one reused array, nothing else: the
  fastest pyusb can go;
* ``bare_copy_MBps``: the same, plus copying each transfer into a caller's buffer, which any
  ``readinto(buf)`` over pyusb must do (pyusb reads in place only into an ``array.array``);
* ``source_MBps``: ``UsbSource.readinto(buf)``, the path the acquisition thread calls;
* ``source_view_MBps``: ``UsbSource.read_view()``, the zero-copy variant (no caller yet);
* ``ratio`` = source / bare, ``ratio_vs_copy`` = source / bare_copy, ``ratio_view`` =
  source_view / bare;
* ``*_per_read_us`` and ``per_read_overhead_us`` = source minus bare, per transfer (µs).

The loops run in turn, ``--repeat`` times, in this process; each figure is the median.
With ``--umockdev``, the same bare and source loops also run through real libusb against the
umockdev test bed (tests/usb/umockdev_testbed.py of a checkout, or ``--testbed PATH``; Debian's
python3 with umockdev's bindings) in a preloaded child process; those keys start with ``umockdev_``. Its
device is a Python ioctl handler (~10-20 MB/s), so it shows that the source keeps up with the
emulated bus, not the source's own cost.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = "USB source read path vs a bare pyusb read loop (simulated device; --umockdev: real libusb too)"

URL = "usb://1234:5678?timeout_ms=100&read_size={read_size}"
TESTBED = Path("tests") / "usb" / "umockdev_testbed.py"   # in a repository checkout


def _find_testbed(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[2] / TESTBED, Path.cwd() / TESTBED]
    return next((p for p in candidates if p.is_file()), None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per loop run (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=20, help="rounds of all loops (default %(default)s)")
    parser.add_argument("--read-size", type=int, default=65536,
                        help="bytes per USB transfer (default %(default)s, rounded to packets)")
    parser.add_argument("--umockdev", action="store_true",
                        help="also measure through real libusb and the umockdev test bed")
    parser.add_argument("--umockdev-seconds", type=float, default=0.5,
                        help="seconds per loop through umockdev (default %(default)s)")
    parser.add_argument("--testbed", metavar="PATH",
                        help=f"the umockdev test bed script (default: {TESTBED} of this checkout or the current folder)")


def _tape(size: int = 8 << 20) -> bytes:
    """Device frames (4096 uint16 samples each) filling about ``size`` bytes."""
    import numpy as np

    from instrument.frames import encode_scan

    ramp = np.arange(4096, dtype=np.uint16)
    frames, total, seq = [], 0, 0
    while total < size:
        frame = encode_scan(ramp + np.uint16(seq & 0xFFFF), sequence=seq, scan_number=seq, device_time_ns=seq)
        frames.append(frame)
        total += len(frame)
        seq += 1
    return b"".join(frames)


# ---- the loops (shared by the in-process and the umockdev runs) -----------------------------
def _timed(step: Callable[[], int], seconds: float) -> tuple[int, int, float]:
    """Call ``step`` (returns bytes) for ``seconds``; (bytes, calls, elapsed s)."""
    total = calls = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(16):           # check the clock every 16 reads
            total += step()
        calls += 16
        now = time.perf_counter()
        if now >= deadline:
            return total, calls, now - t0


def bare_loop(backend: Any, read_size: int, seconds: float, copy: bool) -> tuple[int, int, float]:
    import usb.core
    import usb.util

    dev = usb.core.find(idVendor=0x1234, idProduct=0x5678, backend=backend)
    if dev is None:
        raise RuntimeError("the test device 1234:5678 is not there")
    usb.util.claim_interface(dev, 0)
    ep = usb.util.find_descriptor(dev.get_active_configuration()[(0, 0)], bEndpointAddress=0x81)
    size = -(-read_size // ep.wMaxPacketSize) * ep.wMaxPacketSize
    buffer = array.array("B", bytes(size))
    read = dev.read
    try:
        if not copy:
            return _timed(lambda: read(0x81, buffer, 100), seconds)
        target = memoryview(bytearray(1 << 20))
        view = memoryview(buffer)

        def step() -> int:
            n = read(0x81, buffer, 100)
            target[:n] = view[:n]
            return n

        return _timed(step, seconds)
    finally:
        usb.util.dispose_resources(dev)


def source_loop(backend: Any, read_size: int, seconds: float, zero_copy: bool = False) -> tuple[int, int, float]:
    from instrument.sources import SourceURL
    from instrument.sources.usb import create

    src = create(SourceURL.parse(URL.format(read_size=read_size)), backend=backend)
    src.open()
    view = memoryview(bytearray(1 << 20))    # what the acquisition thread hands over
    try:
        if zero_copy:
            read_view = src.read_view
            return _timed(lambda: len(read_view()), seconds)
        return _timed(lambda: src.readinto(view), seconds)
    finally:
        src.close()


def _figures(prefix: str, runs: dict[str, list[tuple[int, int, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, results in runs.items():
        out[f"{prefix}{name}_MBps"] = statistics.median(b / t / 1e6 for b, _, t in results)
        out[f"{prefix}{name}_per_read_us"] = statistics.median(t / c * 1e6 for _, c, t in results)
    out[f"{prefix}ratio"] = out[f"{prefix}source_MBps"] / out[f"{prefix}bare_MBps"]
    out[f"{prefix}per_read_overhead_us"] = out[f"{prefix}source_per_read_us"] - out[f"{prefix}bare_per_read_us"]
    if f"{prefix}bare_copy_MBps" in out:
        out[f"{prefix}ratio_vs_copy"] = out[f"{prefix}source_MBps"] / out[f"{prefix}bare_copy_MBps"]
    if f"{prefix}source_view_MBps" in out:
        out[f"{prefix}ratio_view"] = out[f"{prefix}source_view_MBps"] / out[f"{prefix}bare_MBps"]
    return out


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    from instrument.usbsim import SimulatedBackend, UsbDeviceSpec

    tape = _tape()
    backend = SimulatedBackend(UsbDeviceSpec(), tape, record_buffers=False)
    loops: dict[str, Callable[[], tuple[int, int, float]]] = {
        "bare": lambda: bare_loop(backend, args.read_size, args.seconds, copy=False),
        "bare_copy": lambda: bare_loop(backend, args.read_size, args.seconds, copy=True),
        "source": lambda: source_loop(backend, args.read_size, args.seconds),
        "source_view": lambda: source_loop(backend, args.read_size, args.seconds, zero_copy=True),
    }
    runs: dict[str, list] = {name: [] for name in loops}
    names = list(loops)
    for i in range(args.repeat):
        if i % 5 == 0:
            progress(f"simulated device, rounds {i + 1}-{min(i + 5, args.repeat)} of {args.repeat}")
        for name in names[i % len(names):] + names[:i % len(names)]:   # rotate the order: no loop always first
            runs[name].append(loops[name]())
    result: dict[str, Any] = {"device": "simulated (pyusb backend, memory speed)", "read_size": args.read_size,
                              "repeat": args.repeat}
    result.update(_figures("", runs))
    if args.umockdev:
        result.update(_umockdev(args, tape, progress))
    return result


# ---- through real libusb and the umockdev test bed ------------------------------------------
def _umockdev(args: argparse.Namespace, tape: bytes, progress: Callable[[str], None]) -> dict[str, Any]:
    import instrument.usbsim
    from instrument.usbsim import UsbDeviceSpec

    testbed = _find_testbed(args.testbed)
    if testbed is None:
        return {"umockdev_skipped": f"{args.testbed or TESTBED} not found (run from a repository checkout or "
                                    "give --testbed)"}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, tape_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "tape.bin")
        Path(spec_path).write_text(UsbDeviceSpec().to_json())
        Path(tape_path).write_bytes(tape)
        try:
            bed = subprocess.Popen(["/usr/bin/python3", str(testbed), instrument.usbsim.__file__, spec_path, tape_path],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            return {"umockdev_skipped": f"cannot start /usr/bin/python3: {exc}"}
        try:
            line = bed.stdout.readline().strip()
            if not line.startswith("root "):
                return {"umockdev_skipped": f"test bed did not start: {bed.stderr.read().strip()[-300:]}"}
            env = {**os.environ, "LD_PRELOAD": "libumockdev-preload.so.0", "UMOCKDEV_DIR": line[5:]}
            progress("real libusb through umockdev (child process)")
            child = subprocess.run(
                [sys.executable, "-m", "ionstream.benchmarks.usb", "--child", str(args.read_size),
                 str(args.umockdev_seconds), str(max(1, min(args.repeat, 8)))],
                env=env, capture_output=True, text=True, timeout=120, check=False)
            if child.returncode:
                return {"umockdev_skipped": f"child failed: {child.stderr.strip()[-300:]}"}
            return json.loads(child.stdout.strip().splitlines()[-1])
        finally:
            bed.stdin.close()
            try:
                bed.wait(5)
            except subprocess.TimeoutExpired:
                bed.kill()


def _child(read_size: int, seconds: float, repeat: int) -> None:
    """In the preloaded child: bare and source loops through real libusb."""
    from instrument.usbdev import libusb_backend

    backend, description = libusb_backend()
    runs: dict[str, list] = {"bare": [], "source": []}
    for i in range(repeat):
        order = ("bare", "source") if i % 2 == 0 else ("source", "bare")
        for name in order:
            if name == "bare":
                runs[name].append(bare_loop(backend, read_size, seconds, copy=False))
            else:
                runs[name].append(source_loop(backend, read_size, seconds))
    out: dict[str, Any] = {"umockdev_libusb": description}
    out.update(_figures("umockdev_", runs))
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
