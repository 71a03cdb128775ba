"""`ionstream capture info FILE [--json]` / `ionstream capture verify FILE`."""
from __future__ import annotations

import argparse
import json
import sys

HELP = "inspect a capture file (info) or check it for damage (verify)"
DESCRIPTION = (
    "Capture files hold raw device frames with host receive times (docs/capture.md). "
    "`info` scans the whole file and prints scans, duration, rates, sequence gaps, CRC errors and "
    "whether the tail is torn; `verify` exits 0 only for an undamaged file."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    info = sub.add_parser("info", help="scans, duration, rates, gaps, CRC errors, torn tail, header",
                          description="Decode every recorded frame and summarise the capture.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    verify = sub.add_parser("verify", help="exit 0 if every record is whole and every frame valid, else 1",
                            description="Check a capture for torn tails, damaged records and invalid frames. "
                                        "Exit 0: undamaged; 1: damaged (problems listed); 2: not a readable capture.")
    verify.add_argument("file", metavar="FILE")
    verify.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def main(args: argparse.Namespace) -> int:
    from instrument.capture import CaptureError, capture_info

    if args.action not in ("info", "verify"):
        print("use `ionstream capture info FILE` or `ionstream capture verify FILE`", file=sys.stderr)
        return 2
    try:
        info = capture_info(args.file)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream capture: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except CaptureError as exc:
        print(f"ionstream capture: {exc}", file=sys.stderr)
        return 2
    if args.action == "info":
        if args.json:
            print(json.dumps(info.as_dict(), default=str))
        else:
            print(info.format())
        return 0
    problems = verify_problems(info)
    if args.json:
        print(json.dumps({"file": args.file, "ok": not problems, "problems": problems}))
    elif problems:
        print(f"{args.file}: DAMAGED")
        for p in problems:
            print(f"  {p}")
    else:
        print(f"{args.file}: ok ({info.records:,} frames, {info.scans:,} scans, "
              f"{'closed cleanly' if info.closed_cleanly else 'no END record'})")
    return 1 if problems else 0


def verify_problems(info) -> list[str]:
    """Lines naming each kind of damage in ``info`` (empty: undamaged)."""
    problems = []
    if info.torn_tail:
        problems.append(f"torn tail: {info.torn_tail_bytes} bytes after the last whole record")
    if info.corrupt_bytes:
        problems.append(f"{info.corrupt_bytes} damaged bytes between whole records")
    if info.invalid_records:
        problems.append(f"{info.invalid_records} records are not exactly one valid device frame")
    if info.crc_errors:
        problems.append(f"{info.crc_errors} frame CRC errors (header {info.header_crc_errors}, "
                        f"payload {info.payload_crc_errors})")
    return problems
