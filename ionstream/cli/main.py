"""The `ionstream` console script: one subcommand per module in ionstream/cli/.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Adding a command is adding its module and one line below.

Logging on a terminal: the daemon-side commands (DAEMON_COMMANDS) write timestamped lines,
the clients one ``ionstream CMD: message`` sentence; off a terminal every command writes
key=value lines (``--log-format`` chooses explicitly).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module under ionstream.cli (order is the order of `ionstream --help`)
COMMANDS: dict[str, str] = {
    "run": "run",
    "simulate": "simulate",
    "record": "record",
    "capture": "capture",
    "listen": "listen",
    "status": "status",
    "devices": "devices",
    "config": "config",
    "keys": "keys",
    "build-engine": "build_engine",
    "bench": "bench",
    "view": "view",
    "plot": "plot",
    "export": "export",
    "import": "import_mzml",
    "peaks": "peaks",
    "reprocess": "reprocess",
    "images": "images",
    "imzml": "imzml",
    "train": "train",
    "evaluate": "evaluate",
}

# Commands that run for long and log as a service does (timestamps); the rest are clients.
DAEMON_COMMANDS = frozenset({"run", "record", "simulate"})


def _load_commands() -> dict[str, object]:
    loaded = {}
    for name, module in COMMANDS.items():
        qualified = f"ionstream.cli.{module}"
        try:
            loaded[name] = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:  # a real missing dependency inside the command
                raise
    return loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ionstream",
        description="Real-time acquisition and analysis pipeline for mass spectrometers.",
    )
    from ionstream import __version__

    parser.add_argument("--version", action="version", version=f"ionstream {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--log-format", dest="log_format_all", choices=("plain", "kv", "json"),
                        help="log line format for any command (default: human on a terminal, kv otherwise)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _load_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        # -v/-q also after the command (`ionstream run -v`); SUPPRESS keeps the value given before it
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    from ionstream.logs import setup_logging

    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    args.log_format = getattr(args, "log_format", None) or args.log_format_all
    fmt = args.log_format
    if fmt is None and sys.stderr.isatty() and args.command not in DAEMON_COMMANDS:
        fmt = "client"
    setup_logging(level, fmt, prog=f"ionstream {args.command}")
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ionstream listen | head` is not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
