"""`ionstream status`: ask a running daemon for its health over the control socket."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ionstream.cli.common import add_control_arguments, add_deprecated_alias, request_control

HELP = "show a running daemon's health (over its control socket)"
DESCRIPTION = (
    "Query the daemon's control socket and print its status: state, health, rates, drops at "
    "every stage, link errors, ring fill, latency, stages, publisher and recording. Exit status: "
    "0 the daemon answered and is healthy; 1 it did not answer, refused, or is not running; "
    "2 bad arguments; 3 it answered but is unhealthy (no data, drops rising, ring nearly full, a "
    "stage failed, a recording stopped on an error: the reasons are printed; docs/operations.md)."
)
log = logging.getLogger("ionstream.status")

# (key, label, format); keys the daemon does not report are left out, others follow in a second block
LAYOUT: list[tuple[str, str, str]] = [
    ("state", "state", "{}"),
    ("health", "health", "{}"),
    ("health_reasons", "problems", "{}"),
    ("source", "source", "{}"),
    ("uptime_s", "uptime", "{:.0f} s"),
    ("scans", "scans", "{}"),
    ("scans_per_s", "scans/s", "{:.1f}"),
    ("MBps", "input MB/s", "{:.2f}"),
    ("drops_total", "drops (all stages)", "{}"),
    ("crc_errors", "CRC errors", "{}"),
    ("resyncs", "resyncs", "{}"),
    ("sequence_gaps", "sequence gaps", "{}"),
    ("ring_fill", "ring fill", "{:.0%}"),
    ("latency_p50_ms", "latency p50", "{:.2f} ms"),
    ("latency_p99_ms", "latency p99", "{:.2f} ms"),
    ("backend", "classifier", "{}"),
    ("backend_device", "classifier device", "{}"),
    ("backend_precision", "classifier precision", "{}"),
    ("recording", "recording", "{}"),
    ("record_error", "recording error", "{}"),
    ("model", "model", "{}"),
    ("model_reload", "model reload", "{}"),
    ("pub_endpoint", "publishing on", "{}"),
    ("pub_sent", "messages sent", "{}"),
    ("pub_drops_queue", "publisher queue drops", "{}"),
    ("pub_subscriptions", "subscriptions", "{}"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_control_arguments(parser)
    add_deprecated_alias(parser, "--endpoint", "--control", "control")
    parser.add_argument("--json", action="store_true", help="print the daemon's reply as one JSON object")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait (default %(default)s)")


def _fmt(fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def status_report_lines(doc: dict[str, Any]) -> list[str]:
    """The reply as aligned ``label  value`` lines: the main figures, then every other key."""
    lines = []
    shown = {"ok", "cmd", "id"}
    for key, label, fmt in LAYOUT:
        if key in doc:
            shown.add(key)
            value = doc[key]
            if key == "recording" and not value:
                value = "no"
            lines.append(f"{label:>24}  {_fmt(fmt, value)}")
    rest = [k for k in sorted(doc) if k not in shown]
    if rest:
        lines.append("")
        for key in rest:
            value = doc[key]
            lines.append(f"{key:>24}  {_fmt('{:.4g}' if isinstance(value, float) else '{}', value)}")
    return lines


def main(args: argparse.Namespace) -> int:
    reply = request_control(args, {"cmd": "status"}, log, timeout=args.timeout)
    if isinstance(reply, int):
        return reply
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    if not reply.get("ok"):
        log.error("daemon refused: %s", reply.get("error"))
        return 1
    if not args.json:
        print("\n".join(status_report_lines(reply)))
    return exit_code(reply)


EXIT_HEALTHY, EXIT_NO_DAEMON, EXIT_UNHEALTHY = 0, 1, 3


def exit_code(reply: dict[str, Any]) -> int:
    """0 healthy, 1 not running, 3 running but unhealthy (see DESCRIPTION)."""
    if reply.get("state", "running") not in ("running", "waiting", "degraded"):
        return EXIT_NO_DAEMON
    if reply.get("health", "ok") != "ok" or reply.get("state") == "degraded":
        log.warning("unhealthy: %s", reply.get("health_reasons") or reply.get("state"))
        return EXIT_UNHEALTHY
    return EXIT_HEALTHY
