"""The control socket (ionstream/client/control.py, ionstream/daemon/control.py) and `ionstream status`, on real sockets."""
import json
import subprocess
import sys
import threading

import pytest
import zmq

from ionstream.client.control import COMMANDS, ControlClient, ControlError, ControlTimeout, parse_request

from ionstream.daemon.control import ControlServer
from ionstream.daemon.security import EndpointError


class FakeDaemon:
    """Handlers as the daemon registers them, recording what they were asked to do."""

    def __init__(self):
        self.calls = []
        self.recording = None
        self.shutdown = threading.Event()

    def handlers(self):
        return {"status": self.status, "record": self.record, "reload-model": self.reload, "shutdown": self.stop}

    def status(self, req):
        self.calls.append(("status",))
        return {"state": "running", "scans": 12, "scans_per_s": 20.0, "drops_total": 0,
                "latency_p50_ms": float("nan"), "ring_fill": 0.25, "recording": self.recording or ""}

    def record(self, req):
        self.calls.append(("record", req["action"], req.get("path")))
        if req["action"] == "start":
            if self.recording:
                raise RuntimeError(f"already recording to {self.recording}; stop that first")
            self.recording = "captures/" + req["path"]
            return {"path": self.recording}
        path, self.recording = self.recording, None
        return {"path": path}

    def reload(self, req):
        self.calls.append(("reload-model", req.get("path")))
        if req.get("path") == "broken":
            raise KeyError("model.json")  # a bug, not a refusal
        return {"model": "default@1"}

    def stop(self, req):
        self.calls.append(("shutdown",))
        self.shutdown.set()


@pytest.fixture
def daemon():
    d = FakeDaemon()
    with ControlServer("tcp://127.0.0.1:*", d.handlers()) as server:
        d.server = server
        with ControlClient(server.endpoint, timeout=5.0) as client:
            d.client = client
            yield d


class TestCommands:
    def test_status(self, daemon):
        reply = daemon.client.request({"cmd": "status"})
        assert reply["ok"] is True and reply["cmd"] == "status" and reply["scans"] == 12
        assert reply["latency_p50_ms"] is None  # NaN is not JSON: sent as null

    def test_record_start_stop_text_and_json(self, daemon):
        assert daemon.client.request("record start run1.isc") == {"ok": True, "cmd": "record",
                                                                  "path": "captures/run1.isc"}
        reply = daemon.client.request({"cmd": "record", "action": "start", "path": "run2.isc"})
        assert reply == {"ok": False, "error": "already recording to captures/run1.isc; stop that first"}
        assert daemon.client.request({"cmd": "record", "action": "stop", "id": 7}) == {
            "ok": True, "cmd": "record", "path": "captures/run1.isc", "id": 7}
        assert daemon.calls == [("record", "start", "run1.isc"), ("record", "start", "run2.isc"),
                                ("record", "stop", None)]

    def test_reload_and_shutdown(self, daemon):
        assert daemon.client.request("reload-model")["model"] == "default@1"
        assert daemon.client.request("shutdown") == {"ok": True, "cmd": "shutdown"}
        assert daemon.shutdown.is_set()

    def test_path_with_spaces(self, daemon):
        assert daemon.client.request('record start "my run.isc"')["path"] == "captures/my run.isc"

    def test_help_lists_commands(self, daemon):
        reply = daemon.client.request("help")
        assert set(reply["commands"]) == {"status", "record", "reload-model", "shutdown", "help"}
        assert reply["commands"]["record"].startswith("record start PATH")

    def test_handler_bug_is_reported_and_the_server_goes_on(self, daemon, caplog):
        reply = daemon.client.request("reload-model broken")
        assert reply["ok"] is False and reply["error"].startswith("internal error: KeyError")
        assert "control handler failed" in caplog.text
        assert daemon.client.request("status")["ok"]


