"""`ionstream import run.mzML -o run.isc`: an mzML run as a capture that replay:// plays."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

HELP = "turn an mzML run into a capture (replay it through the pipeline with replay://)"
DESCRIPTION = (
    "Write the profile spectra of an mzML run as device frames in a new capture. Each frame "
    "carries the spectrum's own m/z array (explicit float64 axis) and intensities, its scan "
    "number, MS level, polarity and scan time (device timestamp), so `ionstream run --source "
    "replay://run.isc` runs the live pipeline on real instrument data at the run's own pace "
    "(?speed=max: as fast as it goes). Frames with explicit axes are larger than TOF frames: "
    "the command prints the ring slot size they need. docs/mzml.md has the details."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mzml", metavar="MZML", help="mzML file to read")
    parser.add_argument("-o", "--out", metavar="CAPTURE", required=True, help="capture file to write (.isc)")
    parser.add_argument("--ms-level", type=int, action="append", metavar="N", dest="ms_levels",
                        help="import only this MS level (repeat for several; default: all)")
    parser.add_argument("--centroided", action="store_true",
                        help="import the centroided spectra instead of the profile ones")
    parser.add_argument("--spectrum-type", choices=("auto", "profile", "centroid"), default="auto",
                        help="auto (default): each spectrum's own term, else estimated from its point "
                             "spacing; profile/centroid: take every spectrum as that")
    parser.add_argument("--compress", action="store_true", help="zstd-compress the capture's records")
    parser.add_argument("--force", action="store_true", help="replace CAPTURE if it exists")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="scan", file=sys.stderr, disable=None, leave=False) as bar:
        yield bar


def main(args: argparse.Namespace) -> int:
    from ionstream.offline.mzml_import import import_mzml
    from ionstream.offline.spectra import MzMLError, count_spectra

    try:
        total = count_spectra(args.mzml)
        with progress_bar(total, "import") as bar:
            summary = import_mzml(args.mzml, args.out, ms_levels=args.ms_levels, centroided=args.centroided,
                                  compress=args.compress, overwrite=args.force, progress=bar.update,
                                  spectrum_type=args.spectrum_type)
    except FileExistsError:
        print(f"ionstream import: {args.out} exists; give --force to replace it", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream import: {exc.filename or args.mzml}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (MzMLError, ImportError) as exc:
        print(f"ionstream import: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.as_dict(), default=str))
        return 0 if summary.spectra else 1
    kind = "centroided" if args.centroided else "profile"
    skipped = []
    if summary.skipped_centroided and not args.centroided:
        skipped.append(f"{summary.skipped_centroided} centroided")
    if summary.skipped_ms_level:
        skipped.append(f"{summary.skipped_ms_level} other MS levels")
    if summary.skipped_empty:
        skipped.append(f"{summary.skipped_empty} empty")
    levels = ", ".join(f"MS{k}: {v}" for k, v in sorted(summary.ms_levels.items())) or "none"
    instrument = ", ".join(summary.instrument) or "instrument not stated"
    print(f"{args.out}: {summary.spectra:,} {kind} spectra ({levels}) from run {summary.run_id!r} "
          f"({instrument}), {summary.duration_s:.3f} s"
          + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    if summary.estimated_profile or summary.estimated_centroided:
        print(f"spectrum type not stated in the file: estimated from the data as profile for "
              f"{summary.estimated_profile}, centroided for {summary.estimated_centroided} spectra "
              f"(override with --spectrum-type)")
    if not summary.spectra:
        print(f"ionstream import: no {kind} spectra in {args.mzml}"
              + ("" if args.centroided else " (try --centroided)"), file=sys.stderr)
        return 1
    from ionstream.config import load

    needed = summary.ring_slot_bytes
    default = load(None).ring.resolved_slot_bytes()
    if needed > default:
        print(f"replay it with ring.slot_bytes >= {needed} (largest frame: {summary.max_samples} samples); "
              f"the default slot holds {default} bytes", file=sys.stderr)
    return 0
