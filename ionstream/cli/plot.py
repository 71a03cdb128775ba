"""`ionstream plot CAPTURE --scan N -o scan.png`: one spectrum as a picture (matplotlib, no display)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import numpy as np

HELP = "draw one scan of a capture or mzML file to PNG/SVG/PDF (peaks marked, m/z labelled)"
DESCRIPTION = (
    "Draw one spectrum for a report or a bug ticket, without Qt or a display: the scan as the "
    "instrument sent it, the peaks the live pipeline picks in it (same DSP code and settings; "
    "-c picks the configuration) marked and the tallest labelled with their m/z, and with --tic "
    "the run's total ion current with the scan marked. The output format follows the file "
    "extension (.png, .svg, .pdf)."
)
log = logging.getLogger("ionstream.plot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="CAPTURE", help="capture file (or an mzML file)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--scan", type=int, metavar="N", help="scan number to draw (default: the first scan)")
    which.add_argument("--index", type=int, metavar="K", help="draw the K-th scan of the file (0-based)")
    parser.add_argument("-o", "--out", metavar="FILE", default="scan.png", help="picture to write (default %(default)s)")
    parser.add_argument("--mz", type=float, nargs=2, metavar=("LOW", "HIGH"), help="m/z range to show")
    parser.add_argument("--labels", type=int, default=10, metavar="K", help="label the K tallest peaks (default %(default)s)")
    parser.add_argument("--no-peaks", action="store_true", help="do not pick or mark peaks")
    parser.add_argument("--tic", action="store_true", help="add the run's TIC below, with this scan marked")
    parser.add_argument("--size", type=float, nargs=2, default=(10.0, 5.0), metavar=("W", "H"),
                        help="figure size in inches (default 10 5)")
    parser.add_argument("--dpi", type=int, default=120, help="dots per inch for raster output (default %(default)s)")
    parser.add_argument("-c", "--config", metavar="FILE", help="daemon configuration ([dsp] settings for the peaks)")


def find_scan(path, scan: int | None = None, index: int | None = None, *, tic: bool = False):
    """(Spectrum with copied arrays, TIC as (times s, values, scan numbers) or None)."""
    from ionstream.offline.spectra import read_spectra

    found = None
    times, values, numbers, levels = [], [], [], []
    first_scan = last_scan = None
    for s in read_spectra(path):
        first_scan = s.scan if first_scan is None else first_scan
        last_scan = s.scan
        hit = (index is not None and s.index == index) or (index is None and (scan is None or s.scan == scan))
        if hit and found is None:
            s.mz, s.intensity = np.array(s.mz, dtype=np.float64), np.array(s.intensity)
            found = s
        if tic:
            times.append(s.time_s)
            values.append(float(np.asarray(s.intensity, dtype=np.float64).sum()))
            numbers.append(s.scan)
            levels.append(s.ms_level)
        elif found is not None:
            break
    if found is None:
        if first_scan is None:
            raise LookupError(f"{path} holds no scans")
        what = f"index {index}" if index is not None else f"scan {scan}"
        raise LookupError(f"{path} has no {what} (scans {first_scan}..{last_scan})")
    if not tic:
        return found, None
    same = np.array(levels) == found.ms_level  # the TIC of the drawn scan's MS level
    return found, (np.array(times)[same], np.array(values)[same], np.array(numbers)[same])


def pick(spectrum, dsp_params: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    """The pipeline's peaks for this spectrum (ionstream.offline.peaks.PeakPicker), or None for a centroided one."""
    from ionstream.offline.peaks import PeakPicker
    from ionstream.offline.spectra import MzMLError

    if spectrum.centroided:
        return None
    try:
        return PeakPicker(dsp_params)(spectrum)
    except MzMLError as exc:
        log.warning("%s; drawing without peaks", exc)
        return None


