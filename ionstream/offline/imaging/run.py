"""The driver of `ionstream images`: ion images on Dask, segmentation, outputs.

    from ionstream.offline.imaging.run import ImagingJob, run_job
    job = ImagingJob(input="run.isc", out="out/", windows=[IonWindow.parse("760.58")],
                     cells=[IonWindow.parse("798.54")])
    report = run_job(job, scheduler="local", workers=2)

The run is cut into parts (:func:`ionstream.offline.imaging.pixels.plan_parts`); pass 1 sums the
ion-image windows of every part on the workers; the driver assembles the images and
segments them (OpenCV, :mod:`ionstream.offline.imaging.segment`); pass 2 sums the spectra of each
cell and region on the workers for their mean spectra. Then the images, label images,
Parquet tables and the overview picture are written (:mod:`ionstream.offline.imaging.outputs`).

Output directory::

    images/tic.png|.tif, images/mzNNN.png|.tif   ion images (8-bit PNG, 16-bit TIFF)
    labels/cells.png|.tif, labels/regions.png|.tif
    cells.parquet, regions.parquet               one row per object: area, centroid, intensities
    pixels.parquet                               one row per pixel: x, y, cell, region, intensities
    mean_spectra.parquet                         mean spectrum of every cell and region
    overview.png                                 every image, the cell outlines, the regions
    imaging.json                                 the raster, windows, counts, timings (and score)
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ionstream.offline.imaging.ionimages import IonWindow, first_axis, image_part, spectra_part
from ionstream.offline.imaging.pixels import RasterInfo, plan_parts

log = logging.getLogger("ionstream.images")


@dataclass
class ImagingJob:
    """What to do. ``windows``: ion images; ``cells`` / ``regions``: the marker windows to
    segment cells / tissue regions from (each also gets its ion image); ``truth``: a simulator
    truth file to score the segmentation against; ``spectra``: compute mean spectra."""

    input: str
    out: str
    windows: list[IonWindow] = field(default_factory=list)
    cells: list[IonWindow] = field(default_factory=list)
    regions: list[IonWindow] = field(default_factory=list)
    truth: str | None = None
    spectra: bool = True

    def all_windows(self) -> list[IonWindow]:
        """Every window once, in the order given (ion images, then cell, then region markers)."""
        out: list[IonWindow] = []
        for w in self.windows + self.cells + self.regions:
            if w not in out:
                out.append(w)
        return out


@dataclass
class ImageStack:
    """Assembled ion images: ``images[0]`` the TIC, ``images[1 + j]`` window j (float64 counts,
    height x width); ``hits``: scans per pixel (0 = not scanned)."""

    raster: RasterInfo
    names: list[str]
    images: np.ndarray
    hits: np.ndarray
    counts: dict[str, int]

    def image(self, window: IonWindow) -> np.ndarray:
        return self.images[self.names.index(window.name)]


def windows_from_truth(path: str) -> tuple[list[IonWindow], list[IonWindow]]:
    """(cell-marker windows, tissue-marker windows) of a simulator truth file (half-width: the FWHM)."""
    from instrument.imaging_sample import load_truth

    markers = load_truth(path)["meta"]["markers"]
    pick = lambda role: [IonWindow(m["mz"], m["half_width"]) for m in  # noqa: E731
                         sorted((m for m in markers if m["role"] == role), key=lambda m: m["type_index"])]
    return pick("cell_type"), pick("tissue_type")


def build_images(client, parts: list[dict[str, Any]], raster: RasterInfo, windows: list[IonWindow]) -> ImageStack:
    """Pass 1: every part's window sums on the workers, assembled into images (a pixel scanned
    more than once gets the mean of its scans)."""
    futures = [client.submit(image_part, p, windows, pure=False, priority=len(parts) - i) for i, p in enumerate(parts)]
    k = 1 + len(windows)
    sums = np.zeros((k, raster.height, raster.width))
    hits = np.zeros((raster.height, raster.width), np.int32)
    counts: dict[str, Any] = {"scans": 0, "no_position": 0, "outside_raster": 0}
    for fut in futures:
        res = fut.result()
        fut.release()
        for key, v in res["counts"].items():
            counts[key] = counts.get(key, 0) + v
        x, y, values = res["x"], res["y"], res["values"]
        inside = (x < raster.width) & (y < raster.height)
        counts["outside_raster"] += int((~inside).sum())
        x, y, values = x[inside], y[inside], values[inside]
        np.add.at(hits, (y, x), 1)
        for j in range(k):
            np.add.at(sums[j], (y, x), values[:, j])
    images = sums / np.maximum(hits, 1)
    return ImageStack(raster, ["tic"] + [w.name for w in windows], images, hits, counts)


def mean_spectra(client, parts: list[dict[str, Any]], labels: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Pass 2: (the m/z axis, name -> (sums, pixel counts)) of every label of each label image."""
    first = None
    for p in parts:
        first = first_axis(p)
        if first is not None:
            break
    if first is None:
        return np.zeros(0), {}
    key, axis = first
    futures = [client.submit(spectra_part, p, labels, axis, key, pure=False) for p in parts]
    total: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fut in futures:
        for name, (sums, counts) in fut.result().items():
            if name in total:
                total[name][0][...] += sums
                total[name][1][...] += counts
            else:
                total[name] = (sums, counts)
        fut.release()
    return axis, total


MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""glibc's mmap threshold in our LocalCluster workers (MALLOC_MMAP_THRESHOLD_)."""


def open_imaging_client(scheduler: str | None = "local", workers: int | None = None, **kwargs):
    """``ionstream.offline.reprocess.open_client`` with one change for LocalCluster workers: Dask starts
    them with MALLOC_TRIM_THRESHOLD_ set, which turns off glibc's adaptive mmap threshold, so
    every buffer of 128 KiB or more (a 64k-point scan, a capture read window) is mmap'd and
    unmapped again and its pages faulted in afresh: the workers ran ~3x slower than the same code
    in one process. A fixed 32 MiB mmap threshold gives them the in-process speed back."""
    import dask

    from ionstream.offline.reprocess import open_client

    key = "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_"
    with dask.config.set({key: str(MMAP_THRESHOLD_BYTES)}):
        return open_client(scheduler, workers, **kwargs)


def run_job(job: ImagingJob, *, scheduler: str | None = "local", workers: int | None = None,
            client=None) -> dict[str, Any]:
    """Do ``job``; returns the report written to ``imaging.json``. ``client``: an existing Dask
    client (else one is opened from ``scheduler``/``workers`` and closed at the end)."""
    t0 = time.perf_counter()
    if job.truth and not (job.windows or job.cells or job.regions):
        job.cells, job.regions = windows_from_truth(job.truth)
    windows = job.all_windows()
    if not windows:
        raise ValueError("give at least one m/z window (--mz, --cells or --regions)")
    # Plan before starting a cluster, so that an unreadable input is reported at once.
    expected = workers or (len(client.scheduler_info().get("workers", {})) if client is not None
                           else max(1, min(8, os.cpu_count() or 1)))
    raster, parts = plan_parts(job.input, n_min=2 * max(1, expected))
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    own = client is None
    cluster = None
    if own:
        client, cluster = open_imaging_client(scheduler, workers)
    try:
        n_workers = len(client.scheduler_info().get("workers", {})) or 1
        t1 = time.perf_counter()
        stack = build_images(client, parts, raster, windows)
        t_images = time.perf_counter() - t1
        cells = regions = None
        report: dict[str, Any] = {}
        seg_windows = job.cells or ([] if job.regions else job.windows)
        from ionstream.offline.imaging import segment

        if seg_windows:
            cells = segment.segment_cells([stack.image(w) for w in seg_windows])
        if job.regions:
            regions = segment.segment_regions([stack.image(w) for w in job.regions])
        labels = {k: v.labels for k, v in (("cell", cells), ("region", regions)) if v is not None}
        t2 = time.perf_counter()
        axis, spectra = mean_spectra(client, parts, labels) if job.spectra and labels else (np.zeros(0), {})
        t_spectra = time.perf_counter() - t2
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    written = _write_outputs(out, job, stack, cells, regions, axis, spectra, seg_windows)
    report.update({
        "input": str(job.input), "raster": vars(raster), "parts": len(parts), "workers": n_workers,
        "windows": [{"name": w.name, "mz": w.mz, "half_width": w.half_width} for w in windows],
        "cell_windows": [w.name for w in seg_windows], "region_windows": [w.name for w in job.regions],
        "counts": stack.counts, "pixels_scanned": int((stack.hits > 0).sum()),
        "cells": cells.count if cells is not None else None,
        "regions": regions.count if regions is not None else None,
        "seconds": {"images": t_images, "spectra": t_spectra, "total": time.perf_counter() - t0},
        "pixels_per_s": stack.counts["scans"] / t_images if t_images > 0 else 0.0,
        "outputs": sorted(str(p.relative_to(out)) for p in written),
    })
    if job.truth:
        report["score"] = score_against_truth(job.truth, cells, regions)
    (out / "imaging.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report


def score_against_truth(path: str, cells, regions) -> dict[str, Any]:
    """Segmentation scores against a simulator truth file: mean IoU and count error, per kind."""
    from instrument.imaging_sample import load_truth
    from ionstream.offline.imaging.segment import score

    truth = load_truth(path)
    out = {}
    for kind, seg, key in (("cells", cells, "cells"), ("regions", regions, "regions")):
        if seg is not None:
            if seg.labels.shape != truth[key].shape:
                raise ValueError(f"the truth in {path} is {truth[key].shape[1]}x{truth[key].shape[0]} pixels, "
                                 f"the run {seg.labels.shape[1]}x{seg.labels.shape[0]}: not this run's truth")
            s = score(seg.labels, truth[key])
            out[kind] = {"mean_iou": s.mean_iou, "count_error": s.count_error, "true": s.n_true,
                         "found": s.n_pred, "matched": s.matched}
    return out


def _write_outputs(out: Path, job: ImagingJob, stack: ImageStack, cells, regions, axis, spectra,
                   seg_windows: list[IonWindow]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ionstream.offline.imaging import outputs

    written: list[Path] = []
    for name, image in zip(stack.names, stack.images):
        written += outputs.write_image(out / "images", name, image, stack.raster)
    tables = {}
    for kind, seg in (("cell", cells), ("region", regions)):
        if seg is not None:
            written += outputs.write_labels(out / "labels", f"{kind}s", seg.labels, stack.raster)
            tables[f"{kind}s"] = outputs.object_table(kind, seg.labels, seg.types, stack.images, stack.names,
                                                      stack.raster)
    tables["pixels"] = outputs.pixel_table(stack.images, stack.names, stack.hits,
                                           cells.labels if cells is not None else None,
                                           regions.labels if regions is not None else None)
    if spectra:
        tables["mean_spectra"] = pa.concat_tables([outputs.spectra_table(kind, s, n, axis)
                                                   for kind, (s, n) in spectra.items()])
    for name, table in tables.items():
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
        written.append(out / f"{name}.parquet")
    title = f"{Path(job.input).name}: {stack.raster.width}x{stack.raster.height} pixels"
    from ionstream.offline.imaging.segment import scale_robust

    markers = np.max([scale_robust(stack.image(w)) for w in seg_windows], axis=0) if seg_windows else None
    written.append(outputs.overview(out / "overview.png", stack.images, stack.names,
                                    cells.labels if cells is not None else None,
                                    regions.labels if regions is not None else None, title, markers))
    return written
