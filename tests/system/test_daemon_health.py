"""Health, supervision and status figures on a real daemon (subprocess, control socket, real CLI)."""
import os
import subprocess
import time

import pytest
from support import IONSTREAM, free_port

from ionstream.client.control import ControlClient, ControlError


def _daemon(tmp_path, args, config=""):
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "ionstream.toml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(IONSTREAM + ["run", "-c", str(cfg), "--no-status-line",
                                         "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--control", control]
                            + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, control


def _status(control):
    with ControlClient(control, timeout=2.0) as client:
        return client.request({"cmd": "status"})


def _poll(control, cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = _status(control)
            if cond(last):
                return last
        except ControlError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"condition not met; last status {last}")


def _stop(proc):
    proc.terminate()
    try:
        return proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_no_data_makes_status_exit_3_and_logs_one_warning(tmp_path):
    # A TCP source nobody serves: the daemon runs, but acquires nothing.
    proc, control = _daemon(tmp_path, ["--source", f"tcp://127.0.0.1:{free_port()}", "--backend", "none"],
                            "[status]\nstall_s = 1.0\ninterval_s = 0.2\n")
    try:
        doc = _poll(control, lambda s: s.get("health") == "unhealthy")
        assert "no data from the source" in doc["health_reasons"]
        cli = subprocess.run(IONSTREAM + ["status", "--endpoint", control], capture_output=True, text=True,
                             timeout=30)
        assert cli.returncode == 3, cli.stderr
        assert "no data from the source" in cli.stdout + cli.stderr
    finally:
        _, err = _stop(proc)
    assert err.count("unhealthy: no data from the source") == 1, err


def test_status_figures_do_not_change_with_who_asks(tmp_path):
    proc, control = _daemon(tmp_path, ["--source", "sim://?rate=20&samples=4096", "--backend", "none"])
    try:
        _poll(control, lambda s: s.get("scans", 0) >= 60)
        rates = [_status(control)["scans_per_s"] for _ in range(20)]
        healthy = subprocess.run(IONSTREAM + ["status", "--endpoint", control], capture_output=True, text=True,
                                 timeout=30)
    finally:
        _stop(proc)
    # Before: every request recomputed the rate over the time since the previous one (0 or ~1000/s).
    assert all(10.0 <= r <= 40.0 for r in rates), rates
    assert healthy.returncode == 0, healthy.stderr


def test_model_reload_runs_in_the_background(tmp_path):
    proc, control = _daemon(tmp_path, ["--source", "sim://?rate=20&samples=4096"])
    try:
        _poll(control, lambda s: s.get("classified", 0) >= 5)
        with ControlClient(control, timeout=2.0) as client:
            reply = client.request({"cmd": "reload-model"})
            assert reply.get("state") == "reloading", reply
            doc = _poll(control, lambda s: s.get("model_reload") == "ok")
            assert doc["state"] == "running"
            bad = client.request({"cmd": "reload-model", "path": str(tmp_path)})
        assert bad.get("state") == "reloading", bad    # accepted at once; the outcome is in status
        doc = _poll(control, lambda s: s.get("model_reload", "").startswith("failed"))
        assert str(tmp_path) in doc["model_reload"]
        before = doc["classified"]
        _poll(control, lambda s: s["classified"] > before + 5)   # the running model stayed
    finally:
        _, err = _stop(proc)
    assert "Traceback" not in err


@pytest.fixture
def small_fs(tmp_path):
    """A real 3 MiB filesystem (tmpfs; needs root, as CI has)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_stops_recording_not_acquisition(tmp_path, small_fs):
    """Issue 14.5/14.6: a recording that fills its disk stops cleanly; status says so; scans go on."""
    proc, control = _daemon(tmp_path, ["--source", "sim://?rate=200&samples=8192", "--backend", "none"],
                            f'[capture]\ndir = "{small_fs}"\nmin_free_bytes = 1048576\n[status]\ninterval_s = 0.2\n')
    try:
        _poll(control, lambda s: s.get("scans", 0) >= 5)
        with ControlClient(control, timeout=5.0) as client:
            reply = client.request({"cmd": "record", "action": "start", "path": "full.isc"})
        assert reply.get("ok"), reply
        # health is judged once a tick, so wait for the tick after the recorder stopped
        doc = _poll(control, lambda s: s.get("record_error", "") != "" and s.get("health") == "unhealthy")
        assert doc["record_low_space"] is True and doc["recording"] == ""
        assert doc["health"] == "unhealthy" and "full.isc" in doc["health_reasons"]
        before = doc["scans"]
        _poll(control, lambda s: s["scans"] > before + 20)          # acquisition and publishing go on
        cli = subprocess.run(IONSTREAM + ["status", "--control", control], capture_output=True, text=True, timeout=30)
        assert cli.returncode == 3, cli.stdout + cli.stderr
    finally:
        _, err = _stop(proc)
    from instrument.capture import capture_info

    info = capture_info(small_fs / "full.isc")   # closed and valid
    assert info.scans > 0 and info.corrupt_bytes == 0 and not info.damage
    assert "Traceback" not in err
