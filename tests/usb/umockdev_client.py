"""The process under test for tests/instrument_tests/test_usb_umockdev.py: runs one scenario, prints one JSON line.

Started by the test with the project's Python and ``LD_PRELOAD=libumockdev-preload.so.0
UMOCKDEV_DIR=<test bed root>``, so the libusb it loads (libusb-package's, through pyusb) finds
the emulated device in /sys and /dev and its usbdevfs ioctls go to tests/usb/umockdev_testbed.py.

    python tests/usb/umockdev_client.py SCENARIO '{"url": ..., ...}'
"""
import json
import sys
import time

import numpy as np

from instrument.acquisition import AcquisitionThread
from instrument.ring import RingBuffer
from instrument.sources import SourceDisconnected, SourceUnavailable, open_source


def read_scenario(args: dict) -> dict:
    """Direct source calls: stream, a pause (timeouts), an unplug, reopen attempts, the replug."""
    with open(args["tape"], "rb") as f:
        tape = f.read()
    src = open_source(args["url"])
    src.open()
    out = {"describe": src.describe()}
    buf = memoryview(bytearray(1 << 20))
    got = bytearray()
    zero_reads = []
    error = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        t = time.monotonic()
        try:
            n = src.readinto(buf)
        except SourceDisconnected as exc:
            error = str(exc)
            break
        if n == 0:
            zero_reads.append(time.monotonic() - t)
        got += buf[:n]
    out["bytes_before_unplug"] = len(got)
    out["data_matches_tape"] = bytes(got) == tape[:len(got)]
    out["zero_reads"] = len(zero_reads)
    out["zero_read_s_max"] = max(zero_reads, default=0.0)
    out["zero_read_s_min"] = min(zero_reads, default=0.0)
    out["disconnect_error"] = error
    src.close()
    failures = []
    t_lost = time.monotonic()
    while time.monotonic() - t_lost < 10:
        try:
            src.open()
            break
        except SourceUnavailable as exc:
            failures.append(str(exc))
            time.sleep(0.05)
    out["back_after_s"] = time.monotonic() - t_lost
    out["open_failures"] = len(failures)
    out["first_open_failure"] = failures[0] if failures else None
    out["describe_after"] = src.describe()
    more = bytearray()
    while len(more) < 4096:
        n = src.readinto(buf)
        more += buf[:n]
    resume_at = len(got) + args.get("lost_while_away", 0)
    out["resumed_at_expected_offset"] = bytes(more[:4096]) == tape[resume_at:resume_at + 4096]
    src.close()
    src.close()
    return out


def acquire_scenario(args: dict) -> dict:
    """The acquisition thread into a ring, at full speed, through an unplug and a replug."""
    n_samples = args["n_samples"]
    ramp = np.arange(n_samples, dtype=np.uint16)
    ring = RingBuffer(slots=args.get("slots", 4096), slot_bytes=args["slot_bytes"], policy="block")
    reader = ring.add_reader("test")
    src = open_source(args["url"])
    acq = AcquisitionThread(src, ring, backoff_initial_s=0.02, backoff_max_s=0.1).start()
    seen, bad = [], []
    t_first = None
    last = args["last_sequence"]
    deadline = time.monotonic() + args.get("timeout_s", 40)
    try:
        while time.monotonic() < deadline and (not seen or seen[-1] != last):
            slot = reader.get(timeout=0.05)
            if slot is None:
                continue
            if t_first is None:
                t_first = time.monotonic()
            seq = slot.header.sequence
            if not np.array_equal(slot.samples(), ramp + np.uint16(seq & 0xFFFF)):
                bad.append(seq)
            seen.append(seq)
            reader.release()
        elapsed = time.monotonic() - (t_first or time.monotonic())
        while acq.stats.reconnects < args.get("reconnects", 0) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        acq.stop()
    stats = acq.stats
    return {
        "seen": seen, "bad": bad, "elapsed_s": elapsed,
        "MBps": stats.bytes_read / elapsed / 1e6 if elapsed else 0.0,
        "bytes_read": stats.bytes_read, "reads": stats.reads, "disconnects": stats.disconnects,
        "reconnects": stats.reconnects, "open_failures": stats.open_failures, "error": stats.error,
        "decoder": acq.decoder.stats.as_dict(), "describe": src.describe(),
    }


def driver_scenario(args: dict) -> dict:
    """Kernel driver detach/reattach and the vendor start/stop requests."""
    src = open_source(args["url"])
    src.open()
    buf = memoryview(bytearray(1 << 16))
    total = 0
    while total < 8192:
        total += src.readinto(buf)
    src.close()
    return {"bytes": total}


def main() -> None:
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    result = {"read": read_scenario, "acquire": acquire_scenario, "driver": driver_scenario}[scenario](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
