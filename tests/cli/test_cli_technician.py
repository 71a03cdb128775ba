"""The technician's first hour (issue 15): the CLI as a subprocess, real sockets and files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support import IONSTREAM, free_port

from ionstream.client.control import ControlClient, ControlError


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


class TestLogSection:
    """Item 2: [log] in the file is applied by run and record; flags override it."""

    def test_run_applies_log_format_and_level(self, tmp_path):
        pub, control = _endpoints()
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[source]\nurl = "sim://?rate=50&samples=1024"\n[inference]\nbackend = "none"\n'
                       f'[publish]\nendpoint = "{pub}"\ncontrol = "{control}"\n'
                       '[log]\nformat = "json"\nlevel = "warning"\n')
        r = _run(["run", "-c", str(cfg), "--duration", "1s"], tmp_path)
        assert r.returncode == 0, r.stderr
        # level warning: no info lines at all (stderr may be empty); anything written is JSON
        assert "running:" not in r.stderr
        assert all(json.loads(line) for line in r.stderr.splitlines() if line.strip())
        r = _run(["run", "-c", str(cfg), "--duration", "1s", "-v", "--log-format", "kv"], tmp_path)  # -v after run
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert any("running:" in line for line in lines)
        assert all(line.startswith("ts=") for line in lines if line.strip())

    def test_record_applies_log_format(self, tmp_path):
        cfg = tmp_path / "c.toml"
        cfg.write_text('[log]\nformat = "json"\n')
        r = _run(["record", "-c", str(cfg), "--source", "sim://?rate=0&samples=1024&count=20", "--out", "x.isc"],
                 tmp_path)
        assert r.returncode == 0, r.stderr
        docs = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
        assert any(d["msg"].startswith("recorded ") and d["msg"].endswith("frames to x.isc") for d in docs)


class TestRecordStatusLine:
    def test_standalone_record_shows_real_rates(self, tmp_path):
        """Item 8: the standalone recorder's status shows scans/s and MB/s, not '-' and 0.00."""
        cfg = tmp_path / "c.toml"
        cfg.write_text('[status]\ninterval_s = 0.2\nlog_interval_s = 0.1\n')
        r = _run(["record", "-c", str(cfg), "--source", "sim://?rate=50&samples=1024", "--out", "x.isc",
                  "--duration", "3s", "--log-format", "json"], tmp_path)
        assert r.returncode == 0, r.stderr
        status = [json.loads(line)["msg"] for line in r.stderr.splitlines() if '"status: ' in line]
        assert len(status) >= 3, r.stderr
        later = status[2:]  # the first window may start before the source's first frame
        rates = [float(s.split(" | ")[1].split()[0]) for s in later]
        mbps = [float(s.split(" | ")[2].split()[0]) for s in later]
        assert all(rate > 0 for rate in rates) and all(m > 0 for m in mbps), status


@pytest.fixture
def daemon(tmp_path):
    """A daemon on the simulator with a control socket; yields (pub, control, tmp_path)."""
    pub, control = _endpoints()
    proc = _start(["run", "--source", "sim://?rate=20&samples=1024", "--backend", "none", "--endpoint", pub,
                   "--control", control, "--no-status-line"], tmp_path)
    try:
        _wait_status(control)
        yield pub, control, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class TestOneNamePerSocket:
    """Item 6: --control names the control socket everywhere; old names are deprecated aliases."""

    def test_status_control(self, daemon):
        _, control, cwd = daemon
        r = _run(["status", "--control", control], cwd)
        assert r.returncode == 0, r.stderr
        assert "state" in r.stdout and "deprecated" not in r.stderr

    def test_status_endpoint_still_works_with_a_warning(self, daemon):
        _, control, cwd = daemon
        r = _run(["status", "--endpoint", control, "--json"], cwd)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ok"]
        assert r.stderr.count("\n") == 1 and "--endpoint is deprecated here; use --control" in r.stderr

    def test_status_reads_the_control_endpoint_from_the_config(self, daemon):
        pub, control, cwd = daemon
        cfg = cwd / "client.toml"
        cfg.write_text(f'[publish]\nendpoint = "{pub}"\ncontrol = "{control}"\n')
        r = _run(["status", "-c", str(cfg), "--json"], cwd)
        assert r.returncode == 0, r.stderr

    def test_record_start_stop_with_control_and_the_old_alias(self, daemon):
        _, control, cwd = daemon
        r = _run(["record", "start", "a.isc", "--control", control], cwd)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().endswith("a.isc")
        r = _run(["record", "stop", "--control-endpoint", control], cwd)
        assert r.returncode == 0, r.stderr
        assert "--control-endpoint is deprecated here; use --control" in r.stderr


