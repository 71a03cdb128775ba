"""`ionstream imzml export CAPTURE -o RUN.imzML` / `ionstream imzml import RUN.imzML -o RUN.isc`."""
from __future__ import annotations

import argparse
import logging

HELP = "imaging data to and from imzML (export a capture, import an imzML file as a capture)"
DESCRIPTION = (
    "export: write the pixel scans of an imaging capture as imzML (+ .ibd; continuous or processed "
    "mode, exact values). import: turn an imzML file (continuous or processed) into a capture whose "
    "scans carry their pixel positions, for `ionstream images` or replay. Exit 0 on success, 1 when "
    "the input cannot be read, 2 on a usage error. See docs/imaging.md."
)
log = logging.getLogger("ionstream.imzml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    exp = sub.add_parser("export", help="capture -> imzML")
    exp.add_argument("capture", metavar="CAPTURE", help="a capture of an imaging run (.isc)")
    exp.add_argument("-o", "--out", required=True, metavar="FILE", help="the .imzML to write (the .ibd goes beside it)")
    exp.add_argument("--mode", choices=("auto", "continuous", "processed"), default="auto",
                     help="continuous: one shared m/z array; processed: one per spectrum; auto (default): "
                          "continuous when the run has one m/z axis")
    imp = sub.add_parser("import", help="imzML -> capture")
    imp.add_argument("imzml", metavar="IMZML", help="an .imzML file (its .ibd beside it)")
    imp.add_argument("-o", "--out", required=True, metavar="FILE", help="the capture to write (.isc)")
    imp.add_argument("--compress", action="store_true", help="zstd-compress the capture")


def main(args: argparse.Namespace) -> int:
    try:
        import pyimzml  # noqa: F401
    except ModuleNotFoundError as exc:
        log.error("imzml needs the [imaging] extra: pip install 'ionstream[imaging]' (%s)", exc)
        return 2
    from instrument.capture import CaptureError
    from ionstream.offline.imaging.imzml import export_imzml, import_imzml
    from ionstream.offline.imaging.pixels import ImagingInputError

    try:
        if args.direction == "export":
            rep = export_imzml(args.capture, args.out, args.mode)
            log.info("wrote %d spectra (%s mode) to %s and %s%s", rep.spectra, rep.mode, rep.imzml, rep.ibd,
                     f"; {rep.skipped_no_position} scans without a position skipped" if rep.skipped_no_position else "")
        else:
            rep = import_imzml(args.imzml, args.out, compress=args.compress)
            r = rep.raster
            log.info("wrote %d spectra of a %dx%d raster to %s", rep.spectra, r.width, r.height, rep.capture)
    except (ImagingInputError, CaptureError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return 0
