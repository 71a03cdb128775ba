"""Replay determinism: the daemon publishes byte-identical peaks and classes for one capture,
on every run and whatever the number of DSP workers.

Real parts throughout: a capture recorded by `ionstream record` from the simulator, the daemon
as a subprocess replaying it at full speed, and a ZeroMQ subscriber over TCP.
"""
import hashlib
import os
import subprocess

import numpy as np
import pytest

from ionstream.client.subscriber import Subscriber
from support import IONSTREAM, free_port

SCANS = 240


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("determinism")
    # Status frames included (every 50 scans), so the sequencer's ordering of non-scan frames is exercised too.
    proc = subprocess.run(IONSTREAM + ["record", "--source", f"sim://?rate=0&samples=8192&count={SCANS}&seed=11",
                                       "--out", "cap.isc"], cwd=d, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Queues big enough for the whole replay: this test is about order and bytes, not back-pressure.
    (d / "replay.toml").write_text("[publish]\nqueue = 100000\nhwm = 100000\ncontrol = \"\"\n"
                                   "[inference]\nbackend = \"onnxruntime\"\nmax_batch = 16\n")
    return d


def _replay(capture_dir, workers: int) -> dict:
    """Run the daemon on the capture; return per-topic digests of what a subscriber received."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # One subscription (every topic), so --wait-subscribers 1 cannot start acquisition between two.
    with Subscriber(endpoint, topics=None, timeout=60.0) as sub:
        proc = subprocess.Popen(IONSTREAM + ["run", "-c", "replay.toml", "--source",
                                             f"replay://{capture_dir / 'cap.isc'}?speed=max",
                                             "--workers", str(workers), "--endpoint", endpoint,
                                             "--wait-subscribers", "1", "--no-status-line"],
                                cwd=capture_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peaks, classes = [], []
        try:
            while len(peaks) < SCANS or len(classes) < SCANS:
                msg = sub.recv()
                assert not msg.gap, f"missed {msg.gap} {msg.topic} message(s)"
                if msg.topic not in ("peaks", "class"):
                    continue
                if msg.topic == "peaks":
                    peaks.append((msg.scan, msg.header["tic"],
                                  b"".join(msg[k].tobytes() for k in ("mz", "intensity", "area", "fwhm", "snr"))))
                else:
                    classes.append((msg.scan, msg.header["label"], msg["probabilities"].tobytes()))
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert f"stopped: {SCANS} scans, 0 drops" in err, err
    return {"peaks": peaks, "class": classes}


def _digest(items) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()


def test_replay_publishes_identical_bytes_across_runs_and_worker_counts(capture):
    first = _replay(capture, workers=1)
    # Sanity: the replay carries real content (peaks and more than one label), in scan order.
    scans = [s for s, _, _ in first["peaks"]]
    assert scans == sorted(scans) and len(set(scans)) == SCANS
    assert np.mean([len(b) for _, _, b in first["peaks"]]) > 10 * 24  # > 10 peaks/scan (24 bytes/peak)
    assert len({label for _, label, _ in first["class"]}) > 1
    again = _replay(capture, workers=1)
    three = _replay(capture, workers=3)
    for topic in ("peaks", "class"):
        assert _digest(again[topic]) == _digest(first[topic]), f"{topic}: a second run differs"
        assert _digest(three[topic]) == _digest(first[topic]), f"{topic}: 3 DSP workers differ from 1"
