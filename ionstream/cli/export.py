"""`ionstream export CAPTURE -o run.mzML [--centroid]`: a capture as HUPO-PSI mzML."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ionstream.cli.common import add_config_argument, load_config, report_config_error
from ionstream.config import ConfigError

HELP = "write a capture as mzML (profile spectra, or centroided with --centroid)"
DESCRIPTION = (
    "Write every scan of a capture as an mzML spectrum (psims; indexed mzML 1.1, zlib-compressed "
    "arrays): profile spectra on each scan's m/z axis, or with --centroid the peaks the live "
    "pipeline picks (same DSP code and settings as `ionstream run`; -c picks the configuration). "
    "Scan times, MS level, polarity, scan numbers and the source's metadata are kept; a TIC "
    "chromatogram closes the run. docs/mzml.md lists the mapping."
)
log = logging.getLogger("ionstream.export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", metavar="CAPTURE", help="capture file (.isc)")
    parser.add_argument("-o", "--out", metavar="FILE", required=True, help="mzML file to write")
    parser.add_argument("--centroid", action="store_true",
                        help="write centroided spectra (the pipeline's peaks) instead of profile spectra")
    add_config_argument(parser, "daemon configuration whose [dsp] settings pick the peaks (default: the defaults)")
    parser.add_argument("--no-compression", action="store_true",
                        help="store arrays uncompressed (faster to write, larger files)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


def main(args: argparse.Namespace) -> int:
    from instrument.capture import CaptureError
    from ionstream.cli.import_mzml import progress_bar
    from ionstream.offline.export import export_capture
    from ionstream.offline.peaks import dsp_params_from_config
    from ionstream.offline.spectra import MzMLError, count_spectra

    try:
        dsp = None
        if args.centroid:
            try:
                dsp = dsp_params_from_config(load_config(args, offline=True))
            except ConfigError as exc:
                return report_config_error(log, exc)
        total = count_spectra(args.capture)
        with progress_bar(total, "export") as bar:
            summary = export_capture(args.capture, args.out, centroid=args.centroid, dsp_params=dsp,
                                     compress=not args.no_compression, progress=bar.update)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream export: {exc.filename or args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (CaptureError, MzMLError, ImportError) as exc:
        print(f"ionstream export: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.as_dict(), default=str))
    else:
        kind = f"centroided ({summary.peaks:,} peaks)" if summary.centroided else "profile"
        levels = ", ".join(f"MS{k}: {v}" for k, v in sorted(summary.ms_levels.items())) or "none"
        print(f"{args.out}: {summary.spectra:,} {kind} spectra ({levels}) over {summary.duration_s:.3f} s"
              + (f"; {summary.invalid_records} damaged records skipped" if summary.invalid_records else ""))
    return 0