class TestRecordOverCurve:
    def test_record_start_stop_on_a_curve_daemon(self, tmp_path):
        """Item 6 / review 11: record start/stop take --curve-key/--curve-server-key like listen."""
        keys = tmp_path / "keys"
        clients = tmp_path / "clients"
        clients.mkdir()
        for name in ("server", "tech"):
            assert _run(["keys", "generate", str(keys), "--name", name], tmp_path).returncode == 0
        (clients / "tech.key").write_bytes((keys / "tech.key").read_bytes())
        pub, control = _endpoints()
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[source]\nurl = "sim://?rate=20&samples=1024"\n[inference]\nbackend = "none"\n'
                       f'[publish]\nendpoint = "{pub}"\ncontrol = "{control}"\n'
                       f'curve_server_secret = "{keys / "server.key_secret"}"\ncurve_clients_dir = "{clients}"\n')
        proc = _start(["run", "-c", str(cfg), "--no-status-line"], tmp_path)
        curve = ["--curve-key", str(keys / "tech.key_secret"), "--curve-server-key", str(keys / "server.key")]
        try:
            deadline = time.monotonic() + 30
            while True:  # readiness: the daemon answers a CURVE status request
                r = _run(["status", "--control", control, "--timeout", "0.5"] + curve, tmp_path)
                if r.returncode == 0:
                    break
                assert time.monotonic() < deadline and proc.poll() is None, r.stderr
            r = _run(["record", "start", "c.isc", "--control", control] + curve, tmp_path)
            assert r.returncode == 0, r.stderr
            r = _run(["record", "stop", "--control", control] + curve, tmp_path)
            assert r.returncode == 0, r.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert (tmp_path / "captures" / "c.isc").exists()


class TestSmaller:
    def test_version(self, tmp_path):
        from ionstream import __version__

        r = _run(["--version"], tmp_path)
        assert r.returncode == 0 and r.stdout.strip() == f"ionstream {__version__}"

    def test_listen_prints_its_summary_on_sigterm(self, tmp_path):
        pub, _ = _endpoints()
        proc = _start(["listen", "--endpoint", pub], tmp_path)
        try:
            line = proc.stderr.readline()  # "listening on ...": the loop is entered
            assert line.startswith("listening on"), line
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "0 message(s)" in err

    def test_listen_counts_one_restart_once(self):
        """A publisher restart shows on every topic's next message; listen counts it once."""
        from ionstream.cli.listen import Summary
        from ionstream.daemon.publisher import Publisher
        from ionstream.client.subscriber import Subscriber

        endpoint = f"tcp://127.0.0.1:{free_port()}"
        summary = Summary()
        with Subscriber(endpoint, ["peaks", "class"], timeout=10.0) as sub:
            for _ in range(2):  # the same publisher endpoint twice: a restart between
                with Publisher(endpoint) as pub:
                    deadline = time.monotonic() + 10
                    while not pub.wait_for_subscribers(1, "class", timeout=0.005):
                        assert time.monotonic() < deadline
                        sub.socket.poll(5)
                    pub.publish("peaks", {"scan": 1}, {})
                    pub.publish("class", {"scan": 1, "label": "x"}, {})
                    firsts = [summary.add(sub.recv()) for _ in range(2)]
        assert summary.restarts == 1 and sum(firsts) == 1

    def test_client_error_is_one_sentence(self, tmp_path):
        r = _run(["status", "--endpoint", "bogus"], tmp_path)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr and "[Errno" not in r.stderr
        assert "bogus" in r.stderr and "not a valid endpoint" in r.stderr

    def test_client_logs_plainly_on_a_terminal(self, tmp_path):
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(IONSTREAM + ["status", "--control", f"tcp://127.0.0.1:{free_port()}",
                                             "--timeout", "0.3"], cwd=tmp_path, stdin=slave, stdout=slave,
                                stderr=slave, close_fds=True)
        os.close(slave)
        out = b""
        try:
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            proc.wait(timeout=30)
            os.close(master)
        text = out.decode()
        assert proc.returncode == 1
        assert text.startswith("ionstream status: no reply from tcp://127.0.0.1:"), text
        assert "ts=" not in text and "level=" not in text


def test_sighup_reload_logs_no_python_repr(tmp_path):
    """Item 8: SIGHUP's reload log lines are plain text (no dict repr, no True/False)."""
    import selectors

    pub, control = _endpoints()
    proc = _start(["run", "--source", "sim://?rate=20&samples=1024", "--backend", "onnxruntime",
                   "--endpoint", pub, "--control", control, "--log-format", "kv"], tmp_path)
    lines: list[str] = []
    try:
        _wait_status(control)
        proc.send_signal(signal.SIGHUP)
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while not any("model reloaded" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            if sel.select(timeout=0.5):
                lines.append(proc.stderr.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    reloaded = [line for line in lines if "backend reloaded" in line]
    assert reloaded and "{'" not in reloaded[0] and "True" not in reloaded[0], reloaded
    assert "backend onnxruntime" in reloaded[0]
