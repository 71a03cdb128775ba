"""The control socket, client side and protocol: requests to a running daemon, and their checks.

Client::

    with ControlClient("tcp://127.0.0.1:5557") as client:
        client.request({"cmd": "status"})          # -> {"ok": True, "cmd": "status", ...}
        client.request("record start run1.isc")    # the text form of the same command

Protocol (docs/wire.md, "Control socket"): each request is one frame, either a JSON object
``{"cmd": NAME, ...arguments}`` or a line of text ``NAME [ARG ...]``; each reply is one
frame, a JSON object with ``"ok": true`` and the handler's fields, or ``"ok": false`` and
``"error"``. The command table and the request checks live here so that the client and the
server (ionstream.daemon.control) agree on them.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from ionstream.client.keys import CurveClient

log = logging.getLogger("ionstream.client.control")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
MAX_REQUEST_BYTES = 64 * 1024

Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class ControlError(Exception):
    """A command the daemon refuses (its message is the reply's ``error``)."""


class ControlTimeout(ControlError, TimeoutError):
    """No reply in time: the daemon is not running, not listening there, or refused our key."""


class ControlAuthError(ControlError):
    """The daemon refused this client's CURVE key (or requires CURVE and none was given)."""


# ---- commands ----------------------------------------------------------------------------
def _check_record(req: dict[str, Any]) -> None:
    action = req.get("action")
    if action not in ("start", "stop"):
        raise ControlError(f"record: 'action' must be 'start' or 'stop', got {action!r}")
    if action == "start":
        path = req.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ControlError("record start: needs 'path', the capture file to write")
    elif "path" in req:
        raise ControlError("record stop: takes no 'path'")


def _check_reload(req: dict[str, Any]) -> None:
    if "path" in req and (not isinstance(req["path"], str) or not req["path"]):
        raise ControlError(f"reload-model: 'path' must be a model bundle directory, got {req['path']!r}")


def _no_arguments(name: str) -> Callable[[dict[str, Any]], None]:
    def check(req: dict[str, Any]) -> None:
        extra = sorted(set(req) - {"cmd", "id"})
        if extra:
            raise ControlError(f"{name}: takes no arguments, got {', '.join(extra)}")
    return check


COMMANDS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "status": ("status: the daemon's health figures", _no_arguments("status")),
    "record": ("record start PATH | record stop: start or stop recording a capture", _check_record),
    "reload-model": ("reload-model [PATH]: reload the classifier (another bundle if PATH)", _check_reload),
    "shutdown": ("shutdown: stop acquisition, drain, exit", _no_arguments("shutdown")),
    "help": ("help: list the commands", _no_arguments("help")),
}
"""Known commands: name -> (usage, argument check). Handlers for other names may be added;
their requests are passed through unchecked."""


def parse_request(data: bytes) -> dict[str, Any]:
    """One request frame as a command dict; ControlError (the reply's message) if malformed.

    ``b'{"cmd": "record", "action": "start", "path": "a.isc"}'`` and ``b'record start a.isc'``
    give the same dict.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise ControlError(f"request too long ({len(data)} bytes; at most {MAX_REQUEST_BYTES})")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ControlError("request is not UTF-8 text") from None
    if not text:
        raise ControlError("empty request; send a command such as 'status' or {\"cmd\": \"status\"}")
    if text.startswith("{"):
        try:
            req = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ControlError(f"request is not valid JSON: {exc}") from None
        if not isinstance(req, dict):
            raise ControlError("a JSON request must be an object")
        if not isinstance(req.get("cmd"), str):
            raise ControlError("a JSON request needs \"cmd\": the command name (a string)")
        return req
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ControlError(f"cannot split the request into words: {exc}") from None
    name, args = words[0], words[1:]
    req: dict[str, Any] = {"cmd": name}
    if name == "record":
        if args:
            req["action"] = args[0]
        if len(args) > 1:
            req["path"] = args[1]
        if len(args) > 2:
            raise ControlError("record: too many words; quote a path with spaces")
    elif name == "reload-model":
        if args:
            req["path"] = args[0]
        if len(args) > 1:
            raise ControlError("reload-model: takes at most one path")
    elif args:
        req["args"] = args
    return req


def validate(req: dict[str, Any], handlers: Mapping[str, Handler]) -> None:
    """ControlError unless ``req`` names a registered command with valid arguments."""
    name = req["cmd"]
    if name not in handlers and name != "help":
        known = sorted(set(handlers) | {"help"})
        if name in COMMANDS:
            raise ControlError(f"{name!r} is not available on this daemon; available: {', '.join(known)}")
        raise ControlError(f"unknown command {name!r}; available: {', '.join(known)}")
    if "args" in req and name in COMMANDS:
        raise ControlError(f"{name}: unexpected argument(s) {' '.join(map(str, req['args']))}")
    if name in COMMANDS:
        COMMANDS[name][1](req)


# ---- client ------------------------------------------------------------------------------
class ControlClient:
    """Sends commands to a daemon's control socket and returns its replies.

    Parameters
    ----------
    endpoint
        The daemon's control endpoint (``publish.control``).
    timeout
        Seconds to wait for each reply (s).
    curve
        A :class:`~ionstream.daemon.security.CurveClient` when the daemon requires CURVE.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, timeout: float = 3.0,
                 curve: CurveClient | None = None, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None

    def _connect(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._context.socket(zmq.REQ)
            sock.linger = 0
            if self.curve is not None:
                self.curve.setup(sock)
            self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._sock.close(0)
        if self._monitor is not None:
            self._monitor.close(0)
        self._sock = self._monitor = None

    def request(self, command: Mapping[str, Any] | str, timeout: float | None = None) -> dict[str, Any]:
        """Send one command; return the reply document (check ``reply["ok"]``).

        ``command`` is a dict (``{"cmd": "record", "action": "start", "path": "a.isc"}``) or
        the text form (``"record start a.isc"``).

        Raises
        ------
        ControlTimeout
            No reply within ``timeout`` (default: the constructor's).
        ControlAuthError
            The daemon refused the CURVE handshake (key not allowed, or CURVE expected).
        """
        timeout = self.timeout if timeout is None else timeout
        data = command.encode() if isinstance(command, str) else json.dumps(dict(command)).encode()
        sock = self._connect()
        sock.send(data)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            events = dict(poller.poll(max(0, int(remaining * 1000)))) if remaining > 0 else {}
            if sock in events:
                reply = sock.recv()
                try:
                    doc = json.loads(reply)
                except json.JSONDecodeError:
                    raise ControlError(f"reply from {self.endpoint} is not JSON: {reply[:80]!r}") from None
                if not isinstance(doc, dict) or "ok" not in doc:
                    raise ControlError(f"reply from {self.endpoint} is not a control reply: {reply[:80]!r}")
                return doc
            if self._monitor in events:
                from zmq.utils.monitor import recv_monitor_message

                event = recv_monitor_message(self._monitor)
                self._reset()  # a REQ socket with an unanswered request cannot be reused
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise ControlAuthError(f"{self.endpoint} refused this client's CURVE key "
                                           "(not in the daemon's publish.curve_clients_dir)")
                raise ControlAuthError(f"security handshake with {self.endpoint} failed (the daemon and "
                                       "this client disagree on CURVE: give --curve-key/--curve-server-key, "
                                       "or check the server key)")
            if not events:
                self._reset()
                raise ControlTimeout(f"no reply from {self.endpoint} within {timeout:g} s (is `ionstream run` "
                                     "running with this control endpoint?)")

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
