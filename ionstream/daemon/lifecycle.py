"""The daemon's lifecycle: start the pipeline, show status, obey signals and control, stop cleanly.

Exit codes: 0 clean stop (signal, --duration, control `shutdown`, a finite source ended);
1 a stage failed and the daemon stopped; 2 configuration or start-up error.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ionstream.config import Config
from ionstream.daemon.statusline import StatusLine

log = logging.getLogger("ionstream.daemon.lifecycle")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class Daemon:
    def __init__(self, config: Config, *, duration_s: float | None = None, status_line: bool = True):
        self.config = config
        self.duration_s = duration_s
        self.status_line_enabled = status_line
        self.pipeline = None
        self.control = None
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._deadline: float | None = None   # monotonic s; --duration counts from sockets bound

    # ---- control handlers (run on the control thread: quick) ---------------------------
    def _on_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        return self.pipeline.status()  # the last tick's figures, flat, as docs/wire.md's control table says

    def _on_record(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["action"] == "start":
            return {"path": str(self.pipeline.record_start(req["path"]))}
        path = self.pipeline.record_stop()
        if path is None:
            raise RuntimeError("not recording")
        return {"path": str(path)}

    def _on_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.pipeline.start_reload(req.get("path"))  # in the background: handlers must be quick

    def _on_shutdown(self, _req: dict[str, Any]) -> dict[str, Any]:
        self.stop_requested.set()
        return {"state": "stopping"}

    # ---- run ----------------------------------------------------------------------------
    def _start(self) -> int | None:
        from ionstream.daemon.pipeline import Pipeline

        try:
            self.pipeline = Pipeline(self.config)
        except Exception as exc:  # bundle, keys, endpoints: all start-up errors, none a crash
            log.error("not started: %s", exc)
            return EXIT_CONFIG
        if self.config.publish.control:
            from ionstream.daemon.control import ControlServer

            self.control = ControlServer(self.config.publish.control, {
                "status": self._on_status, "record": self._on_record,
                "reload-model": self._on_reload, "shutdown": self._on_shutdown,
            }, allow_remote=self.config.publish.allow_remote, curve=self.pipeline.curve)
        try:
            self.pipeline.start(acquire=False)
            if self.control is not None:
                self.control.start()
            if self.duration_s is not None:  # the wait for subscribers counts too
                self._deadline = time.monotonic() + self.duration_s
            if not self._wait_for_subscribers():
                return None  # stopped while waiting: the loop ends at once
            self.pipeline.start_acquisition()
        except Exception as exc:
            log.error("not started: %s", exc)
            if self.control is not None:
                self.control.stop()
            self.pipeline.stop(drain_timeout_s=1.0)
            return EXIT_CONFIG
        return None

    def _wait_for_subscribers(self) -> bool:
        """Wait (interruptibly) for publish.wait_subscribers subscribers; False if stopped meanwhile."""
        wanted = self.config.publish.wait_subscribers
        if wanted:
            log.info("waiting for %d subscriber(s) on %s before acquiring", wanted, self.pipeline.publisher.endpoint)
        self.pipeline.waiting_subscribers = bool(wanted)
        try:
            while wanted and not self.pipeline.publisher.wait_for_subscribers(wanted, timeout=0.2):
                if self.stop_requested.is_set() or self._past_deadline():
                    return False
        finally:
            self.pipeline.waiting_subscribers = False
        return True

    def run(self) -> int:
        from ionstream.daemon.signals import SignalHandler

        signals = SignalHandler()
        signals.stop_requested = self.stop_requested
        signals.reload_requested = self.reload_requested
        signals.install()
        failed = self._start()
        if failed is not None:
            return failed
        pipeline = self.pipeline
        metrics_server = None
        if self.config.status.prometheus_port:
            from ionstream.daemon.metrics import serve

            metrics_server, _ = serve(self.config.status.prometheus_port, pipeline.status)
        log.info("running: source %s, %d DSP worker(s), classifier %s, publishing on %s%s; Ctrl-C to stop",
                 self.config.source.url, pipeline.dsp.n, pipeline.snapshot()["backend"],
                 pipeline.publisher.endpoint,
                 f", control on {self.control.endpoint}" if self.control else "")
        status = StatusLine(log_interval_s=self.config.status.log_interval_s,
                            tty=None if self.status_line_enabled else False)
        exit_code = self._loop(pipeline, status)
        status.finish()
        log.info("stopping: draining queues and closing files")
        if self.control is not None:
            self.control.stop()
        drained = pipeline.stop(drain_timeout_s=5.0)
        if metrics_server is not None:
            metrics_server.shutdown()
        final = pipeline.tick()
        log.info("stopped: %d scans, %d drops, %d CRC errors, %d sequence gaps%s",
                 final["scans"], final["drops_total"], final["crc_errors"], final["sequence_gaps"],
                 "" if drained else " (drain timed out)")
        return exit_code

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _loop(self, pipeline, status: StatusLine) -> int:
        while not self.stop_requested.is_set():
            self.stop_requested.wait(self.config.status.interval_s)
            fatal = pipeline.supervise()
            snapshot = pipeline.tick()
            status.show(snapshot)
            pipeline.publisher.publish("status", {"stats": snapshot})  # the control reply's document
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                try:
                    pipeline.start_reload()
                except Exception as exc:
                    log.error("model reload not started: %s", exc)
            if fatal:
                log.error("%s; stopping (exit %d)", fatal, EXIT_FAILED)
                return EXIT_FAILED
            if self._past_deadline():
                break
            if pipeline.finished():
                return EXIT_FAILED if pipeline.acquisition.stats.error else EXIT_OK
        return EXIT_OK
