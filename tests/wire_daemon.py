"""A real daemon run for the wire-contract tests (not a test module).

`ionstream run` as a subprocess, with CURVE on both sockets, replays a capture of simulator scans
mixed with the scans the device protocol allows but the DSP cannot analyse (0-, 1- and 2-sample
scans, explicit m/z axes that are not strictly increasing, a calibration whose axis is flat) and
STATUS frames; a CURVE subscriber takes every topic, a CURVE control client sends every command
while it runs. :func:`run_daemon` returns everything received, as it arrived.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instrument.capture import CaptureWriter
from instrument.frames import Calibration, encode_scan, restamp
from instrument.simulator import SimConfig, Simulator
from ionstream.client.control import ControlClient
from ionstream.client.keys import CurveClient, generate_keypair
from ionstream.client.subscriber import Subscriber
from support import IONSTREAM, free_port

SAMPLES = 2048
XIC = ((400.0, 420.0), (700.25, 760.5))
FRAME_INTERVAL_NS = 40_000_000  # recorded host-time step: one pass of the replay (speed 1) lasts ~3 s


@dataclass
class DegenerateScan:
    """A scan the protocol allows and the DSP skips: (samples, explicit axis or None, calibration)."""

    samples: np.ndarray
    axis: np.ndarray | None = None
    calibration: Calibration = Calibration()


def degenerate_scans(sim_calibration: Calibration) -> list[DegenerateScan]:
    ramp = np.linspace(100.0, 1000.0, SAMPLES)
    with_nan = ramp.copy()
    with_nan[SAMPLES // 2] = np.nan
    counts = np.full(SAMPLES, 50, np.uint16)
    return [
        DegenerateScan(np.zeros(0, np.uint16), calibration=sim_calibration),
        DegenerateScan(np.array([7], np.uint16), calibration=sim_calibration),
        DegenerateScan(np.array([7, 9], np.uint16), np.array([100.0, 101.0])),
        DegenerateScan(counts, ramp[::-1].copy()),                     # decreasing axis
        DegenerateScan(counts, with_nan),                              # a NaN in the axis
        DegenerateScan(counts, np.full(SAMPLES, 500.0)),               # constant axis
        DegenerateScan(counts, calibration=Calibration(1000.0, 0.5, 10.0, 0.0, 0.0)),  # flat TOF law
    ]


@dataclass
class Capture:
    path: Path
    scans: int                        # SCAN frames in it
    skipped_scans: set[int]           # scan numbers the DSP cannot analyse
    explicit_ok_scan: int             # a scan with a valid explicit axis (analysed)


def write_capture(path: Path, before: int = 40, after: int = 20) -> Capture:
    """Simulator scans, then the degenerate ones and one good explicit-axis scan, then more scans.

    Every frame is restamped so sequence numbers, scan numbers and device times run on without
    a gap (the decoder's counters stay clean; only the DSP sees anything unusual)."""
    sim = Simulator(SimConfig(scan_rate_hz=0, clock_rate_hz=25.0, n_samples=SAMPLES, seed=5, cycle_s=2.0,
                              status_interval_s=0.4))
    frames: list[bytearray] = []
    skipped: set[int] = set()
    scan = 0

    def add_sim_scans(count: int) -> None:
        nonlocal scan
        target = scan + count
        while scan < target:
            frame, truth = next(sim)
            frames.append(bytearray(frame))
            if truth is not None:
                scan += 1

    add_sim_scans(before)
    for bad in degenerate_scans(sim.calibration):
        skipped.add(scan)
        frames.append(bytearray(encode_scan(bad.samples, sequence=0, scan_number=0, device_time_ns=0,
                                            calibration=bad.calibration, mz_axis=bad.axis)))
        scan += 1
    explicit_ok = scan  # an imported spectrum: explicit increasing axis, one peak on a flat baseline
    axis = np.linspace(150.0, 1500.0, SAMPLES)
    peak = (50 + 5000 * np.exp(-0.5 * ((axis - 622.03) / 0.4) ** 2)).astype(np.uint16)
    frames.append(bytearray(encode_scan(peak, sequence=0, scan_number=0, device_time_ns=0, mz_axis=axis)))
    scan += 1
    add_sim_scans(after)

    scan_number = -1
    with CaptureWriter(path, {"source": {"url": "test://wire-contract"}}, fsync_interval_s=None) as writer:
        for i, frame in enumerate(frames):
            is_scan = frame[5] == 1
            scan_number += is_scan
            restamp(frame, sequence=i, scan_number=max(scan_number, 0), device_time_ns=10**9 + i * FRAME_INTERVAL_NS)
            writer.append(bytes(frame), 1_700_000_000_000_000_000 + i * FRAME_INTERVAL_NS)
    return Capture(path, scan, skipped, explicit_ok)


@dataclass
class Run:
    """What one daemon run sent: raw frames per message, control replies by request, its stderr."""

    messages: list[tuple[str, dict, list[bytes]]] = field(default_factory=list)   # (topic, header, frames)
    replies: dict[str, dict] = field(default_factory=dict)
    capture: Capture | None = None
    stderr: str = ""
    exit_code: int | None = None

    def headers(self, topic: str) -> list[dict]:
        return [h for t, h, _ in self.messages if t == topic]

    def first_pass(self, topic: str) -> list[dict]:
        """Headers of one topic about the first pass over the capture (the replay loops): frames
        acquired before the first frame of the second pass (the peaks message with seq = scans)."""
        boundary = self.second_pass_t_acq_ns()
        return [h for h in self.headers(topic) if h["t_acq_ns"] < boundary]

    def second_pass_t_acq_ns(self) -> int:
        return next(h["t_acq_ns"] for h in self.headers("peaks") if h["seq"] == self.capture.scans)


def curve_config(directory: Path) -> tuple[str, CurveClient]:
    """Keys as docs/wire.md § 11 lays them out, the [publish] lines that use them, and alice's client."""
    keys = directory / "keys"
    generate_keypair(keys, "server")
    generate_keypair(keys / "clients", "alice")
    toml = (f'curve_server_secret = "{keys / "server.key_secret"}"\n'
            f'curve_clients_dir = "{keys / "clients"}"\n')
    return toml, CurveClient(keys / "clients" / "alice.key_secret", keys / "server.key")


CONTROL_REQUESTS = {
    "status": {"cmd": "status", "id": 1},
    "help": "help",
    "record start": "record start contract.isc",
    "record stop": {"cmd": "record", "action": "stop"},
    "reload-model": {"cmd": "reload-model"},
    "refused": {"cmd": "record", "action": "pause"},
}


def run_daemon(directory: Path, timeout_s: float = 60.0) -> Run:
    capture = write_capture(directory / "contract.isc")
    curve_toml, alice = curve_config(directory)
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    (directory / "daemon.toml").write_text(
        f'[source]\nurl = "replay://{capture.path}?speed=1&loop=1"\n'
        f'[ring]\nslots = 64\nmax_samples = 8192\n'
        f'[dsp]\nworkers = 2\nxic = {json.dumps([list(w) for w in XIC])}\n'
        f'[inference]\nbackend = "onnxruntime"\n'
        f'[status]\ninterval_s = 0.1\n'
        f'[capture]\ndir = "{directory / "captures"}"\n'
        f'[publish]\nendpoint = "{endpoint}"\ncontrol = "{control}"\nspectrum = true\n'
        f'queue = 100000\nhwm = 100000\nwait_subscribers = 1\n' + curve_toml)
    run = Run(capture=capture)
    deadline = time.monotonic() + timeout_s
    with Subscriber(endpoint, topics=None, timeout=30.0, curve=alice, rcvhwm=100_000) as sub:
        proc = subprocess.Popen(IONSTREAM + ["run", "-c", "daemon.toml", "--no-status-line"], cwd=directory,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            with ControlClient(control, curve=alice, timeout=10.0) as client:
                while True:
                    if not sub.socket.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                        raise AssertionError(f"no message within {timeout_s} s of the start; daemon log:\n"
                                             f"{_stop(proc)[-3000:]}")
                    frames = sub.socket.recv_multipart()  # raw frames: the schema sees the exact bytes
                    run.messages.append((frames[0].decode("ascii"), json.loads(frames[1]), frames))
                    if frames[0] == b"status" and not run.replies:
                        run.replies = {name: client.request(req) for name, req in CONTROL_REQUESTS.items()}
                    if frames[0] == b"class" and _second_pass(run, capture) and len(run.headers("status")) >= 3:
                        break  # classes are published in scan order: every first-pass class came before
                    assert time.monotonic() < deadline, "the daemon did not send every scan in time"
                run.replies["shutdown"] = client.request("shutdown")  # the replay loops: it is running
            _, run.stderr = proc.communicate(timeout=30)
            run.exit_code = proc.returncode
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return run


def _second_pass(run: Run, capture: Capture) -> bool:
    """True once the last message received (a class) is about a scan of the replay's second pass."""
    if sum(1 for t, _, _ in run.messages if t == "peaks") <= capture.scans:
        return False
    return run.messages[-1][1]["t_acq_ns"] >= run.second_pass_t_acq_ns()


def _stop(proc: subprocess.Popen) -> str:
    """Kill a daemon that failed the test; its stderr."""
    proc.kill()
    return proc.communicate()[1]
