"""`ionstream capture info FILE [--json]` / `ionstream capture verify FILE`."""
from __future__ import annotations

import argparse
import json
import sys

HELP = "inspect a capture file (info) or check it for damage (verify)"
DESCRIPTION = (
    "Capture files hold raw device frames with host receive times (docs/capture.md). "
    "`info` scans the whole file and prints scans, duration, rates, sequence gaps, CRC errors and "
    "whether the tail is torn; `verify` tells an intact file (exit 0, also with a torn tail) from "
    "a damaged one (exit 1)."
)
VERIFY_DESCRIPTION = (
    "Check a capture for damaged records, invalid frames and a torn tail. Outcomes: "
    "'ok' (exit 0): every record whole, every frame valid. "
    "'ok (torn tail: N bytes ignored)' (exit 0): the writer stopped mid-record (crash, kill or power "
    "loss); every record before the tail is intact and every reader ignores the tail: keep the file. "
    "'DAMAGED' (exit 1): damaged records, invalid frames, CRC errors or bytes after the END record; "
    "the problems are listed, and the whole records are still readable. "
    "Exit 2: not a readable capture (missing, not a capture, newer format, invalid header)."
)
EXIT_OK, EXIT_DAMAGED, EXIT_UNREADABLE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    info = sub.add_parser("info", help="scans, duration, rates, gaps, CRC errors, torn tail, header",
                          description="Decode every recorded frame and summarise the capture. "
                                      "Exit 0, or 2 if the file is not a readable capture.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    verify = sub.add_parser("verify", help="exit 0 if intact (a torn tail is intact), 1 if damaged, 2 if unreadable",
                            description=VERIFY_DESCRIPTION)
    verify.add_argument("file", metavar="FILE")
    verify.add_argument("--json", action="store_true",
                        help='print one JSON object: {"file", "outcome": "ok"|"torn_tail"|"damaged", "ok", '
                             '"torn_tail_bytes", "frames", "scans", "closed_cleanly", "problems"}')


def main(args: argparse.Namespace) -> int:
    from instrument.capture import CaptureError, capture_info

    if args.action not in ("info", "verify"):
        print("use `ionstream capture info FILE` or `ionstream capture verify FILE`", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        info = capture_info(args.file)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream capture: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except CaptureError as exc:
        print(f"ionstream capture: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.action == "info":
        if args.json:
            print(json.dumps(info.as_dict(), default=str))
        else:
            print(format_info(info))
        return EXIT_OK
    problems = verify_problems(info)
    outcome = info.outcome
    if args.json:
        print(json.dumps({"file": args.file, "outcome": outcome, "ok": outcome != "damaged",
                          "torn_tail_bytes": info.torn_tail_bytes, "frames": info.records, "scans": info.scans,
                          "closed_cleanly": info.closed_cleanly, "problems": problems}))
    elif outcome == "damaged":
        print(f"{args.file}: DAMAGED")
        for p in problems:
            print(f"  {p}")
    else:
        tail = (f", torn tail: {info.torn_tail_bytes:,} bytes ignored (the writer stopped mid-record; "
                "every record before it is intact)" if outcome == "torn_tail" else "")
        print(f"{args.file}: ok ({info.records:,} frames, {info.scans:,} scans, "
              f"{'closed cleanly' if info.closed_cleanly else 'no END record'}{tail})")
    return EXIT_DAMAGED if outcome == "damaged" else EXIT_OK


def verify_problems(info) -> list[str]:
    """Lines naming each kind of damage in ``info`` (empty: undamaged; a torn tail alone is
    listed too, for --json, but does not make the file damaged)."""
    problems = []
    if info.corrupt_bytes:
        problems.append(f"{info.corrupt_bytes} damaged bytes between whole records")
        problems.extend(f"  {note}" for note in info.damage)
    if info.invalid_records:
        problems.append(f"{info.invalid_records} records are not exactly one valid device frame")
    if info.crc_errors:
        problems.append(f"{info.crc_errors} frame CRC errors (header {info.header_crc_errors}, "
                        f"payload {info.payload_crc_errors})")
    if info.after_end_bytes:
        problems.append(f"{info.after_end_bytes} bytes after the END record (appended after the writer closed it)")
    if info.torn_tail and not info.after_end_bytes:
        problems.append(f"torn tail: {info.torn_tail_bytes} bytes after the last whole record (ignored)")
    return problems


def format_info(info) -> str:
    """A capture_info result (instrument.capture.CaptureInfo) as the readable lines `capture info` prints."""
    from instrument.capture import samples_text

    src = info.description.get("source")
    if isinstance(src, dict):
        src_text = src.get("url") or json.dumps(src, sort_keys=True)
    else:
        src_text = str(src) if src is not None else "(not described)"
    mib = info.frame_bytes / 1e6
    lines = [
        f"capture        {info.path}",
        f"format         {info.format_version}"
        + (" (zstd blocks)" if info.compressed else "")
        + f", written by ionstream {info.header.get('ionstream_version', '?')} on {info.header.get('host', '?')}",
        f"started        {info.header.get('created', '?')}",
        f"source         {src_text}",
        f"file           {info.file_bytes:,} bytes; {info.records:,} frames, {mib:,.1f} MB of frames",
        f"scans          {info.scans:,}  (+ {info.status_frames:,} status frames)"
        + (f", {samples_text(info.samples_per_scan_min, info.samples_per_scan_max)} samples/scan"
           if info.scans else ""),
        f"duration       {info.duration_host_s:.3f} s host time, {info.duration_device_s:.3f} s device time",
        f"rate           {info.scan_rate_hz:.2f} scans/s, {info.mb_per_s:.2f} MB/s",
        f"sequence gaps  {info.sequence_gaps:,}" + (f"  (device restarts: {info.sequence_restarts})"
                                                   if info.sequence_restarts else ""),
        f"CRC errors     {info.crc_errors:,}  (header {info.header_crc_errors}, payload "
        f"{info.payload_crc_errors}); invalid records {info.invalid_records}",
        f"torn tail      {'yes, ' + format(info.torn_tail_bytes, ',') + ' bytes ignored' if info.torn_tail else 'no'}",
    ]
    if info.corrupt_bytes:
        lines.append(f"damage         {info.corrupt_bytes:,} bytes skipped between whole records")
        lines.extend(f"               {note}" for note in info.damage)
    if info.after_end_bytes:
        lines.append(f"after END      {info.after_end_bytes:,} bytes after the END record (damage)")
    if info.part:
        lines.append(f"part           {info.part.get('index')} of a rotated recording"
                     + (f", after {info.part['previous']}" if info.part.get("previous") else ""))
    lines.append(f"closed cleanly {'yes' if info.closed_cleanly else 'no (no END record: the writer was stopped abruptly)'}")
    settings = {k: v for k, v in info.description.items() if k != "source"}
    if settings:
        lines.append(f"settings       {json.dumps(settings, sort_keys=True, default=str)}")
    return "\n".join(lines)
