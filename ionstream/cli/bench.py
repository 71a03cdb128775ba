"""`ionstream bench NAME [--json]`: run one benchmark, print its figures.

A benchmark module in ionstream/benchmarks/ defines ``HELP``, ``add_arguments(parser)``
and ``run(args, progress) -> dict`` returning flat numbers (plus an optional nested
"stages"/"detail" dict). It runs its own baseline in the same process and reports the
ratio: these machines are noisy, so only same-run comparisons mean anything.
With ``--json`` the last line on stdout is exactly one JSON object.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHMARKS = ["decode", "dsp", "infer", "gpu", "zmq", "e2e", "usb", "reprocess", "soak", "imaging"]
HELP = "run a benchmark (" + ", ".join(BENCHMARKS) + ")"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name in BENCHMARKS:
        qualified = f"ionstream.benchmarks.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def progress(message: str) -> None:
    """Benchmarks report progress on stderr so stdout stays parseable."""
    print(f"  {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    result = args._bench.run(args, progress)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            print(f"{key:>28}  {value}")
    return 0
