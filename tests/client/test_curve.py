"""CURVE on the PUB and control sockets (ionstream/client/keys.py, ionstream/daemon/security.py): real keys, real ZAP, real sockets."""
import os
import stat
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from ionstream import Subscriber
from ionstream.client.control import ControlAuthError, ControlClient
from ionstream.daemon.control import ControlServer
from ionstream.daemon.publisher import Publisher
from ionstream.client.keys import CurveClient, SecurityError, generate_keypair, load_keypair, load_public_key
from ionstream.daemon.security import CurveServer

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@pytest.fixture
def keys(tmp_path):
    """A server pair, an allowed client (alice) and an unknown one (mallory)."""
    generate_keypair(tmp_path, "server")
    generate_keypair(tmp_path / "clients", "alice")
    generate_keypair(tmp_path / "elsewhere", "mallory")
    server = CurveServer(tmp_path / "server.key_secret", tmp_path / "clients")
    alice = CurveClient(tmp_path / "clients" / "alice.key_secret", tmp_path / "server.key")
    mallory = CurveClient(tmp_path / "elsewhere" / "mallory.key_secret", tmp_path / "server.key")
    return SimpleNamespace(dir=tmp_path, server=server, alice=alice, mallory=mallory)


def receive_or_none(sub, pub, topic, timeout):
    """Publish until ``sub`` receives (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, {"scan": 1}, [np.ones(3)])
        try:
            return sub.recv(timeout=0.05)
        except TimeoutError:
            continue
    return None


class TestPublisher:
    def test_authorised_subscriber_receives_unknown_key_receives_nothing(self, keys):
        with Publisher("tcp://127.0.0.1:*", curve=keys.server) as pub, \
                Subscriber(pub.endpoint, "trace", curve=keys.alice) as alice, \
                Subscriber(pub.endpoint, "trace", curve=keys.mallory) as mallory, \
                Subscriber(pub.endpoint, "trace") as plain:
            msg = receive_or_none(alice, pub, "trace", timeout=10)
            assert msg is not None and msg.topic == "trace"
            # alice keeps receiving while the others, connected as long, get nothing
            for _ in range(20):
                pub.publish("trace", {"scan": 2}, [np.ones(3)])
            assert alice.recv(timeout=5).topic == "trace"
            for sub in (mallory, plain):
                with pytest.raises(TimeoutError):
                    sub.recv(timeout=0.3)
            assert pub.stats()["pub_subscriptions"] == {"trace": 1}
            stats = pub.stats()
            assert stats["pub_curve_clients"] == 1 and stats["pub_auth_denied"] >= 1 and stats["pub_auth_allowed"] >= 1

    def test_allow_list_is_reread_when_it_changes(self, keys):
        with Publisher("tcp://127.0.0.1:*", curve=keys.server) as pub:
            with Subscriber(pub.endpoint, "trace", curve=keys.mallory) as mallory:
                assert receive_or_none(mallory, pub, "trace", timeout=0.3) is None
            mallory_public = keys.dir / "clients" / "mallory.key"
            mallory_public.write_bytes((keys.dir / "elsewhere" / "mallory.key").read_bytes())
            os.utime(mallory_public.parent, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely changes
            with Subscriber(pub.endpoint, "trace", curve=keys.mallory) as mallory:
                assert receive_or_none(mallory, pub, "trace", timeout=10) is not None

    def test_curve_may_bind_beyond_loopback(self, keys):
        with Publisher("tcp://0.0.0.0:*", curve=keys.server) as pub:
            assert pub.endpoint.startswith("tcp://0.0.0.0:")


class TestControl:
    def test_authorised_client_commands_wrong_key_is_refused(self, keys):
        calls = []
        handlers = {"status": lambda r: {"state": "running"}, "shutdown": lambda r: calls.append("shutdown")}
        with ControlServer("tcp://127.0.0.1:*", handlers, curve=keys.server) as server:
            with ControlClient(server.endpoint, curve=keys.alice, timeout=5) as client:
                assert client.request("status") == {"ok": True, "cmd": "status", "state": "running"}
            with ControlClient(server.endpoint, curve=keys.mallory, timeout=5) as client:
                with pytest.raises(ControlAuthError, match="refused this client's CURVE key"):
                    client.request("shutdown")
            with ControlClient(server.endpoint, timeout=5) as client:  # no CURVE at all
                with pytest.raises(ControlAuthError, match="security handshake .* failed"):
                    client.request("shutdown")
            assert calls == []

    def test_publisher_and_control_share_one_authenticator(self, keys):
        ctx = zmq.Context()
        try:
            with Publisher("tcp://127.0.0.1:*", curve=keys.server, context=ctx) as pub, \
                    ControlServer("tcp://127.0.0.1:*", {"status": lambda r: {}}, curve=keys.server,
                                  context=ctx) as server:
                with ControlClient(server.endpoint, curve=keys.alice, context=ctx) as client:
                    assert client.request("status")["ok"]
                with Subscriber(pub.endpoint, "trace", curve=keys.alice, context=ctx) as sub:
                    assert receive_or_none(sub, pub, "trace", timeout=10) is not None
        finally:
            ctx.term()


class TestKeys:
    def test_generate(self, tmp_path):
        public, secret = generate_keypair(tmp_path / "k", "node1")
        assert public.name == "node1.key" and secret.name == "node1.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        pub_key, sec_key = load_keypair(secret)
        assert load_public_key(public) == pub_key and len(sec_key) == 40
        with pytest.raises(SecurityError, match="already exists"):
            generate_keypair(tmp_path / "k", "node1")
        with pytest.raises(SecurityError, match="no secret key in this file"):
            load_keypair(public)
        with pytest.raises(SecurityError, match="does not exist"):
            load_public_key(tmp_path / "missing.key")

    def test_from_config(self, keys):
        assert CurveServer.from_config(SimpleNamespace(curve_server_secret="", curve_clients_dir="")) is None
        with pytest.raises(SecurityError, match="needs both"):
            CurveServer.from_config(SimpleNamespace(curve_server_secret=str(keys.dir / "server.key_secret"),
                                                    curve_clients_dir=""))
        with pytest.raises(SecurityError, match="client key directory does not exist"):
            CurveServer(keys.dir / "server.key_secret", keys.dir / "nope")

    def test_cli(self, tmp_path, capsys):
        from ionstream.cli import build_parser

        args = build_parser().parse_args(["keys", "generate", str(tmp_path), "--name", "alice"])
        assert args._main(args) == 0
        out = capsys.readouterr().out
        assert f"{tmp_path}/alice.key" in out and "curve_clients_dir" in out
        assert args._main(args) == 1  # no silent overwrite
