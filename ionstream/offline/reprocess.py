"""Reprocess archived captures on Dask: the live pipeline's per-scan code, Parquet out.

::

    from ionstream.offline.reprocess import Settings, reprocess

    settings = Settings.from_config(config)          # DSP, XIC windows, model, backend
    report = reprocess(["captures/"], "out/", settings, scheduler="local", workers=2)
    report.failed                                     # captures that could not be read

One Dask task per capture. A capture's frames are those ``capture info`` counts
(:func:`instrument.capture.iter_frames`, one frame per record), each scan goes through
:class:`ionstream.processing.ScanWork` -- the object the daemon's DSP workers call -- the
feature vectors through the classifier backend in batches, and the per-scan TIC/XIC values
through ``dsp.traces.TraceProcessor`` in scan order, as the daemon's sequencer does.

Why a task per capture, not per block of scans: elution events come from a streaming filter
over the traces, so a capture's scans must be seen in order by one state; splitting a
capture would need that state handed from block to block, which serialises the blocks again,
or a second ordered pass. An archive holds many more captures than a cluster has workers, so
capture-level parallelism keeps every worker busy; the largest captures are submitted first
so that the run does not end waiting on one big file. The price: one capture never uses more
than one core, and a run of fewer captures than workers leaves workers idle.

The classifier is loaded once per worker process (a per-process cache, see
:func:`classifier_for`), not per task; ScanWork (which owns reusable buffers) once per thread.

Output, one directory per capture under ``out/`` (a data scientist opens it with
``pandas.read_parquet(out / "run1" / "peaks.parquet")``)::

    run1/peaks.parquet     scan, mz, intensity, area, fwhm, snr        (one row per peak)
    run1/classes.parquet   scan, label, confidence, probabilities      (one row per scan)
    run1/events.parquet    scan, trace, kind, start/apex/end scans and times, height, area, ...
    run1/scans.parquet     scan, sequence, t_device_ns, t_host_ns, ms_level, polarity, tic, xic, n_peaks
    run1/done.json         the key, the settings, the capture's identity, counts, time
    summary.parquet        one row per capture of the last run (done, skipped, failed)

A capture's directory is written under a temporary name and renamed when complete, so a
killed run leaves no half-written results. A rerun skips each capture whose ``done.json``
holds the same key: the hash of the settings (DSP parameters, XIC windows, backend,
precision, the model file's SHA-256) and of the capture's identity (size, SHA-256 of its
first and last 64 KiB). A capture that cannot be read (NotACaptureError, CaptureError, a
vanished file, a worker lost) is reported in the summary with its error; the rest finish.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ionstream.offline.reprocess_settings import (
    Settings,
    capture_identity,
    capture_key,
    find_captures,
    output_names,
    settings_hash,
)
from ionstream.offline.reprocess_worker import pyarrow_modules, process_capture


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------

@dataclass
class Report:
    """What a run did; ``rows`` are the summary table's rows (one per capture)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    settings_sha256: str = ""
    dashboard: str = ""
    workers: int = 0

    def _count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def scans_processed(self) -> int:
        return sum(r["scans"] for r in self.rows if r["status"] == "done")

    def as_dict(self) -> dict[str, Any]:
        return {"captures": len(self.rows), "done": self.done, "skipped": self.skipped, "failed": len(self.failed),
                "scans": self.scans_processed, "seconds": self.seconds,
                "scans_per_s": self.scans_processed / self.seconds if self.seconds > 0 else 0.0,
                "settings_sha256": self.settings_sha256, "workers": self.workers, "dashboard": self.dashboard}


SUMMARY_COLUMNS = ("capture", "name", "status", "error", "scans", "status_frames", "peaks", "classified", "events",
                   "dsp_errors", "crc_errors", "sequence_gaps", "torn_tail_bytes", "corrupt_bytes", "seconds",
                   "worker", "settings_sha256", "key")


