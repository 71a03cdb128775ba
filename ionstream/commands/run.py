"""`ionstream run`: the acquisition daemon."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ionstream.config import ConfigError, apply_overrides, endpoint_problems, load

HELP = "run the acquisition daemon (default: the built-in simulated instrument)"
DESCRIPTION = (
    "Acquire from a source, process every scan, publish results over ZeroMQ, show live status. "
    "With no arguments it runs on the built-in simulator with the CPU classifier on loopback ports. "
    "Ctrl-C or SIGTERM stop it cleanly (a second signal exits at once); SIGHUP reloads the model."
)
log = logging.getLogger("ionstream.run")


def parse_duration(text: str) -> float:
    """Seconds from '10s', '5m', '1h', '250ms' or a plain number of seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        number, suffix = text, "s"
    try:
        value = float(number) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 10s, 5m, 1h)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `record` (each overrides the config file's key)."""
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML configuration (see `ionstream config --example`)")
    parser.add_argument("-s", "--source", metavar="URL", help="source URL (overrides source.url), e.g. "
                        "sim://, serial:///dev/ttyUSB0?baud=921600, replay://capture.isc?speed=max")
    parser.add_argument("--duration", type=parse_duration, metavar="TIME", help="stop after TIME (e.g. 10s, 5m)")
    parser.add_argument("--log-format", choices=("plain", "kv", "json"), help="log line format")
    parser.add_argument("--no-status-line", action="store_true", help="no live status line on a terminal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--record", metavar="FILE", help="record every frame to this capture file")
    parser.add_argument("--workers", type=int, metavar="N", help="DSP worker threads (overrides dsp.workers)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch", "none"),
                        help="classifier backend (overrides inference.backend)")
    parser.add_argument("--model", metavar="DIR", help="model bundle directory (overrides inference.model)")
    parser.add_argument("--endpoint", metavar="ENDPOINT", help="PUB endpoint (overrides publish.endpoint)")
    parser.add_argument("--control", metavar="ENDPOINT", help="control endpoint (overrides publish.control)")
    parser.add_argument("--spectrum", action="store_true", default=None, help="also publish whole spectra")
    parser.add_argument("--wait-subscribers", type=int, metavar="N",
                        help="wait for N subscribers before acquiring (overrides publish.wait_subscribers)")


def build_config(args: argparse.Namespace):
    config = load(args.config)
    overrides = {
        "source.url": args.source,
        "capture.record": getattr(args, "record", None),
        "dsp.workers": getattr(args, "workers", None),
        "inference.backend": getattr(args, "backend", None),
        "inference.model": getattr(args, "model", None),
        "publish.endpoint": getattr(args, "endpoint", None),
        "publish.control": getattr(args, "control", None),
        "publish.spectrum": getattr(args, "spectrum", None),
        "publish.wait_subscribers": getattr(args, "wait_subscribers", None),
    }
    return apply_overrides(config, overrides)


class SignalHandler:
    """First SIGINT/SIGTERM asks for a clean stop; a second one exits at once. SIGHUP asks for a reload."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _stop(self, signum, _frame) -> None:
        if self.stop_requested.is_set():
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now without draining\n")
            os._exit(128 + signum)
        self.stop_requested.set()


def main(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        problems = endpoint_problems(config)
        if problems:
            raise ConfigError(problems, "start-up")
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        log.error("not started: fix the configuration (`ionstream config check FILE` checks a file)")
        return 2
    from ionstream.daemon import Daemon

    return Daemon(config, duration_s=args.duration,
                  status_line=not args.no_status_line).run()

