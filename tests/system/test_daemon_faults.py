"""Faults during a daemon run, end to end: a corrupted stretch of input, the instrument's link
dropping and coming back, and a subscriber that stops reading. The daemon is a real subprocess
reading a real TCP link; results are read by a real ZeroMQ subscriber and the counters over the
control socket. Nothing acquired may be lost beyond what the counters name.
"""
import os
import signal
import socket
import subprocess
import time

import numpy as np
import zmq

from instrument.frames import encode_scan
from ionstream.client.control import ControlClient
from ionstream.client.subscriber import Subscriber
from support import IONSTREAM, free_port

# Spectra of this size (768 KiB each on the `spectrum` topic) overflow the stuck subscriber's
# ZeroMQ queues and the kernel's socket buffers within the run.
N_SAMPLES = 65536


def _frame(scan: int) -> bytes:
    rng = np.random.default_rng(scan)
    x = np.linspace(0, 60, N_SAMPLES)
    samples = 200 + 5000 * np.exp(-0.5 * ((x - 20 - scan % 7) / 0.3) ** 2) + rng.normal(0, 10, N_SAMPLES)
    return encode_scan(samples.astype(np.uint16), sequence=scan, scan_number=scan,
                       device_time_ns=scan * 50_000_000)


def _send(conn: socket.socket, scans) -> None:
    """Frames at an instrument's pace (10 every 20 ms), not one burst: with the small high-water
    mark below, a burst could overflow even a subscriber that reads as fast as it can."""
    scans = list(scans)
    for i in range(0, len(scans), 10):
        conn.sendall(b"".join(_frame(k) for k in scans[i:i + 10]))
        time.sleep(0.02)


def _accept(server: socket.socket) -> socket.socket:
    server.settimeout(20)
    conn, _ = server.accept()
    return conn


def test_corruption_unplug_and_a_stuck_subscriber_lose_nothing_uncounted(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context.instance()
    stuck = ctx.socket(zmq.SUB)  # subscribes, then never reads: ZeroMQ drops for it alone
    stuck.setsockopt(zmq.RCVHWM, 5)
    stuck.setsockopt(zmq.SUBSCRIBE, b"peaks")
    stuck.setsockopt(zmq.SUBSCRIBE, b"spectrum")
    stuck.connect(endpoint)
    # A small send high-water mark (60 messages + its own 5), so the stuck subscriber overflows
    # within this run; the reading subscriber keeps up and must miss nothing.
    (tmp_path / "faults.toml").write_text("[publish]\nhwm = 60\n")
    proc = None
    try:
        with Subscriber(endpoint, topics=["peaks"], timeout=30.0) as sub:
            proc = subprocess.Popen(
                IONSTREAM + ["run", "-c", "faults.toml", "--source", f"tcp://127.0.0.1:{server.getsockname()[1]}", "--endpoint", endpoint,
                             "--control", control, "--backend", "none", "--no-status-line", "--spectrum",
                             "--wait-subscribers", "2"],
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            conn = _accept(server)
            _send(conn, range(40))
            bad = bytearray(_frame(40))
            bad[300] ^= 0xFF                                   # a payload byte flipped on the line
            conn.sendall(os.urandom(5000) + bytes(bad))
            _send(conn, range(41, 80))
            time.sleep(0.5)
            conn.close()                                       # the link drops ...
            conn = _accept(server)                             # ... and the daemon comes back by itself
            _send(conn, range(80, 120))

            expected = set(range(120)) - {40}
            seen = set()
            while seen != expected:
                msg = sub.recv()
                assert not msg.gap, f"the reading subscriber missed {msg.gap} message(s)"
                seen.add(msg.scan)
                assert msg.scan in expected, f"unexpected scan {msg.scan}"

            with ControlClient(control, timeout=10) as client:
                reply = client.request({"cmd": "status"})
            shown = subprocess.run(IONSTREAM + ["status", "--endpoint", control], cwd=tmp_path, capture_output=True,
                                   text=True, timeout=30)
            conn.close()
        assert shown.returncode == 0, shown.stderr
        assert "state  running" in shown.stdout and "CRC errors  " in shown.stdout, shown.stdout
        assert reply["ok"], reply
        status = reply
        assert status["state"] == "running"
        assert status["crc_errors"] >= 1 and status["bytes_skipped"] >= 5000
        assert status["disconnects"] >= 1 and status["reconnects"] >= 1
        assert status["drops_total"] == 0 and status["scans"] == 119
        held = 0  # what reached the stuck subscriber: ZeroMQ dropped the rest for it alone
        while stuck.poll(200):
            stuck.recv_multipart()
            held += 1
        assert 0 < held < 2 * 119, held
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped: 119 scans, 0 drops" in err and "Traceback" not in err
    finally:
        stuck.close(0)
        server.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
