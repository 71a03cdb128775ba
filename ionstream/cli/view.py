"""`ionstream view`: the live viewer (pyqtgraph on Qt), a subscriber like any analysis application."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ionstream.cli.common import (
    add_pub_arguments,
    client_curve,
    error_sentence,
    pub_endpoint,
    report_config_error,
)
from ionstream.config import ConfigError

HELP = "live viewer: spectrum with peaks, class, scrolling TIC/XIC with events, health"
DESCRIPTION = (
    "Open a window on a running daemon: the current spectrum with its picked peaks marked and "
    "labelled (m/z), the class and its confidence, the TIC and XIC traces scrolling with elution "
    "events marked, and a health panel (rates, drops per stage, latency, ring fill, backend). "
    "It subscribes over ZeroMQ like any other client and never slows the daemon: it redraws at "
    "--fps from the latest messages and skips what it has no time to draw. Whole spectra appear "
    "when the daemon publishes them (`ionstream run --spectrum`); otherwise the peaks are drawn "
    "as sticks. During an imaging run (scans with pixel positions) an ion-image panel appears and "
    "fills as the raster is scanned (TIC or a chosen XIC window; docs/imaging.md). "
    "--screenshot FILE saves a picture after --after seconds and exits (works "
    "without a display: QT_QPA_PLATFORM=offscreen)."
)
log = logging.getLogger("ionstream.view")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pub_arguments(parser)
    parser.add_argument("--fps", type=float, default=10.0, help="redraws per second (default %(default)s)")
    parser.add_argument("--window", type=float, default=60.0, metavar="S",
                        help="seconds of TIC/XIC history on screen (default %(default)s)")
    parser.add_argument("--labels", type=int, default=8, metavar="K", help="label the K tallest peaks (default %(default)s)")
    parser.add_argument("--screenshot", metavar="FILE", help="save the window to FILE (PNG) after --after s, then exit")
    parser.add_argument("--after", type=float, default=5.0, metavar="S", help="seconds before --screenshot (default %(default)s)")
    parser.add_argument("--duration", type=float, metavar="S", help="close the window after S seconds")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="window size in pixels")


def main(args: argparse.Namespace) -> int:
    headless = not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")
    if args.screenshot and headless:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # a picture needs no screen
    elif headless and sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM"):
        # Qt would abort the process without a display; say what to do instead
        print("ionstream view: no display (DISPLAY is not set). Run it on a desktop session, over "
              "`ssh -X`, or take a picture with --screenshot FILE.", file=sys.stderr)
        return 2
    try:
        from ionstream.viewer.window import run_viewer

        curve = client_curve(args)
        return run_viewer(pub_endpoint(args), fps=args.fps, window_s=args.window, labels=args.labels, curve=curve,
                          screenshot=args.screenshot, after_s=args.after, duration_s=args.duration,
                          size=tuple(args.size) if args.size else None)
    except ImportError as exc:
        print(f"ionstream view: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        return report_config_error(log, exc)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ionstream view: {error_sentence(exc)}", file=sys.stderr)
        return 2
