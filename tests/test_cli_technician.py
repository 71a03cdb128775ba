"""The technician's first hour (issue 15): the CLI as a subprocess, real sockets and files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support import IONSTREAM, free_port

from ionstream.control import ControlClient, ControlError


def _endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def _start(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(IONSTREAM + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _run(args, cwd, timeout=60):
    return subprocess.run(IONSTREAM + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wait_status(control: str, deadline_s: float = 30.0) -> dict:
    """Poll the daemon's control socket until it answers (readiness, not a sleep)."""
    deadline = time.monotonic() + deadline_s
    with ControlClient(control, timeout=0.5) as client:
        while True:
            try:
                return client.request({"cmd": "status"})
            except ControlError:
                assert time.monotonic() < deadline, "the daemon never answered"


class TestDurationAndWait:
    def test_duration_runs_while_waiting_for_subscribers(self, tmp_path):
        """Item 7: --duration counts from start-up; a wait for a subscriber who never comes ends."""
        pub, control = _endpoints()
        proc = _start(["run", "--source", "sim://?rate=20&samples=1024", "--backend", "none",
                       "--wait-subscribers", "1", "--duration", "2s", "--endpoint", pub, "--control", control],
                      tmp_path)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "waiting for 1 subscriber" in err and "stopped: 0 scans" in err
