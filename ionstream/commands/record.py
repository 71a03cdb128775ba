"""`ionstream record`: record a source to a capture file, or drive a running daemon's recorder.

Standalone:  ionstream record --source serial:///dev/ttyUSB0 --out run1.isc --duration 10m
Daemon:      ionstream record start run1.isc   /   ionstream record stop   (over the control socket)
"""
from __future__ import annotations

import argparse
import logging
import time

from ionstream.commands.run import SignalHandler, add_common_arguments, build_config
from ionstream.config import ConfigError

HELP = "record a source to a capture file (or start/stop a running daemon's recording)"
log = logging.getLogger("ionstream.record")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("start", "stop"),
                        help="drive a running daemon over its control socket instead of recording here")
    parser.add_argument("path", nargs="?", help="capture path for `record start`")
    parser.add_argument("-o", "--out", metavar="FILE", help="capture file to write (standalone mode)")
    parser.add_argument("--control-endpoint", default="tcp://127.0.0.1:5557", metavar="ENDPOINT",
                        help="daemon control endpoint for start/stop (default %(default)s)")
    add_common_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.action:
        return _drive_daemon(args)
    if not args.out:
        log.error("give --out FILE (standalone recording) or `record start PATH` (a running daemon)")
        return 2
    try:
        config = build_config(args)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    return record_standalone(config, args.out, args.duration)


def record_standalone(config, out: str, duration_s: float | None) -> int:
    """Acquire from config.source into ``out`` until the duration, a signal, or the source's end."""
    from instrument.acquisition import AcquisitionThread
    from instrument.recorder import Recorder
    from instrument.ring import RingBuffer
    from instrument.sources import open_source
    from ionstream.statusline import StatusLine

    signals = SignalHandler()
    signals.install()
    source = open_source(config.source.url)
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
    acquisition.start()
    status = StatusLine(log_interval_s=config.status.log_interval_s)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while not signals.stop_requested.wait(0.5):
            dec = acquisition.decoder.stats
            status.show({"state": "recording", "scans_per_s": float("nan"), "MBps": 0.0,
                         "crc_errors": dec.header_crc_errors + dec.payload_crc_errors, "resyncs": dec.resyncs,
                         "sequence_gaps": dec.sequence_gaps, "ring_fill": ring.fill,
                         "drops_total": recorder.dropped, "recording": f"{out} ({recorder.frames} frames)"})
            if (deadline is not None and time.monotonic() >= deadline) or not acquisition.alive \
                    or not recorder.alive:  # the recorder stopped itself (disk space, error): nothing to do
                break
    finally:
        status.finish()
        acquisition.stop()
        ring.close()
        recorder.stop()
    log.info("recorded %d frames to %s", recorder.frames, out)
    return 1 if (recorder.error or acquisition.stats.error) else 0


def _drive_daemon(args: argparse.Namespace) -> int:
    from ionstream.control import ControlClient, ControlError

    if args.action == "start" and not args.path:
        log.error("`record start` needs a PATH")
        return 2
    command = {"cmd": "record", "action": args.action}
    if args.path:
        command["path"] = args.path
    try:
        with ControlClient(args.control_endpoint) as client:
            reply = client.request(command)
    except ControlError as exc:  # no daemon there, or it refused our key: say so, no traceback
        log.error("%s", exc)
        return 1
    if not reply.get("ok"):
        log.error("daemon refused: %s", reply.get("error"))
        return 1
    print(reply.get("path") or "ok")
    return 0
