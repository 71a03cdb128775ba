"""`ionstream record`: record a source to a capture file, or drive a running daemon's recorder.

Standalone:  ionstream record --source serial:///dev/ttyUSB0 --out run1.isc --duration 10m
Daemon:      ionstream record start run1.isc   /   ionstream record stop   (over the control socket)
"""
from __future__ import annotations

import argparse
import logging
import time

from ionstream.cli.common import (
    SignalHandler,
    add_acquisition_arguments,
    add_curve_arguments,
    add_deprecated_alias,
    apply_log_config,
    error_sentence,
    load_config,
    report_config_error,
    request_control,
)
from ionstream.config import Config, ConfigError

HELP = "record a source to a capture file (or start/stop a running daemon's recording)"
log = logging.getLogger("ionstream.record")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("start", "stop"),
                        help="drive a running daemon over its control socket instead of recording here")
    parser.add_argument("path", nargs="?", help="capture path for `record start` (a relative path goes "
                                                "under the daemon's capture.dir)")
    parser.add_argument("-o", "--out", metavar="FILE", help="capture file to write (standalone mode)")
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="the daemon's control endpoint for start/stop (default: publish.control of "
                             "-c FILE, else tcp://127.0.0.1:5557)")
    add_deprecated_alias(parser, "--control-endpoint", "--control", "control")
    add_curve_arguments(parser)
    add_acquisition_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.action:
        return _drive_daemon(args)
    if not args.out:
        log.error("give --out FILE (standalone recording) or `record start PATH` (a running daemon)")
        return 2
    try:
        config = load_config(args, {"source.url": args.source})
    except ConfigError as exc:
        return report_config_error(log, exc)
    apply_log_config(args, config)
    return record_standalone(config, args.out, args.duration, status_line=not args.no_status_line)


class _RecordStatus:
    """The standalone recorder's status figures: scans/s and MB/s from the decoder's counters."""

    def __init__(self) -> None:
        from ionstream.daemon.rates import RateWindow

        self._rates = RateWindow()

    def snapshot(self, acquisition, ring, recorder, out: str) -> dict:
        dec = acquisition.decoder.stats
        rates = self._rates.sample({"scans": dec.scan_frames, "bytes": dec.bytes_in})
        return {"state": "recording", "scans_per_s": rates["scans"], "MBps": rates["bytes"] / 1e6,
                "crc_errors": dec.header_crc_errors + dec.payload_crc_errors, "resyncs": dec.resyncs,
                "sequence_gaps": dec.sequence_gaps, "ring_fill": ring.fill, "drops_total": recorder.dropped,
                "recording": f"{out} ({recorder.frames} frames)"}


def record_standalone(config: Config, out: str, duration_s: float | None, *, status_line: bool = True) -> int:
    """Acquire from config.source into ``out`` until the duration, a signal, or the source's end."""
    from instrument.acquisition import AcquisitionThread
    from instrument.recorder import Recorder
    from instrument.ring import RingBuffer
    from instrument.sources import AcquisitionError, SourceConfigError, open_source
    from ionstream.daemon.statusline import StatusLine

    signals = SignalHandler()
    signals.install()
    try:
        source = open_source(config.source.url)
    except SourceConfigError as exc:
        log.error("%s", exc)
        return 2
    # Recording must not lose frames to a slow disk silently: block, so the loss (if any)
    # happens at the device and shows up as sequence gaps in `capture info`.
    ring = RingBuffer(config.ring.slots, config.ring.resolved_slot_bytes(), "block")
    try:
        recorder = Recorder.from_config(ring, out, {"source": source.describe(), "mode": "record"}, config.capture)
    except FileExistsError:
        log.error("%s already exists; captures are never overwritten: choose another name", out)
        return 2
    except OSError as exc:
        log.error("cannot create %s: %s", out, exc.strerror)
        return 2
    acquisition = AcquisitionThread(source, ring)
    recorder.start()
    try:
        acquisition.start()
    except AcquisitionError as exc:  # the port is held by another process: a start-up error
        log.error("not started: %s", exc)
        ring.close()
        recorder.stop()
        return 2
    status = StatusLine(log_interval_s=config.status.log_interval_s, tty=None if status_line else False)
    figures = _RecordStatus()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        with status.attached():
            while not signals.stop_requested.wait(config.status.interval_s):
                status.show(figures.snapshot(acquisition, ring, recorder, out))
                if (deadline is not None and time.monotonic() >= deadline) or not acquisition.alive \
                        or not recorder.alive:  # the recorder stopped itself (disk space, error): nothing to do
                    break
    finally:
        acquisition.stop()
        ring.close()
        recorder.stop()
    log.info("recorded %d frames to %s", recorder.frames, out)
    return 1 if (recorder.error or acquisition.stats.error) else 0


def _drive_daemon(args: argparse.Namespace) -> int:
    if args.action == "start" and not args.path:
        log.error("`record start` needs a PATH")
        return 2
    command = {"cmd": "record", "action": args.action}
    if args.path:
        command["path"] = args.path
    reply = request_control(args, command, log)
    if isinstance(reply, int):
        return reply
    if not reply.get("ok"):
        log.error("the daemon refused: %s", error_sentence(str(reply.get("error"))))
        return 1
    print(reply.get("path") or "ok")
    return 0
