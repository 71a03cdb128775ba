"""`ionstream run`: the acquisition daemon."""
from __future__ import annotations

import argparse
import logging

from ionstream.cli.common import (
    add_acquisition_arguments,
    apply_log_config,
    load_config,
    report_config_error,
)
from ionstream.config import Config, ConfigError, endpoint_problems

HELP = "run the acquisition daemon (default: the built-in simulated instrument)"
DESCRIPTION = (
    "Acquire from a source, process every scan, publish results over ZeroMQ, show live status. "
    "With no arguments it runs on the built-in simulator with the CPU classifier on loopback ports. "
    "Ctrl-C or SIGTERM stop it cleanly (a second signal exits at once, status 130 for Ctrl-C, "
    "143 for SIGTERM); SIGHUP reloads the model."
)
log = logging.getLogger("ionstream.run")

add_common_arguments = add_acquisition_arguments  # the old name, kept for importers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_acquisition_arguments(parser)
    parser.add_argument("--record", metavar="FILE", help="record every frame to this capture file "
                        "(a relative path goes under capture.dir)")
    parser.add_argument("--workers", type=int, metavar="N", help="DSP worker threads (overrides dsp.workers)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch", "none"),
                        help="classifier backend (overrides inference.backend)")
    parser.add_argument("--model", metavar="DIR", help="model bundle directory (overrides inference.model)")
    parser.add_argument("--endpoint", metavar="ENDPOINT", help="PUB endpoint to bind (overrides publish.endpoint)")
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="control endpoint to bind (overrides publish.control; '' = none)")
    parser.add_argument("--spectrum", action="store_true", default=None, help="also publish whole spectra")
    parser.add_argument("--wait-subscribers", type=int, metavar="N",
                        help="wait for N subscribers (client connections, whatever their topics) before "
                             "acquiring (overrides publish.wait_subscribers)")


def build_config(args: argparse.Namespace) -> Config:
    """The -c file with this command's flags applied; ConfigError lists every problem."""
    return load_config(args, {
        "source.url": args.source,
        "capture.record": getattr(args, "record", None),
        "dsp.workers": getattr(args, "workers", None),
        "inference.backend": getattr(args, "backend", None),
        "inference.model": getattr(args, "model", None),
        "publish.endpoint": getattr(args, "endpoint", None),
        "publish.control": getattr(args, "control", None),
        "publish.spectrum": getattr(args, "spectrum", None),
        "publish.wait_subscribers": getattr(args, "wait_subscribers", None),
    })


def main(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        apply_log_config(args, config)
        problems = endpoint_problems(config)
        if problems:
            raise ConfigError(problems, "start-up")
    except ConfigError as exc:
        return report_config_error(log, exc, "not started: fix the configuration "
                                             "(`ionstream config check FILE` checks a file)")
    from ionstream.daemon.lifecycle import Daemon

    return Daemon(config, duration_s=args.duration, status_line=not args.no_status_line).run()
