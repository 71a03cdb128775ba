"""`ionstream bench soak`: a compressed long run; does memory or queue depth grow?

Runs the whole pipeline on the simulator as fast as it goes for ``--scans`` scans and samples
RSS (from /proc) and the stages' queue depths every ``--sample-s`` seconds. Growth is judged
between the end of warm-up (first 20 % of the run: caches, model sessions and pools settle)
and the end, so start-up allocation is not mistaken for a leak.
"""
from __future__ import annotations

import argparse
import os
import time

from ionstream.config import Config

HELP = "long run at max speed: RSS and queue depth over time (leak check)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scans", type=int, default=200_000, help="scans to run (default %(default)s)")
    parser.add_argument("--samples", type=int, default=4096, help="samples per scan (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DSP workers (0 = cores - 1)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--backend", default="auto", help="classifier backend (default %(default)s)")


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def soak(scans: int, samples: int, workers: int = 0, sample_s: float = 0.5, backend: str = "auto",
         progress=lambda msg: None) -> dict:
    """Run the pipeline for ``scans`` scans; figures on RSS (MB) and queue depth (items)."""
    from ionstream.pipeline import Pipeline

    config = Config()
    config.source.url = f"sim://?rate=0&samples={samples}&count={scans}&seed=7"
    config.dsp.workers = workers
    config.inference.backend = backend
    config.publish.endpoint = "inproc://soak"
    config.publish.control = ""
    config.ring.max_samples = samples
    pipeline = Pipeline(config).start()
    series = []  # (scans done, rss, ring lag, reorder depth)
    t0 = time.monotonic()
    last_progress = t0
    while not pipeline.finished():
        time.sleep(sample_s)
        s = pipeline.snapshot()
        series.append((s["scans"], rss_bytes(), s["ring_fill"], s["reorder_depth"]))
        if time.monotonic() - last_progress > 5:
            last_progress = time.monotonic()
            progress(f"{s['scans']}/{scans} scans, RSS {series[-1][1] / 1e6:.1f} MB, ring {100 * s['ring_fill']:.0f}%")
    elapsed = time.monotonic() - t0
    pipeline.stop()
    final = pipeline.snapshot()
    warm = [row for row in series if row[0] >= 0.2 * scans] or series
    rss_warm, rss_end = warm[0][1], warm[-1][1]
    return {
        "scans": final["scans"],
        "elapsed_s": elapsed,
        "scans_per_s": final["scans"] / elapsed if elapsed else 0.0,
        "rss_after_warmup_MB": rss_warm / 1e6,
        "rss_end_MB": rss_end / 1e6,
        "rss_growth_MB": (rss_end - rss_warm) / 1e6,
        "rss_growth_bytes_per_scan": (rss_end - rss_warm) / max(1, warm[-1][0] - warm[0][0]),
        "max_ring_fill": max((row[2] for row in series), default=0.0),
        "max_reorder_depth": max((row[3] for row in series), default=0),
        "drops": final["drops_total"],
    }


def run(args: argparse.Namespace, progress) -> dict:
    return soak(args.scans, args.samples, args.workers, args.sample_s, args.backend, progress)
