"""`ionstream bench reprocess`: archive reprocessing on a LocalCluster with 1 and 2 workers.

N captures are generated from the simulator, then reprocessed (DSP + features + ONNX Runtime
classifier + traces, Parquet out) three ways on the same files:

- in this process, one capture after another, without Dask (the baseline: what one core does);
- a LocalCluster of 1 worker process;
- a LocalCluster of 2 worker processes.

Each is timed ``--repeat`` times (the two clusters stay up and alternate, round by round) and
the best run is kept, the median reported too (shared machines are noisy).

Each cluster first runs one warm-up capture (worker imports, the model load) that is not
timed, and its start-up time is reported separately. scans/s = scans / wall time from submit
to the last capture written. ``scaling_2v1`` is the 2-worker rate over the 1-worker rate: at
most 2, and less on a machine whose cores are shared or fewer than 2 (``cores`` says how many
this process may use).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HELP = "reprocess N generated captures on a LocalCluster with 1 and 2 workers (scans/s, ratio)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captures", type=int, default=12, help="captures (default %(default)s)")
    parser.add_argument("--scans", type=int, default=300, help="scans per capture (default %(default)s)")
    parser.add_argument("--samples", type=int, default=16384, help="samples per scan (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per setting, best kept (default %(default)s)")
    parser.add_argument("--dir", metavar="DIR", help="work directory (default: a temporary one, removed)")


def write_sim_capture(path: str | os.PathLike, scans: int, samples: int = 4096, seed: int = 1,
                      status_interval_s: float = 1.0) -> int:
    """A capture of ``scans`` simulator scans (plus its STATUS frames); returns the frames written."""
    from instrument.capture import CaptureWriter
    from instrument.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(scan_rate_hz=0, clock_rate_hz=20.0, n_samples=samples, seed=seed,
                              status_interval_s=status_interval_s))
    frames = 0
    t = 1_700_000_000_000_000_000
    with CaptureWriter(path, {"source": {"url": f"sim://?samples={samples}&seed={seed}"}, "mode": "bench"},
                       fsync_interval_s=None) as writer:
        while sim.scan_number < scans:
            frame, _ = next(sim)
            t += 50_000_000
            writer.append(frame, t)
            frames += 1
    return frames


def _timed_run(paths, out: Path, settings, client) -> tuple[float, int]:
    from ionstream.offline.reprocess import reprocess

    t0 = time.perf_counter()
    report = reprocess(paths, out, settings, client=client)
    seconds = time.perf_counter() - t0
    if report.failed or report.done != len(paths):
        first = "; ".join(f"{r['name']}: {r['error']}" for r in report.failed[:3])
        raise RuntimeError(f"benchmark run: {len(report.failed)} capture(s) failed ({first})")
    return seconds, report.scans_processed


def run(args: argparse.Namespace, progress) -> dict:
    from ionstream.offline.reprocess import open_client, plan, quiet_dask_logs, reprocess
    from ionstream.offline.reprocess_settings import Settings, settings_hash
    from ionstream.offline.reprocess_worker import process_capture

    quiet_dask_logs()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ionstream-bench-reprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        caps = work / "captures"
        caps.mkdir(exist_ok=True)
        progress(f"writing {args.captures} captures of {args.scans} scans x {args.samples} samples")
        paths = []
        for i in range(args.captures + 1):  # the extra one is the warm-up
            p = caps / f"bench{i:03d}.isc"
            write_sim_capture(p, args.scans, args.samples, seed=100 + i)
            paths.append(p)
        warm, paths = paths[:1], paths[1:]
        settings = Settings()
        mb = sum(p.stat().st_size for p in paths) / 1e6

        # Baseline: the same per-capture function in this process, no Dask.
        resolved = settings.resolved()
        sha = settings_hash(resolved)
        tasks, _ = plan(warm, work / "out-inproc-warm", sha, resolved, settings, force=True)
        process_capture(tasks[0])
        tasks, _ = plan(paths, work / "out-inproc", sha, resolved, settings, force=True)
        progress("in-process baseline")
        inproc_s = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            scans0 = sum(process_capture(t)["scans"] for t in tasks)
            inproc_s = min(inproc_s, time.perf_counter() - t0)

        result = {"captures": args.captures, "scans_per_capture": args.scans, "samples": args.samples,
                  "capture_mb": mb, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count(), "scans_per_s_inproc": scans0 / inproc_s}
        clusters = {}
        try:
            for n in (1, 2):
                progress(f"LocalCluster, {n} worker(s): starting, warm-up")
                t0 = time.perf_counter()
                client, cluster = clusters[n] = open_client("local", n)
                result[f"cluster_start_s_{n}w"] = time.perf_counter() - t0
                reprocess(warm, work / f"out-warm-{n}", settings, client=client, force=True)
                client.run(_warm_worker, settings.to_dict())  # every worker has imported and loaded the model
            # Rounds alternate 1 and 2 workers, so a burst of load from elsewhere hits both alike.
            times: dict[int, list[float]] = {1: [], 2: []}
            for r in range(args.repeat):
                for n in (1, 2):
                    s, scans = _timed_run(paths, work / f"out-{n}w-{r}", settings, clusters[n][0])
                    times[n].append(s)
                    progress(f"round {r + 1}, {n} worker(s): {scans} scans in {s:.2f} s: {scans / s:.0f} scans/s")
        finally:
            for client, cluster in clusters.values():
                client.close()
                cluster.close()
        for n in (1, 2):
            best = min(times[n])
            result[f"scans_per_s_{n}w"] = scans / best
            result[f"seconds_{n}w"] = best
            result[f"scans_per_s_{n}w_median"] = scans / float(np.median(times[n]))
        result["scaling_2v1"] = result["scans_per_s_2w"] / result["scans_per_s_1w"]
        result["dask_1w_vs_inproc"] = result["scans_per_s_1w"] / result["scans_per_s_inproc"]
        return result
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def _warm_worker(settings: dict) -> int:
    from ionstream.offline.reprocess_settings import Settings
    from ionstream.offline.reprocess_worker import classifier_for

    s = Settings.from_dict(settings)
    if s.backend != "none":
        classifier_for(s)
    return os.getpid()
