"""CURVE key files and the client side of CURVE (subscribers, `ionstream listen`, `status`).

Keys are ZeroMQ certificate files as pyzmq and czmq write them: ``NAME.key`` holds the
public key, ``NAME.key_secret`` the public and the secret key (mode 0600). `ionstream keys
generate DIR --name NAME` makes a pair. A client uses::

    CurveClient("keys/me.key_secret", "keys/server.key")

A client whose key is not allowed completes no handshake: it receives nothing and its
requests get no reply (ZeroMQ reports HANDSHAKE_FAILED_AUTH on the client's monitor).
The server side (allow-list, ZAP) is ionstream.daemon.security.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq

log = logging.getLogger("ionstream.client.keys")



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


