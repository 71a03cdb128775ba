"""CURVE encryption and authentication for the PUB and control sockets (ZeroMQ ZAP).

Keys are ZeroMQ certificate files as pyzmq and czmq write them: ``NAME.key`` holds the
public key, ``NAME.key_secret`` the public and the secret key (mode 0600). `ionstream keys
generate DIR --name NAME` makes a pair.

Server side (the daemon)::

    curve = CurveServer("keys/server.key_secret", "keys/clients")   # allow-list: *.key files
    Publisher(endpoint, curve=curve)  /  ControlServer(endpoint, handlers, curve=curve)

Every socket that ``curve.setup(socket)`` configures encrypts with the server's key pair and
asks one ZAP authenticator (pyzmq's ``ThreadAuthenticator``, one per ``zmq.Context``,
started on first use and stopped with the last socket) whether the client's public key is
in the allow-list directory. The directory is re-read when it changes (its mtime), so a
client key dropped in there works from the client's next connection attempt, without a
restart; a removed key stops new connections (established ones stay until they drop).

Client side: ionstream.client.keys (key files, CurveClient).

A client whose key is not allowed completes no handshake: it receives nothing and its
requests get no reply (ZeroMQ reports HANDSHAKE_FAILED_AUTH on the client's monitor).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import zmq

from ionstream.client.keys import SecurityError, load_allow_list, load_keypair  # noqa: F401  (SecurityError: re-export)

log = logging.getLogger("ionstream.daemon.security")

ZAP_DOMAIN_PREFIX = "ionstream"


# ---- server ------------------------------------------------------------------------------
class _AllowList:
    """ZAP credentials provider: allows the keys in a directory, re-read when it changes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._mtime_ns = -1
        self.keys: set[bytes] = set()
        self.allowed = 0
        self.denied = 0
        self.refresh()

    def refresh(self) -> None:
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            mtime = -2
        if mtime != self._mtime_ns:
            self._mtime_ns = mtime
            self.keys = load_allow_list(self.directory) if mtime != -2 else set()

    def callback(self, domain: str, key: bytes) -> bool:
        self.refresh()
        ok = key in self.keys
        if ok:
            self.allowed += 1
        else:
            self.denied += 1
            if self.denied <= 5 or self.denied % 100 == 0:
                log.warning("CURVE: refused a client key not in %s (%s...; %d refused so far)",
                            self.directory, key[:8].decode(errors="replace"), self.denied)
        return ok


class _AuthRegistry:
    """One ThreadAuthenticator per zmq.Context, shared by all CurveServers on it (ref-counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, list[Any]] = {}  # id(context) -> [authenticator, refcount]

    def acquire(self, context: zmq.Context, domain: str, provider: _AllowList) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        with self._lock:
            entry = self._entries.get(id(context))
            if entry is None:
                auth = ThreadAuthenticator(context, log=logging.getLogger("ionstream.daemon.security.zap"))
                auth.start()
                entry = self._entries[id(context)] = [auth, 0]
            entry[0].configure_curve_callback(domain, credentials_provider=provider)
            entry[1] += 1

    def release(self, context: zmq.Context) -> None:
        with self._lock:
            entry = self._entries.get(id(context))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._entries[id(context)]
                entry[0].stop()


_registry = _AuthRegistry()


class CurveServer:
    """The daemon's CURVE key pair and its allow-list of client public keys.

    Parameters
    ----------
    secret_key_file
        The server's ``.key_secret`` file (`ionstream keys generate DIR --name server`).
    clients_dir
        Directory of authorised clients' ``.key`` files (copy each client's public key here).
    """

    def __init__(self, secret_key_file: str | os.PathLike, clients_dir: str | os.PathLike):
        self.secret_key_file = Path(secret_key_file)
        self.public_key, self.secret_key = load_keypair(secret_key_file)
        self.clients_dir = Path(clients_dir)
        if not self.clients_dir.is_dir():
            raise SecurityError(f"{self.clients_dir}: client key directory does not exist "
                                "(make it and copy each client's .key file into it)")
        self._allow = _AllowList(self.clients_dir)
        self.domain = f"{ZAP_DOMAIN_PREFIX}-{id(self):x}"
        if not self._allow.keys:
            log.warning("CURVE: no client keys in %s yet; every client will be refused", self.clients_dir)

    @classmethod
    def from_config(cls, publish_config: Any) -> "CurveServer | None":
        """From ``[publish] curve_server_secret`` / ``curve_clients_dir``; None when CURVE is off."""
        secret = getattr(publish_config, "curve_server_secret", "")
        clients = getattr(publish_config, "curve_clients_dir", "")
        if not secret and not clients:
            return None
        if not secret or not clients:
            raise SecurityError("CURVE needs both publish.curve_server_secret and publish.curve_clients_dir")
        return cls(secret, clients)

    def setup(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server checked by the allow-list. Call before bind();
        call :meth:`teardown` with the socket's context after closing it."""
        _registry.acquire(socket.context, self.domain, self._allow)
        socket.zap_domain = self.domain.encode()
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True

    def teardown(self, context: zmq.Context) -> None:
        _registry.release(context)

    def stats(self) -> dict[str, int]:
        """Counters for the status topic: clients allowed now, handshakes allowed and refused."""
        return {"curve_clients": len(self._allow.keys), "auth_allowed": self._allow.allowed,
                "auth_denied": self._allow.denied}


# ---- endpoints ---------------------------------------------------------------------------
class EndpointError(ValueError):
    """An endpoint that may not be bound (the message says why and what allows it)."""


def check_bind_endpoint(endpoint: str, *, allow_remote: bool = False, curve: bool = False,
                        key: str = "publish.endpoint") -> None:
    """Refuse plain TCP beyond loopback unless ``allow_remote``.

    ``ipc://`` and ``inproc://`` are local by nature. ``tcp://`` must name a loopback
    address (127.0.0.0/8, ::1, localhost) unless ``allow_remote`` is true or the socket is
    CURVE-secured (``curve``): then any address, including ``*``, is allowed.
    """
    import ipaddress

    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise EndpointError(f"{key}: expected an endpoint like tcp://127.0.0.1:5556 or ipc:///path, got {endpoint!r}")
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return
    if transport != "tcp":
        raise EndpointError(f"{key}: transport {transport!r} is not supported; use tcp://, ipc:// or inproc://")
    host, sep, port = address.rpartition(":")
    if not sep or not port or not (port == "*" or port.isdigit()):
        raise EndpointError(f"{key}: {endpoint!r} needs HOST:PORT (PORT may be * for any free port)")
    host = host.strip("[]")
    if ";" in host:  # tcp://source;destination form: the part after ';' is what is bound
        host = host.split(";", 1)[1]
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # "*", an interface name or a host name: beyond loopback
    if loopback or allow_remote or curve:
        return
    raise EndpointError(
        f"{key}: refusing to bind plain TCP on {host!r} ({endpoint}): anyone on the network could "
        "connect. Use 127.0.0.1 or ipc://, configure CURVE (publish.curve_server_secret and "
        "publish.curve_clients_dir), or set publish.allow_remote = true (allow_remote=True) explicitly")
