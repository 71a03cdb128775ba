"""The control socket, server side: a request/reply channel into the running daemon.

    server = ControlServer("tcp://127.0.0.1:5557", {
        "status": lambda req: pipeline.status(),
        "record": on_record,            # req["action"] is "start" (with req["path"]) or "stop"
        "reload-model": on_reload,
        "shutdown": lambda req: (stop_event.set(), {})[1],
    }).start()
    ...
    server.close()

The protocol and the client are in ionstream.client.control. The server is a ROUTER socket, so
any number of REQ (or DEALER) clients may talk to it; it answers one request at a time.
Requests are checked before any handler runs, so an unknown or malformed command gets an error
reply and changes nothing.

The server's thread owns its socket. Handlers run on that thread: they must be quick
(set a flag, start something, return a snapshot) and may raise: ``ControlError``,
``ValueError``, ``RuntimeError`` and ``OSError`` are refusals and become
``{"ok": false, "error": str(exc)}``; anything else is a bug, logged with its traceback
and reported as ``"internal error: ..."``. The thread is stopped by a message over an
inproc PAIR pipe (``b"TERMINATE"``) and closes its sockets in ``finally``.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import zmq

from ionstream.client.control import (COMMANDS, DEFAULT_ENDPOINT, ControlError, Handler,  # noqa: F401
                                      parse_request, validate)
from ionstream.daemon.security import CurveServer, check_bind_endpoint

log = logging.getLogger("ionstream.daemon.control")

# ---- server ------------------------------------------------------------------------------
class ControlServer:
    """Answers control requests on ``endpoint`` from its own thread.

    Parameters
    ----------
    endpoint
        Where to bind (``tcp://127.0.0.1:5557`` by default; ``tcp://127.0.0.1:*`` for any
        free port, read :attr:`endpoint` after start(); ``ipc://...``).
    handlers
        Command name -> callable(request dict) -> dict of reply fields (or None). The
        request dict holds ``cmd`` and the command's arguments (``action``, ``path``).
    allow_remote, curve, context
        As for :class:`~ionstream.daemon.publisher.Publisher`.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, handlers: Mapping[str, Handler] | None = None, *,
                 allow_remote: bool = False, curve: CurveServer | None = None,
                 context: zmq.Context | None = None):
        check_bind_endpoint(endpoint, allow_remote=allow_remote, curve=curve is not None, key="publish.control")
        self.requested_endpoint = endpoint
        self.endpoint = endpoint
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._pipe_addr = f"inproc://ionstream-control-{id(self):x}"
        self._pipe: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.requests = 0
        self.errors = 0

    def start(self, timeout: float = 10.0) -> "ControlServer":
        """Bind and start answering; return once bound. RuntimeError if binding fails."""
        if self._thread is not None:
            raise RuntimeError("control server already started")
        self._pipe = self._context.socket(zmq.PAIR)
        self._pipe.linger = 0
        self._pipe.bind(self._pipe_addr)
        self._thread = threading.Thread(target=self._run, name="ionstream-control", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"control thread did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(1.0)
            self._pipe.close()
            raise RuntimeError(f"cannot listen for control on {self.requested_endpoint}: {self._error}")
        log.info("control socket on %s%s", self.endpoint, " (CURVE)" if self.curve else "")
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (it finishes the request in hand) and close the sockets."""
        if self._thread is None or self._pipe is None:
            return True
        if self._pipe.closed:
            return not self._thread.is_alive()
        try:
            self._pipe.send(b"TERMINATE")
        except zmq.ZMQError:
            pass
        self._thread.join(timeout)
        self._pipe.close()
        return not self._thread.is_alive()

    close = stop

    @property
    def closed(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def __enter__(self) -> "ControlServer":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def handle(self, data: bytes) -> dict[str, Any]:
        """The reply document for one request frame (what the thread sends back)."""
        self.requests += 1
        req_id = None
        try:
            req = parse_request(data)
            req_id = req.get("id")
            validate(req, self.handlers)
            name = req["cmd"]
            if name == "help" and "help" not in self.handlers:
                result: Any = {"commands": {n: COMMANDS[n][0] if n in COMMANDS else n
                                            for n in sorted(set(self.handlers) | {"help"})}}
            else:
                result = self.handlers[name](req)
            reply = {"ok": True, "cmd": name}
            if result:
                if not isinstance(result, Mapping):
                    raise TypeError(f"handler for {name!r} returned {type(result).__name__}, not a dict")
                reply.update(result)
        except (ControlError, ValueError, RuntimeError, OSError) as exc:
            # a refusal (bad arguments, "already recording", a path that cannot be written)
            self.errors += 1
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a handler: say so, keep serving
            self.errors += 1
            log.exception("control handler failed on %r", data[:200])
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if req_id is not None:
            reply["id"] = req_id
        return reply

    def _run(self) -> None:
        sock = pipe = None
        curve_setup = False
        try:
            sock = self._context.socket(zmq.ROUTER)
            sock.linger = 0
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a client that left: drop its reply
            if self.curve is not None:
                self.curve.setup(sock)
                curve_setup = True
            sock.bind(self.requested_endpoint)
            self.endpoint = sock.get(zmq.LAST_ENDPOINT).decode()
            pipe = self._context.socket(zmq.PAIR)
            pipe.linger = 0
            pipe.connect(self._pipe_addr)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            for s in (sock, pipe):
                if s is not None:
                    s.close(0)
            if curve_setup:
                self.curve.teardown(self._context)
            return
        self._started.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if pipe in events:
                    pipe.recv()
                    return
                if sock in events:
                    self._serve_one(sock)
        except Exception:
            log.exception("control thread failed; the control socket is closed")
            raise
        finally:
            from ionstream.daemon.zmqutil import close_and_wait

            close_and_wait(sock, 1000)  # the endpoint is free again when stop() returns
            pipe.close(0)
            if curve_setup:
                self.curve.teardown(self._context)

    def _serve_one(self, sock: zmq.Socket) -> None:
        frames = sock.recv_multipart()
        # envelope: routing ids up to the empty delimiter (REQ clients); DEALER clients may omit it
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            self.requests += 1
            self.errors += 1
            reply = {"ok": False, "error": f"a request is one frame, got {len(body)}"}
        else:
            reply = self.handle(body[0])
        try:
            sock.send_multipart([*envelope, json.dumps(reply, default=str, allow_nan=False).encode()])
        except ValueError:  # NaN in a status figure: JSON has none
            from ionstream.client.wire import encode_header

            sock.send_multipart([*envelope, encode_header(reply)])
        except zmq.ZMQError as exc:
            log.debug("control reply not sent: %s", exc)


