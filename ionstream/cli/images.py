"""`ionstream images INPUT --mz MZ... --out DIR`: ion images, segmentation and tables of an imaging run."""
from __future__ import annotations

import argparse
import json
import logging

HELP = "ion images, OpenCV segmentation and tables of an imaging run (capture or imzML) on Dask"
DESCRIPTION = (
    "Build ion images (TIC and each m/z window) of an imaging run -- a capture whose scans carry "
    "pixel positions, or an imzML file -- on Dask workers, segment cells (--cells markers) and "
    "tissue regions (--regions markers) with OpenCV, and write PNG and 16-bit TIFF images, "
    "Parquet tables (cells, regions, pixels, mean spectra) and an overview picture under --out. "
    "Windows: MZ (+-500 ppm), MZ:HALFWIDTH (m/z) or MZ:TOLppm. Exit 0 on success, 1 when the "
    "input cannot be read, 2 on a usage error. See docs/imaging.md."
)
log = logging.getLogger("ionstream.images")


def _window(text: str):
    from ionstream.offline.imaging.ionimages import IonWindow

    try:
        return IonWindow.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="a capture (.isc) of an imaging run, or an .imzML file")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--mz", type=_window, action="append", default=[], metavar="WINDOW",
                        help="an ion image to build (repeat for more); without --cells/--regions the "
                             "cells are segmented from these")
    parser.add_argument("--cells", type=_window, nargs="+", default=[], metavar="WINDOW",
                        help="cell markers: one window per cell type")
    parser.add_argument("--regions", type=_window, nargs="+", default=[], metavar="WINDOW",
                        help="tissue-region markers: one window per region type")
    parser.add_argument("--truth", metavar="FILE",
                        help="a simulator truth file (.npz): score the segmentation against it; with no "
                             "window given, its cell and tissue markers are used")
    parser.add_argument("--no-spectra", action="store_true", help="skip the mean spectra (a second pass)")
    parser.add_argument("--scheduler", default="local", metavar="ADDRESS",
                        help="'local' (a LocalCluster, the default) or an existing scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="LocalCluster worker processes (default: the cores, at most 8)")


def main(args: argparse.Namespace) -> int:
    try:
        import cv2  # noqa: F401
        import pyarrow  # noqa: F401
        import tifffile  # noqa: F401

        from ionstream.offline.reprocess import quiet_dask_logs
    except ModuleNotFoundError as exc:
        log.error("images needs the [imaging] extra: pip install 'ionstream[imaging]' (%s)", exc)
        return 2
    from instrument.capture import CaptureError
    from ionstream.offline.imaging.pixels import ImagingInputError
    from ionstream.offline.imaging.run import ImagingJob, run_job

    if getattr(args, "verbose", 0) < 2:
        quiet_dask_logs()
    if args.workers is not None and args.workers < 1:
        log.error("--workers must be >= 1, got %d", args.workers)
        return 2
    if not (args.mz or args.cells or args.regions or args.truth):
        log.error("give at least one m/z window: --mz 760.58 (or --cells / --regions, or --truth FILE)")
        return 2
    job = ImagingJob(input=args.input, out=args.out, windows=args.mz, cells=args.cells, regions=args.regions,
                     truth=args.truth, spectra=not args.no_spectra)
    try:
        report = run_job(job, scheduler=args.scheduler, workers=args.workers)
    except (ImagingInputError, CaptureError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    r = report["raster"]
    log.info("%s: %dx%d pixels, %d scans in %d parts on %d worker(s); %s cells, %s regions; %.0f pixels/s",
             args.input, r["width"], r["height"], report["counts"]["scans"], report["parts"], report["workers"],
             report["cells"], report["regions"], report["pixels_per_s"])
    if "score" in report:
        log.info("against the truth: %s", json.dumps(report["score"]))
    log.info("wrote %s (overview: %s/overview.png)", args.out, args.out)
    return 0
