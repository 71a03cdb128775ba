"""The daemon's lifecycle: start the pipeline, show status, obey signals and control, stop cleanly.

Exit codes: 0 clean stop (signal, --duration, control `shutdown`, a finite source ended);
1 a stage failed and the daemon stopped; 2 configuration or start-up error.
"""
from __future__ import annotations

import logging
import time

from ionstream.config import Config
from ionstream.pipeline import Pipeline
from ionstream.statusline import StatusLine

log = logging.getLogger("ionstream.daemon")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class Daemon:
    def __init__(self, config: Config, *, duration_s: float | None = None, status_line: bool = True):
        self.config = config
        self.duration_s = duration_s
        self.status_line_enabled = status_line

    def run(self) -> int:
        from ionstream.commands.run import SignalHandler

        signals = SignalHandler()
        signals.install()
        try:
            pipeline = Pipeline(self.config)
        except (ValueError, OSError, RuntimeError) as exc:
            log.error("not started: %s", exc)
            return EXIT_CONFIG
        status = StatusLine(log_interval_s=self.config.status.log_interval_s)
        if not self.status_line_enabled:
            status.tty = False
        metrics_server = None
        if self.config.status.prometheus_port:
            from ionstream.metrics import serve

            metrics_server, _ = serve(self.config.status.prometheus_port, pipeline.snapshot)
        pipeline.start()
        log.info("running: source %s, %d DSP worker(s); Ctrl-C to stop", self.config.source.url, pipeline.dsp.n)
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        exit_code = EXIT_OK
        try:
            while not signals.stop_requested.is_set():
                signals.stop_requested.wait(self.config.status.interval_s)
                status.show(pipeline.snapshot())
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if pipeline.finished():
                    if pipeline.acquisition.stats.error:
                        exit_code = EXIT_FAILED
                    break
        finally:
            status.finish()
            log.info("stopping: draining queues and closing files")
            drained = pipeline.stop(drain_timeout_s=5.0)
            if metrics_server is not None:
                metrics_server.shutdown()
            final = pipeline.snapshot()
            log.info("stopped: %d scans, %d drops, %d CRC errors, %d sequence gaps%s",
                     final["scans"], final["drops_total"], final["crc_errors"], final["sequence_gaps"],
                     "" if drained else " (drain timed out)")
        return exit_code
