"""`bench e2e` scaling (issue 17 step 3): the simulator in a feeder process over TCP, the
scaling table and the samples sweep, run for real (short) through the CLI."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess

import pytest

from instrument.frames import FrameDecoder, FrameType
from ionstream.benchmarks.e2e import _int_list, scaling_workers
from ionstream.benchmarks.feeder import start_feeder
from support import IONSTREAM


def test_feeder_serves_valid_frames_from_its_own_process():
    feeder = start_feeder("sim://?rate=0&samples=256&seed=3&repeat=4")
    try:
        assert feeder.process.pid != os.getpid() and feeder.process.poll() is None
        host, port = feeder.url[len("tcp://"):].rsplit(":", 1)
        decoder, frames = FrameDecoder(), []
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            while len(frames) < 20:
                frames.extend(decoder.feed(conn.recv(1 << 16)))
        scans = [f for f in frames if f.header.frame_type == FrameType.SCAN]
        assert [f.header.sequence for f in frames] == list(range(len(frames)))  # nothing lost, in order
        assert scans and all(f.header.n_samples == 256 for f in scans)
        feeder.process.wait(10)  # the client went away: the feeder ends by itself
        assert feeder.process.returncode == 0
    finally:
        feeder.stop()


def test_feeder_refuses_a_non_sim_url_clearly():
    with pytest.raises(RuntimeError, match="feeder did not start"):
        start_feeder("tcp://127.0.0.1:1")


def test_scaling_worker_counts():
    assert scaling_workers(1) == [1] and scaling_workers(2) == [1]
    assert scaling_workers(16) == [1, 2, 4, 8, 15]
    assert scaling_workers(9) == [1, 2, 4, 8]


def test_bad_lists_are_refused_with_the_reason():
    for bad in ("4k", "0", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            _int_list(bad)


def test_scaling_table_and_sweep_through_the_cli():
    out = subprocess.run([*IONSTREAM, "bench", "e2e", "--json", "--seconds", "0.6", "--naive-scans", "5",
                          "--scaling", "--scaling-workers", "1,2", "--samples", "4096,16384"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [row["workers"] for row in result["scaling"]] == [1, 2]
    assert all(row["scans_per_s"] > 0 and row["drops"] == 0 for row in result["scaling"])
    assert result["scans_per_s_max"] == max(row["scans_per_s"] for row in result["scaling"])
    assert result["workers_at_max"] in (1, 2) and result["cores"] >= 1
    one = result["scaling"][0]["scans_per_s"]
    assert result["scaling_efficiency"] == pytest.approx(result["scans_per_s_max"] / (result["workers_at_max"] * one))
    assert [row["samples"] for row in result["samples_sweep"]] == [4096, 16384]
    assert all(row["ns_per_sample_per_core"] > 0 for row in result["samples_sweep"])
    assert result["simulator"] == "feeder process over TCP" and result["samples_per_scan"] == 4096