class TestRefusals:
    @pytest.mark.parametrize("request_, error", [
        ("bogus", "unknown command 'bogus'; available: help, record, reload-model, shutdown, status"),
        ({"cmd": "nope"}, "unknown command 'nope'"),
        ("record", "record: 'action' must be 'start' or 'stop', got None"),
        ("record start", "record start: needs 'path'"),
        ("record pause x", "'action' must be 'start' or 'stop', got 'pause'"),
        ({"cmd": "record", "action": "start", "path": 5}, "record start: needs 'path'"),
        ({"cmd": "record", "action": "stop", "path": "x"}, "record stop: takes no 'path'"),
        ("record start a b", "too many words"),
        ("shutdown now", "shutdown: unexpected argument(s) now"),
        ({"cmd": "shutdown", "force": True}, "shutdown: takes no arguments, got force"),
        ({"cmd": "status", "x": 1}, "status: takes no arguments, got x"),
        ("{not json", "request is not valid JSON"),
        ("[1, 2]", "unknown command '[1,'"),
        ('{"action": "stop"}', 'needs "cmd"'),
        ("", "empty request"),
        ('record start "unclosed', "cannot split the request into words"),
    ])
    def test_bad_requests_change_nothing(self, daemon, request_, error):
        reply = daemon.client.request(request_)
        assert reply["ok"] is False and error in reply["error"]
        assert daemon.calls == [] and not daemon.shutdown.is_set()

    def test_raw_bytes_and_multipart(self, daemon):
        ctx = zmq.Context.instance()
        with ctx.socket(zmq.REQ) as req:
            req.connect(daemon.server.endpoint)
            req.send(b"\xff\xfe")
            assert json.loads(req.recv()) == {"ok": False, "error": "request is not UTF-8 text"}
            req.send_multipart([b"status", b"extra"])
            assert json.loads(req.recv()) == {"ok": False, "error": "a request is one frame, got 2"}
            req.send(b"x" * 70_000)
            assert "request too long" in json.loads(req.recv())["error"]
        with ctx.socket(zmq.DEALER) as dealer:  # no empty delimiter: still answered
            dealer.connect(daemon.server.endpoint)
            dealer.send(b"status")
            assert json.loads(dealer.recv_multipart()[-1])["state"] == "running"
        assert daemon.calls == [("status",)]

    def test_command_without_handler(self):
        with ControlServer("tcp://127.0.0.1:*", {"status": lambda r: {}}) as server, \
                ControlClient(server.endpoint) as client:
            assert client.request("shutdown") == {
                "ok": False, "error": "'shutdown' is not available on this daemon; available: help, status"}

    def test_parse_request(self):
        assert parse_request(b"record start a.isc") == {"cmd": "record", "action": "start", "path": "a.isc"}
        assert parse_request(b'{"cmd": "status"}') == {"cmd": "status"}
        assert set(COMMANDS) == {"status", "record", "reload-model", "shutdown", "help"}
        with pytest.raises(ControlError, match='needs "cmd": the command name'):
            parse_request(b'{"cmd": 1}')


class TestLifecycle:
    def test_timeout_when_nobody_answers(self):
        with zmq.Context.instance().socket(zmq.ROUTER) as silent:
            silent.bind("tcp://127.0.0.1:*")
            with ControlClient(silent.last_endpoint.decode(), timeout=0.2) as client:
                with pytest.raises(ControlTimeout, match=r"no reply from tcp://127.0.0.1:\d+ within 0.2 s"):
                    client.request("status")
                with pytest.raises(ControlTimeout):  # the client recovers its socket and can try again
                    client.request("status")

    def test_refuses_remote_plain_tcp(self):
        with pytest.raises(EndpointError, match="publish.control: refusing to bind plain TCP"):
            ControlServer("tcp://0.0.0.0:5557", {})

    def test_endpoint_is_free_after_stop(self):
        server = ControlServer("tcp://127.0.0.1:*", {"status": lambda r: {}}).start()
        endpoint = server.endpoint
        server.stop()
        with ControlServer(endpoint, {"status": lambda r: {"again": True}}) as again, \
                ControlClient(endpoint) as client:
            assert client.request("status")["again"] is True
        assert again.closed

    def test_bind_failure(self, daemon):
        with pytest.raises(RuntimeError, match="cannot listen for control on tcp://127.0.0.1:.*in use"):
            ControlServer(daemon.server.endpoint, {}).start()


class TestStatusCommand:
    def test_prints_health(self, daemon):
        proc = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "status", "--endpoint", daemon.server.endpoint],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert any(line.split() == ["state", "running"] for line in lines)
        assert any(line.split() == ["scans/s", "20.0"] for line in lines)
        assert any(line.split() == ["ring", "fill", "25%"] for line in lines)
        assert any(line.split() == ["latency", "p50", "-"] for line in lines)

    def test_json(self, daemon, capsys):
        from ionstream.cli import build_parser

        args = build_parser().parse_args(["status", "--endpoint", daemon.server.endpoint, "--json"])
        assert args._main(args) == 0
        assert json.loads(capsys.readouterr().out)["scans"] == 12

    def test_no_daemon_exits_1(self, capsys, caplog):
        from ionstream.cli import build_parser

        with zmq.Context.instance().socket(zmq.ROUTER) as silent:
            silent.bind("tcp://127.0.0.1:*")
            args = build_parser().parse_args(["status", "--endpoint", silent.last_endpoint.decode(), "--timeout", "0.2"])
            assert args._main(args) == 1
        assert "no reply from" in caplog.text