def plan(captures: list[Path], out_dir: Path, settings_sha: str, resolved: dict[str, Any], settings: Settings,
         force: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks to run, rows of captures skipped or failed before running), in capture order."""
    tasks, rows = [], []
    for path, name in zip(captures, output_names(captures)):
        out = out_dir / name
        base = {"capture": str(path), "name": name, "settings_sha256": settings_sha}
        try:
            identity = capture_identity(path)
        except OSError as exc:
            rows.append({**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "key": ""})
            continue
        key = capture_key(settings_sha, identity)
        if not force:
            done = _read_done(out)
            if done is not None and done.get("key") == key:
                rows.append({**{k: done.get(k) for k in SUMMARY_COLUMNS}, **base, "status": "skipped",
                             "error": "", "key": key})
                continue
        tasks.append({"path": str(path), "out": str(out), "key": key, "identity": identity,
                      "settings": settings.to_dict(), "resolved": resolved, "settings_sha256": settings_sha})
    return tasks, rows


def _read_done(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "done.json").read_text())
    except (OSError, ValueError):
        return None


def quiet_dask_logs(level: int = logging.WARNING) -> None:
    """Only warnings from Dask in this process (its INFO lines on worker start/stop drown progress).

    Imports distributed first: its import configures its loggers, which would undo this.
    """
    import distributed  # noqa: F401

    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(level)


def open_client(scheduler: str | None = "local", workers: int | None = None, memory_limit: str = "auto",
                dashboard_address: str | None = ":0"):
    """A dask.distributed Client: a new LocalCluster (``scheduler`` None or "local") or an existing one.

    LocalCluster: ``workers`` processes (default: the cores, at most 8 for a laptop's memory),
    one thread each (the DSP releases the GIL but ScanWork and the classifier are per-thread
    and per-process; processes make the model load once per worker and keep a crash local),
    ``memory_limit`` per worker ("auto": the machine's memory / workers), the dashboard on a
    free port. Returns ``(client, cluster or None)``; close both.
    """
    from dask.distributed import Client, LocalCluster

    if scheduler in (None, "", "local"):
        n = workers or max(1, min(8, os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=dashboard_address, silence_logs=logging.ERROR)
        return Client(cluster), cluster
    client = Client(scheduler, timeout="30s")
    if workers:
        client.wait_for_workers(workers, timeout=120)
    return client, None


def reprocess(captures: Iterable[str | os.PathLike], out_dir: str | os.PathLike, settings: Settings, *,
              scheduler: str | None = "local", workers: int | None = None, memory_limit: str = "auto",
              force: bool = False, client=None, on_row: Callable[[dict[str, Any], int, int], None] | None = None,
              on_start: Callable[[str, int, int, int], None] | None = None) -> Report:
    """Reprocess ``captures`` (files or directories of ``*.isc``) into ``out_dir``.

    ``client``: an existing dask.distributed Client to use (else one is opened from
    ``scheduler``/``workers``/``memory_limit`` and closed at the end). ``force``: redo
    captures already done. ``on_start(dashboard, to_do, skipped, workers)`` and
    ``on_row(row, n_finished, n_to_do)`` report progress. Writes ``out_dir/summary.parquet``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = find_captures(captures)
    resolved = settings.resolved()
    sha = settings_hash(resolved)
    tasks, rows = plan(paths, out_dir, sha, resolved, settings, force)
    report = Report(settings_sha256=sha)
    order = {str(p): i for i, p in enumerate(paths)}
    if tasks:
        own = client is None
        cluster = None
        if own:
            client, cluster = open_client(scheduler, workers, memory_limit)
        try:
            report.dashboard = client.dashboard_link or ""
            report.workers = len(client.scheduler_info().get("workers", {}))
            if on_start:
                on_start(report.dashboard, len(tasks), len(rows), report.workers)
            rows += _run_tasks(client, tasks, on_row)
        finally:
            if own:
                client.close()
                if cluster is not None:
                    cluster.close()
    elif on_start:
        on_start("", 0, len(rows), 0)
    rows.sort(key=lambda r: order.get(r["capture"], len(order)))
    report.rows = rows
    report.seconds = time.perf_counter() - t0
    write_summary(out_dir / "summary.parquet", rows)
    return report


def _run_tasks(client, tasks: list[dict[str, Any]], on_row) -> list[dict[str, Any]]:
    from dask.distributed import as_completed

    # Largest first (longest-processing-time scheduling): the run does not end on one big file.
    tasks = sorted(tasks, key=lambda t: -t["identity"]["size"])
    futures = {}
    for i, task in enumerate(tasks):
        fut = client.submit(process_capture, task, key=f"reprocess-{task['key'][:16]}-{i}", pure=False,
                            priority=len(tasks) - i, retries=0)
        futures[fut] = task
    rows = []
    for n, fut in enumerate(as_completed(futures), 1):
        task = futures[fut]
        try:
            row = fut.result()
        except Exception as exc:  # the worker died (memory, signal): the capture is reported, the rest go on
            row = {"capture": task["path"], "name": Path(task["out"]).name, "status": "failed",
                   "error": f"{type(exc).__name__}: {exc}", "key": task["key"],
                   "settings_sha256": task["settings_sha256"]}
        rows.append(row)
        if on_row:
            on_row(row, n, len(tasks))
        fut.release()
    return rows


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """The summary table: one row per capture (SUMMARY_COLUMNS), written atomically."""
    pa, pq = pyarrow_modules()
    types = {"capture": pa.string(), "name": pa.string(), "status": pa.string(), "error": pa.string(),
             "seconds": pa.float64(), "worker": pa.string(), "settings_sha256": pa.string(), "key": pa.string()}
    schema = pa.schema([(c, types.get(c, pa.int64())) for c in SUMMARY_COLUMNS])
    cols = {c: [r.get(c) for r in rows] for c in SUMMARY_COLUMNS}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp)
    os.replace(tmp, path)


def read_results(directory: str | os.PathLike) -> dict[str, Any]:
    """The tables of one capture's output directory as pyarrow Tables (and ``done`` as a dict)."""
    _, pq = pyarrow_modules()
    d = Path(directory)
    out: dict[str, Any] = {name: pq.read_table(d / f"{name}.parquet") for name in ("peaks", "classes", "events", "scans")}
    out["done"] = json.loads((d / "done.json").read_text())
    return out


def format_row(row: dict[str, Any]) -> str:
    """One progress line for a finished capture."""
    if row["status"] == "failed":
        return f"{row['name']}: FAILED {row.get('error', '')}"
    if row["status"] == "skipped":
        return f"{row['name']}: already done with these settings ({row.get('scans') or 0} scans)"
    rate = row["scans"] / row["seconds"] if row.get("seconds") else 0.0
    extra = f", {row['dsp_errors']} DSP errors ({row['error']})" if row.get("dsp_errors") else ""
    return (f"{row['name']}: {row['scans']} scans, {row['peaks']} peaks, {row['classified']} classified, "
            f"{row['events']} events in {row['seconds']:.2f} s ({rate:.0f} scans/s){extra}")
