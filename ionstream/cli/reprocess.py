"""`ionstream reprocess CAPTURES... --out DIR`: re-run archived captures on Dask, Parquet out."""
from __future__ import annotations

import argparse
import logging
import sys

HELP = "reprocess captures with the live DSP and classifier on Dask (LocalCluster or a scheduler)"
DESCRIPTION = (
    "Replay each capture through the same per-scan code as the daemon (DSP, features, classifier, "
    "traces) on Dask workers and write per-capture Parquet tables (peaks, classes, events, scans) "
    "and a summary under --out. A rerun skips captures already done with the same settings and "
    "model; a capture that cannot be read is reported and skipped. Exit 0 when every capture is "
    "done or skipped, 1 when some failed, 2 on a usage or configuration error. See docs/reprocess.md."
)
log = logging.getLogger("ionstream.offline.reprocess")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captures", nargs="+", metavar="CAPTURE",
                        help="capture files, or directories searched recursively for *.isc")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--scheduler", default="local", metavar="ADDRESS",
                        help="'local' (a LocalCluster on this machine, the default) or an existing "
                             "scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="LocalCluster worker processes (default: the cores, at most 8); with "
                             "--scheduler, wait for N workers before starting")
    parser.add_argument("--memory-limit", default="auto", metavar="BYTES",
                        help="LocalCluster memory per worker, e.g. 2GiB (default auto: memory / workers)")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="daemon TOML config whose [dsp] and [inference] settings to use")
    parser.add_argument("--model", metavar="DIR", help="model bundle (overrides inference.model)")
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt", "none"),
                        help="classifier backend (default: the config's; auto means onnxruntime here)")
    parser.add_argument("--force", action="store_true", help="redo captures already done with these settings")


def main(args: argparse.Namespace) -> int:
    try:
        from ionstream.offline.reprocess import Settings, format_row, quiet_dask_logs, reprocess
    except ModuleNotFoundError as exc:  # dask or pyarrow missing
        log.error("reprocess needs the [dask] extra: pip install 'ionstream[dask]' (%s)", exc)
        return 2
    from inference.bundle import BundleError
    from ionstream.cli.common import load_config, report_config_error
    from ionstream.config import ConfigError

    if getattr(args, "verbose", 0) < 2:
        quiet_dask_logs()
    if args.workers is not None and args.workers < 1:
        log.error("--workers must be >= 1, got %d", args.workers)
        return 2
    try:
        # offline: without [source], so a lab's serial port need not exist where archives are reprocessed
        config = load_config(args, {"inference.model": args.model, "inference.backend": args.backend},
                             offline=True)
        settings = Settings.from_config(config)
        settings.resolved()  # a missing or broken model bundle is reported before anything starts
    except ConfigError as exc:
        return report_config_error(log, exc)
    except BundleError as exc:
        log.error("%s", exc)
        return 2

    bar = None

    def on_start(dashboard: str, to_do: int, skipped: int, workers: int) -> None:
        nonlocal bar
        if dashboard:
            log.info("Dask dashboard: %s", dashboard)
        log.info("%d capture(s) to process on %d worker(s), %d already done with these settings",
                 to_do, workers, skipped)
        if to_do and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=to_do, unit="capture", file=sys.stderr, dynamic_ncols=True)

    def on_row(row: dict, n: int, total: int) -> None:
        line = f"[{n}/{total}] {format_row(row)}"
        if bar is not None:
            bar.update(1)
            bar.write(line, file=sys.stderr)
        elif row["status"] == "failed":
            log.error("%s", line)
        else:
            log.info("%s", line)

    try:
        report = reprocess(args.captures, args.out, settings, scheduler=args.scheduler, workers=args.workers,
                           memory_limit=args.memory_limit, force=args.force, on_row=on_row, on_start=on_start)
    except OSError as exc:
        log.error("%s: %s", args.scheduler, exc)  # e.g. a scheduler that does not answer
        return 2
    finally:
        if bar is not None:
            bar.close()
    for row in report.rows:
        if row["status"] == "skipped":
            log.info("%s", format_row(row))
    for row in report.failed:
        log.error("not processed: %s: %s", row["capture"], row["error"])
    d = report.as_dict()
    print(f"reprocess: {d['captures']} capture(s): {d['done']} done, {d['skipped']} skipped, {d['failed']} failed; "
          f"{d['scans']} scans in {d['seconds']:.1f} s ({d['scans_per_s']:.0f} scans/s); "
          f"settings {d['settings_sha256'][:12]}; summary {args.out}/summary.parquet")
    return 1 if report.failed else 0
