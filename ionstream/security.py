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

Client side (a subscriber, `ionstream listen`, `ionstream status`)::

    CurveClient("keys/me.key_secret", "keys/server.key")

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

log = logging.getLogger("ionstream.security")

ZAP_DOMAIN_PREFIX = "ionstream"


class SecurityError(ValueError):
    """A key file or key directory that cannot be used (the message names the path)."""


# ---- key files -----------------------------------------------------------------------------
def generate_keypair(directory: str | os.PathLike, name: str = "server", *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (0600); return both paths.

    Refuses to overwrite an existing pair unless ``overwrite``.
    """
    import zmq.auth

    if not zmq.has("curve"):
        raise SecurityError("this libzmq was built without CURVE support")
    if not name or "/" in name or name.startswith("."):
        raise SecurityError(f"key name must be a plain file name, got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise SecurityError(f"{public} or {secret} already exists; choose another --name or remove them")
    old_umask = os.umask(0o077)
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key in a ``.key`` or ``.key_secret`` file."""
    public, _ = _load(path)
    return public


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file."""
    public, secret = _load(path)
    if not secret:
        raise SecurityError(f"{path}: no secret key in this file (give the .key_secret file, not the .key)")
    return public, secret


def _load(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise SecurityError(f"{path}: key file does not exist (make one with `ionstream keys generate DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: not a ZeroMQ certificate file ({exc})") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise SecurityError(f"{path}: keys must be 40 Z85 characters")
    return public, secret


def load_allow_list(directory: str | os.PathLike) -> set[bytes]:
    """Public keys of every ``*.key`` file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SecurityError(f"{directory}: client key directory does not exist")
    keys = set()
    for path in sorted(directory.glob("*.key")):
        try:
            keys.add(load_public_key(path))
        except SecurityError as exc:
            log.warning("ignoring client key: %s", exc)
    return keys


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
                auth = ThreadAuthenticator(context, log=logging.getLogger("ionstream.security.zap"))
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


class CurveClient:
    """A client's CURVE key pair and the server public key it trusts.

    Parameters
    ----------
    secret_key_file
        This client's ``.key_secret`` file.
    server_public_key_file
        The server's ``.key`` file (or its ``.key_secret``: only the public key is read).
    """

    def __init__(self, secret_key_file: str | os.PathLike, server_public_key_file: str | os.PathLike):
        self.public_key, self.secret_key = load_keypair(secret_key_file)
        self.server_key = load_public_key(server_public_key_file)

    def setup(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client. Call before connect()."""
        socket.curve_serverkey = self.server_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key


def client_from_args(key: str | None, server_key: str | None) -> CurveClient | None:
    """A CurveClient from the CLI's ``--curve-key`` / ``--curve-server-key`` (None if neither)."""
    if not key and not server_key:
        return None
    if not key or not server_key:
        raise SecurityError("CURVE needs both --curve-key (this client's .key_secret) and "
                            "--curve-server-key (the server's .key)")
    return CurveClient(key, server_key)


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
