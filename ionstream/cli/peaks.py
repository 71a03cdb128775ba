"""`ionstream peaks INPUT -o peaks.csv|peaks.mzML`: offline peak picking with the live pipeline's code."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ionstream.cli.common import add_config_argument, load_config, report_config_error
from ionstream.config import ConfigError

HELP = "pick peaks in an mzML run or a capture (CSV or centroided mzML out)"
DESCRIPTION = (
    "Pick and centroid the peaks of every profile spectrum in an mzML file or a capture with the "
    "same DSP code and settings as the daemon (baseline, smoothing, peaks, centroids; -c picks the "
    "configuration's [dsp] section). -o FILE.csv: one row per peak (index, scan, native_id, "
    "ms_level, polarity, rt_min, mz, intensity, area, fwhm, snr); -o FILE.mzML: centroided spectra."
)
log = logging.getLogger("ionstream.peaks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="mzML file or capture file")
    parser.add_argument("-o", "--out", metavar="FILE", required=True, help="peaks.csv or peaks.mzML")
    parser.add_argument("--ms-level", type=int, action="append", metavar="N", dest="ms_levels",
                        help="only this MS level (repeat for several; default: all)")
    add_config_argument(parser, "daemon configuration ([dsp] settings)")
    parser.add_argument("--preset", choices=("tof", "orbitrap", "fticr"),
                        help="peak-picking defaults for this instrument kind (overrides [dsp] preset; docs/dsp.md)")
    parser.add_argument("--spectrum-type", choices=("auto", "profile", "centroid"), default="auto",
                        help="auto (default): each spectrum's own term, else estimated from its point "
                             "spacing; profile/centroid: take every spectrum as that")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


def main(args: argparse.Namespace) -> int:
    from instrument.capture import CaptureError
    from ionstream.cli.import_mzml import progress_bar
    from ionstream.offline.peaks import dsp_params_from_config, pick_peaks
    from ionstream.offline.spectra import MzMLError, count_spectra

    try:
        dsp = dsp_params_from_config(load_config(args, offline=True))
        if args.preset:
            dsp["preset"] = args.preset
    except ConfigError as exc:
        return report_config_error(log, exc)
    try:
        total = count_spectra(args.input)
        with progress_bar(total, "peaks") as bar:
            summary = pick_peaks(args.input, args.out, dsp_params=dsp, ms_levels=args.ms_levels,
                                 progress=bar.update, spectrum_type=args.spectrum_type)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream peaks: {exc.filename or args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (CaptureError, MzMLError, ImportError) as exc:
        print(f"ionstream peaks: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.as_dict(), default=str))
    else:
        print(f"{args.out}: {summary.peaks:,} peaks in {summary.spectra:,} spectra"
              + (f"; {summary.skipped_centroided} already-centroided spectra passed through, not re-picked"
                 if summary.skipped_centroided else ""))
        if summary.estimated_profile or summary.estimated_centroided:
            print(f"spectrum type not stated in the file: estimated from the data as profile for "
                  f"{summary.estimated_profile}, centroided for {summary.estimated_centroided} spectra "
                  f"(override with --spectrum-type)")
    return 0 if summary.spectra else 1
