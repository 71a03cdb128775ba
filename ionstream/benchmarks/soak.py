"""`ionstream bench soak`: a long run; does memory or queue depth grow?

Runs the whole pipeline on the simulator for ``--minutes`` (or ``--scans`` scans) with a real
ZeroMQ subscriber on 127.0.0.1 taking every message, and samples RSS (from /proc) and the
stages' queue depths every ``--sample-s`` seconds. Growth is judged after a warm-up
(``--warmup-s``, default 20 % of the run: caches, model sessions and pools settle), as the
least-squares slope of RSS over time, ``rss_slope_mb_per_min`` (goal: <= 0.01 MB/min), so
start-up allocation is not mistaken for a leak and one noisy sample does not decide it.

``--tracemalloc`` also takes a tracemalloc snapshot at the end of warm-up and at the end and
reports the allocation sites that grew most (Python allocations only; slower).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

from ionstream.config import Config

HELP = "long run with a subscriber: RSS slope after warm-up and queue depth (leak check)"
GOAL_MB_PER_MIN = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=1.0, help="run time in minutes (default %(default)s)")
    parser.add_argument("--scans", type=int, default=0, help="stop after this many scans instead (0: by time)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="simulated scans/s (default %(default)s, the simulator's; 0 = as fast as it goes)")
    parser.add_argument("--samples", type=int, default=4096, help="samples per scan (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DSP workers (0 = cores - 1)")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-s", type=float, default=-1.0,
                        help="seconds ignored at the start (default: 20 %% of the run)")
    parser.add_argument("--backend", default="auto", help="classifier backend (default %(default)s)")
    parser.add_argument("--tracemalloc", action="store_true", help="report the allocation sites that grew most")


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t in s, value) points, per minute (0 for fewer than 2 points)."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / var


class _Subscriber:
    """A thread that takes every message from the daemon's PUB socket (owner: soak(); stop())."""

    def __init__(self, endpoint: str):
        from ionstream.client.subscriber import Subscriber

        self.messages = 0
        self._sub = Subscriber(endpoint, topics=None, timeout=0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._sub.recv()
                except TimeoutError:
                    continue
                self.messages += 1
        finally:
            self._sub.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(minutes: float = 1.0, scans: int = 0, rate: float = 20.0, samples: int = 4096, workers: int = 0,
         sample_s: float = 1.0, warmup_s: float = -1.0, backend: str = "auto", trace: bool = False,
         progress=lambda msg: None) -> dict:
    """Run the pipeline; RSS slope (MB/min) after warm-up, RSS (MB), queue depths (items)."""
    from ionstream.daemon.pipeline import Pipeline

    duration_s = minutes * 60.0
    warmup = duration_s * 0.2 if warmup_s < 0 else warmup_s
    config = Config()
    config.source.url = f"sim://?rate={rate:g}&samples={samples}&seed=7" + (f"&count={scans}" if scans else "")
    config.dsp.workers = workers
    config.inference.backend = backend
    config.publish.endpoint = f"tcp://127.0.0.1:{_free_port()}"
    config.publish.control = ""
    config.ring.max_samples = samples
    if trace:
        import tracemalloc

        tracemalloc.start(12)
    pipeline = Pipeline(config).start()
    sub = _Subscriber(config.publish.endpoint)
    series = []  # (t s, scans done, rss bytes, ring fill, reorder depth)
    t0 = time.monotonic()
    last_progress = t0
    snap_warm = None
    try:
        while not pipeline.finished() and (scans or time.monotonic() - t0 < duration_s):
            time.sleep(sample_s)
            s = pipeline.snapshot()
            t = time.monotonic() - t0
            series.append((t, s["scans"], rss_bytes(), s["ring_fill"], s["reorder_depth"]))
            if trace and snap_warm is None and t >= warmup:
                import tracemalloc

                snap_warm = tracemalloc.take_snapshot()
            if time.monotonic() - last_progress > 10:
                last_progress = time.monotonic()
                progress(f"{t:.0f} s, {s['scans']} scans, RSS {series[-1][2] / 1e6:.1f} MB, "
                         f"slope {slope_per_min([(x[0], x[2] / 1e6) for x in series if x[0] >= warmup]):+.3f} MB/min")
        growth = _growth(snap_warm) if trace and snap_warm is not None else []
    finally:
        elapsed = time.monotonic() - t0
        pipeline.stop()
        sub.stop()
    final = pipeline.snapshot()
    warm = [row for row in series if row[0] >= warmup] or series
    points = [(row[0], row[2] / 1e6) for row in warm]
    slope = slope_per_min(points)
    result = {
        "scans": final["scans"],
        "elapsed_s": elapsed,
        "scans_per_s": final["scans"] / elapsed if elapsed else 0.0,
        "messages_received": sub.messages,
        "warmup_s": warmup,
        "rss_samples_after_warmup": len(points),
        "rss_after_warmup_MB": points[0][1] if points else 0.0,
        "rss_end_MB": points[-1][1] if points else 0.0,
        "rss_growth_MB": points[-1][1] - points[0][1] if points else 0.0,
        "rss_slope_mb_per_min": slope,
        "rss_slope_goal_mb_per_min": GOAL_MB_PER_MIN,
        "rss_slope_ok": abs(slope) <= GOAL_MB_PER_MIN if len(points) >= 2 else False,
        "max_ring_fill": max((row[3] for row in series), default=0.0),
        "max_reorder_depth": max((row[4] for row in series), default=0),
        "drops": final["drops_total"],
    }
    if growth:
        result["tracemalloc_top_growth"] = growth
    return result


def _growth(before) -> list[str]:
    """The 10 allocation sites that grew most since ``before`` (tracemalloc, Python only)."""
    import tracemalloc

    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    return [f"{s.size_diff / 1e3:+.1f} kB ({s.count_diff:+d} blocks) {s.traceback.format()[-1].strip()}"
            for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:10]]


def run(args: argparse.Namespace, progress) -> dict:
    return soak(args.minutes, args.scans, args.rate, args.samples, args.workers, args.sample_s, args.warmup_s,
                args.backend, args.tracemalloc, progress)
