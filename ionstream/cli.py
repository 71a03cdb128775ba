"""The `ionstream` console script: one subcommand per module in ionstream/commands/.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Adding a command is adding its module and one line below.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module under ionstream.commands (order is the order of `ionstream --help`)
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
    "train": "train",
    "evaluate": "evaluate",
}


def _load_commands() -> dict[str, object]:
    loaded = {}
    for name, module in COMMANDS.items():
        qualified = f"ionstream.commands.{module}"
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
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _load_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
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
    setup_logging(level, getattr(args, "log_format", None))
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ionstream listen | head` is not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
