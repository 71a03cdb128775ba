"""`ionstream config --example` / `ionstream config check FILE`."""
from __future__ import annotations

import argparse
import sys

from ionstream.config import ConfigError, example_toml, load

HELP = "print a commented example configuration, or check a configuration file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--example", action="store_true", help="print a fully commented example (all defaults)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    check = sub.add_parser("check", help="validate FILE: unknown keys, wrong types, impossible values")
    check.add_argument("file", metavar="FILE")


def main(args: argparse.Namespace) -> int:
    if args.example:
        sys.stdout.write(example_toml())
        return 0
    if args.action == "check":
        try:
            load(args.file)
        except ConfigError as exc:
            print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        return 0
    print("use `ionstream config --example` or `ionstream config check FILE`", file=sys.stderr)
    return 2