def draw(spectrum, peaks: dict[str, np.ndarray] | None, *, tic=None, mz_range=None, labels: int = 10,
         size=(10.0, 5.0), source: str = ""):
    """A matplotlib Figure (Agg canvas) of one spectrum, its peaks and optionally the TIC."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    if tic is not None:
        ax, ax_tic = fig.subplots(2, 1, height_ratios=(3, 1))
    else:
        ax, ax_tic = fig.subplots(), None
    mz, y = spectrum.mz, np.asarray(spectrum.intensity, dtype=np.float64)
    if spectrum.centroided:
        ax.vlines(mz, 0, y, color="#1f4e79", linewidth=0.8)
    else:
        ax.plot(mz, y, color="#1f4e79", linewidth=0.6)
    if mz_range:
        ax.set_xlim(*mz_range)
        seen = y[(mz >= mz_range[0]) & (mz <= mz_range[1])]
        if len(seen):
            lo, hi = float(min(seen.min(), 0.0)), float(seen.max())
            ax.set_ylim(lo, hi + 0.05 * (hi - lo or 1.0))
    if peaks is not None and len(peaks["mz"]):
        pm = np.asarray(peaks["mz"], dtype=np.float64)
        in_view = np.ones(len(pm), bool) if not mz_range else (pm >= mz_range[0]) & (pm <= mz_range[1])
        # mark each centroid on the drawn trace (the trace includes the baseline the height excludes)
        py = np.interp(pm, mz, y) if len(mz) > 1 else np.zeros(len(pm))
        ax.plot(pm[in_view], py[in_view], "v", color="#c0392b", markersize=4, label=f"{int(in_view.sum())} peaks")
        from ionstream.viewer.model import top_peaks

        lo, hi = mz_range or (float(mz[0]), float(mz[-1]))
        sub = np.flatnonzero(in_view)
        # the tallest peaks, one label per cluster (no two closer than 2.5 % of the m/z range)
        order = top_peaks(pm[sub], np.asarray(peaks["intensity"], dtype=np.float64)[sub], labels,
                          min_separation=0.025 * (hi - lo))
        idx = sub[order]
        for k in idx:
            ax.annotate(f"{pm[k]:.4f}", (pm[k], py[k]), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, color="#c0392b", rotation=90)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
        top = py[idx].max() if len(idx) else None
        if top:
            ax.set_ylim(top=max(ax.get_ylim()[1], top * 1.18))
    polarity = {1: "positive", 2: "negative"}.get(int(spectrum.polarity), "polarity unknown")
    kind = "centroided" if spectrum.centroided else "profile"
    ax.set_title(f"scan {spectrum.scan} · MS{spectrum.ms_level} · {polarity} · {kind} · "
                 f"t = {spectrum.time_s:.3f} s · {len(mz):,} points" + (f"\n{source}" if source else ""),
                 fontsize=9)
    ax.set_xlabel("m/z")
    ax.set_ylabel("intensity (counts)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    if ax_tic is not None:
        t, v, _numbers = tic
        ax_tic.plot(t, v, color="#555555", linewidth=0.8)
        ax_tic.axvline(spectrum.time_s, color="#c0392b", linewidth=1.0)
        ax_tic.set_xlabel("time (s)")
        ax_tic.set_ylabel(f"TIC (MS{spectrum.ms_level})")
        ax_tic.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    return fig


def main(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("ionstream plot needs matplotlib: pip install 'ionstream[plot]'", file=sys.stderr)
        return 2
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from instrument.capture import CaptureError
    from ionstream.cli.common import load_config, report_config_error
    from ionstream.config import ConfigError
    from ionstream.offline.peaks import dsp_params_from_config
    from ionstream.offline.spectra import MzMLError, is_capture

    try:
        dsp = dsp_params_from_config(load_config(args, offline=True))
    except ConfigError as exc:
        return report_config_error(log, exc)
    try:
        spectrum, tic = find_scan(args.input, args.scan, args.index, tic=args.tic)
        peaks = None if args.no_peaks else pick(spectrum, dsp)
        source = args.input
        if is_capture(args.input):
            from instrument.capture import read_header

            src = (read_header(args.input)[0].get("description") or {}).get("source") or {}
            if isinstance(src, dict) and src.get("url"):
                source = f"{args.input} ({src['url']})"
        fig = draw(spectrum, peaks, tic=tic, mz_range=args.mz, labels=args.labels, size=tuple(args.size),
                   source=source)
        fig.savefig(args.out, dpi=args.dpi)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"ionstream plot: {exc.filename or args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (CaptureError, MzMLError, LookupError, ImportError) as exc:
        print(f"ionstream plot: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an unknown output extension
        print(f"ionstream plot: {args.out}: {exc}", file=sys.stderr)
        return 2
    n = 0 if peaks is None else len(peaks["mz"])
    print(f"{args.out}: scan {spectrum.scan} (MS{spectrum.ms_level}, t = {spectrum.time_s:.3f} s), "
          f"{len(spectrum.mz):,} points, {n} peaks marked")
    return 0
