"""`ionstream bench imaging`: segmentation against the truth, ion-image speed, Dask scaling, imzML round trip.

Three simulated imaging runs are recorded to captures (docs/imaging.md), then:

- **segmentation**: `--raster` pixels of `--samples`-point spectra (default 128x128 of 4096);
  ion images and segmentation exactly as `ionstream images --truth` does them (a LocalCluster
  of 1 worker); ``mean_iou`` (over the true cells; an unmatched cell counts 0),
  ``cell_count_error`` (|found - true| / true), ``region_iou``;
- **speed**: `--pixels` pixels of 65536-point spectra. ``pixels_per_s_per_core``: the ion-image
  work of one part per pixel (read, CRC checks, decode, TIC and 8 windows) in this process on
  one core, best of ``--repeat`` (``pixels_per_cpu_s``: the same per second of this thread's
  CPU time, what a core does when no other work shares it); its baseline, in the same process, is reading and decoding
  the same capture without the window sums (``read_pixels_per_s``, and ``ratio_vs_read``).
  ``scaling_2v1``: pass 1 of `ionstream images` (the ion images, on Dask) on a LocalCluster of
  2 worker processes over 1, best of ``--repeat`` each (both clusters up, warmed up first and
  taking turns round by round; start-up not timed). At most 2, and less where the machine's cores are shared or fewer than 2 (``cores``;
  ``task_cpu_share_*``: the tasks' CPU time over their wall time, 1.0 when each had a core);
- **imzml_roundtrip_exact**: the 64k-point capture exported to imzML (continuous and processed),
  imported back: 1 when every m/z and intensity of every pixel is identical, else 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HELP = "imaging: segmentation vs the simulator's truth, ion images/s, Dask 2v1, imzML round trip"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raster", default="128x128", metavar="WxH", help="segmentation run (default %(default)s)")
    parser.add_argument("--samples", type=int, default=4096, help="samples per scan of the segmentation run")
    parser.add_argument("--seed", type=int, default=3, help="sample seed (default %(default)s)")
    parser.add_argument("--pixels", type=int, default=2048, help="pixels of 65536-point spectra for the speed runs")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per setting, best kept (default %(default)s)")
    parser.add_argument("--dir", metavar="DIR", help="work directory (default: a temporary one, removed)")


def write_imaging_capture(path: Path, raster: str, samples: int, seed: int, pixels: int | None = None,
                          truth: Path | None = None) -> int:
    """A capture of one pass over a simulated raster (or its first ``pixels``); returns the scans."""
    from instrument.capture import CaptureWriter
    from instrument.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(scan_rate_hz=0, n_samples=samples, seed=seed, imaging=raster, status_interval_s=0))
    n = min(pixels or sim.raster.pixels, sim.raster.pixels)
    if truth is not None:
        sim.sample.save_truth(truth)
    with CaptureWriter(path, {"source": {"url": f"sim://?imaging={raster}&samples={samples}&seed={seed}",
                                         "imaging": raster}, "mode": "bench"}, fsync_interval_s=None) as w:
        for k in range(n):
            frame, _ = next(sim)
            w.append(frame, 1_700_000_000_000_000_000 + k * 1_000_000)
    return n


def _speed(path: Path, windows, repeat: int) -> tuple[float, float, float]:
    """(ion-image pixels/s, its pixels per CPU-second, read-and-decode pixels/s) on one core in this
    process, best of ``repeat``. Pixels per CPU-second (this thread's CPU time) is what a core does
    when it has the core to itself; pixels/s is wall time, lower on a busy machine."""
    from ionstream.offline.imaging.ionimages import image_part
    from ionstream.offline.imaging.pixels import iter_part, plan_parts

    _, parts = plan_parts(path, n_min=1)
    best_img = best_cpu = best_read = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        n = sum(1 for p in parts for _ in iter_part(p))
        best_read = max(best_read, n / (time.perf_counter() - t))
        t, c = time.perf_counter(), time.thread_time()
        n = sum(len(image_part(p, windows)["x"]) for p in parts)
        best_img = max(best_img, n / (time.perf_counter() - t))
        best_cpu = max(best_cpu, n / max(time.thread_time() - c, 1e-9))
    return best_img, best_cpu, best_read


def _dask_rates(path: Path, windows, repeat: int, progress) -> dict[int, tuple[float, float, float]]:
    """workers -> (best pass-1 pixels/s, cluster start-up s, CPU share), for LocalClusters of 1 and
    2 worker processes that stay up and take turns, round by round (a shared machine's load then
    weighs on both alike). CPU share: the tasks' thread CPU time over their wall time in the best
    run (1.0: each task had a core to itself; less: the cores were busy with other work too)."""
    from ionstream.offline.imaging.pixels import plan_parts
    from ionstream.offline.imaging.run import build_images, open_imaging_client

    clients = {}
    try:
        for workers in (1, 2):
            t = time.perf_counter()
            client, cluster = open_imaging_client("local", workers)
            clients[workers] = (client, cluster, time.perf_counter() - t)
        plans = {w: plan_parts(path, n_min=4 * w) for w in clients}
        for w, (client, _, _) in clients.items():  # warm-up: imports in every worker
            raster, parts = plans[w]
            build_images(client, parts[:w], raster, windows)
        best = {w: (0.0, 0.0) for w in clients}
        for _ in range(repeat):
            for w, (client, _, _) in clients.items():
                raster, parts = plans[w]
                t = time.perf_counter()
                stack = build_images(client, parts, raster, windows)
                rate = stack.counts["scans"] / (time.perf_counter() - t)
                if rate > best[w][0]:
                    best[w] = (rate, stack.counts["task_cpu_s"] / max(stack.counts["task_wall_s"], 1e-9))
        for w, (rate, share) in best.items():
            progress(f"{w} worker(s): {rate:.0f} pixels/s (its tasks had {share:.0%} of a core each)")
        return {w: (best[w][0], clients[w][2], best[w][1]) for w in clients}
    finally:
        for client, cluster, _ in clients.values():
            client.close()
            cluster.close()


def _roundtrip_exact(path: Path, work: Path) -> bool:
    from ionstream.offline.imaging.imzml import export_imzml, import_imzml
    from ionstream.offline.imaging.pixels import iter_part, plan_parts

    def pixels(p):
        _, parts = plan_parts(p)
        return {(px.x, px.y): (np.array(px.mz, np.float64), np.array(px.intensity, np.float64))
                for part in parts for px in iter_part(part)}

    original = pixels(path)
    for mode in ("continuous", "processed"):
        rep = export_imzml(path, work / f"rt-{mode}.imzML", mode)
        back = import_imzml(rep.imzml, work / f"rt-{mode}.isc").capture
        for other in (pixels(rep.imzml), pixels(back)):
            if other.keys() != original.keys():
                return False
            if not all(np.array_equal(original[k][0], other[k][0]) and np.array_equal(original[k][1], other[k][1])
                       for k in original):
                return False
    return True


def run(args: argparse.Namespace, progress) -> dict:
    from ionstream.offline.imaging.ionimages import IonWindow
    from ionstream.offline.imaging.run import ImagingJob, open_imaging_client, run_job
    from ionstream.offline.reprocess import quiet_dask_logs

    quiet_dask_logs()
    own_dir = args.dir is None
    work = Path(tempfile.mkdtemp(prefix="ionstream-bench-imaging-")) if own_dir else Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        seg_cap, truth = work / "segment.isc", work / "segment.truth.npz"
        progress(f"recording a {args.raster} run of {args.samples}-point spectra (seed {args.seed})")
        write_imaging_capture(seg_cap, args.raster, args.samples, args.seed, truth=truth)
        client, cluster = open_imaging_client("local", 1)
        try:
            report = run_job(ImagingJob(str(seg_cap), str(work / "segment-out"), truth=str(truth)), client=client)
        finally:
            client.close()
            cluster.close()
        cells, regions = report["score"]["cells"], report["score"]["regions"]
        progress(f"cells: {cells['found']} found of {cells['true']}, mean IoU {cells['mean_iou']:.3f}")

        speed_cap = work / "speed.isc"
        progress(f"recording {args.pixels} pixels of 65536-point spectra")
        n = write_imaging_capture(speed_cap, "64x64", 65536, args.seed, pixels=args.pixels)
        # 8 windows spread over the axis (the TIC comes with them)
        windows = [IonWindow.parse(f"{mz}:0.5") for mz in (150, 300, 450, 600, 750, 900, 1200, 1500)]
        img_rate, img_cpu_rate, read_rate = _speed(speed_cap, windows, args.repeat)
        progress(f"one core: {img_rate:.0f} pixels/s with ion images ({img_cpu_rate:.0f} per CPU-second), "
                 f"{read_rate:.0f} reading only")
        dask = _dask_rates(speed_cap, windows, args.repeat, progress)
        (rate1, start1, share1), (rate2, start2, share2) = dask[1], dask[2]
        progress("imzML round trip")
        exact = _roundtrip_exact(speed_cap, work)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {
            "mean_iou": cells["mean_iou"], "cell_count_error": cells["count_error"],
            "cells_true": cells["true"], "cells_found": cells["found"], "region_iou": regions["mean_iou"],
            "pixels_per_s_per_core": img_rate, "pixels_per_cpu_s": img_cpu_rate, "read_pixels_per_s": read_rate,
            "ratio_vs_read": img_rate / read_rate if read_rate else 0.0,
            "dask_1_worker_pixels_per_s": rate1, "dask_2_workers_pixels_per_s": rate2,
            "scaling_2v1": rate2 / rate1 if rate1 else 0.0, "imzml_roundtrip_exact": int(exact),
            "task_cpu_share_1_worker": share1, "task_cpu_share_2_workers": share2,
            "speed_pixels": n, "speed_samples": 65536, "cores": cores,
            "detail": {"raster": args.raster, "samples": args.samples, "seed": args.seed,
                       "cluster_startup_s": {"1": start1, "2": start2}},
        }
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
