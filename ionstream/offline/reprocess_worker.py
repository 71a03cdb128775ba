"""Reprocessing one capture, in a Dask worker: decode, ScanWork, classifier, traces, Parquet.

Per-process state: the classifier (loaded once per worker process, :func:`classifier_for`) and
ScanWork (once per thread). :func:`process_capture` is the task the driver
(:mod:`ionstream.offline.reprocess`) submits, one per capture.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from inference.ood import coverage
from ionstream.offline.reprocess_settings import Settings
from ionstream.processing import PEAK_FIELDS

log = logging.getLogger("ionstream.offline.reprocess")

ROW_GROUP_SCANS = 2048
"""Scans buffered before a row group is written to each Parquet file (bounds memory)."""
PEAK_COLUMNS = tuple(name for name, _dtype in PEAK_FIELDS)
"""The peak columns of peaks.parquet after ``scan`` (ionstream.processing.PEAK_FIELDS)."""


# ---------------------------------------------------------------------------------------
# Per-process state in a worker: the classifier (once per process), ScanWork (per thread)
# ---------------------------------------------------------------------------------------

class Classifier:
    """One backend over one bundle, shared by the threads of a worker process (under a lock)."""

    def __init__(self, settings: Settings):
        from inference.backend import open_backend
        from inference.bundle import load_bundle

        from inference.ood import OodGate

        self.bundle = load_bundle(settings.model or None)
        self.labels = tuple(self.bundle.labels)
        self.gate = OodGate.from_bundle(self.bundle)   # "unknown" for inputs the model was not made for
        self.max_batch = settings.max_batch
        # Options as the daemon's micro-batcher opens it (Pipeline._backend_factory).
        self.backend = open_backend(self.bundle, settings.backend, precision=settings.precision,
                                    max_batch=settings.max_batch)
        self.lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.backend.predict(batch)

    def close(self) -> None:
        self.backend.close()


_classifier_lock = threading.Lock()
_classifier: tuple[Settings, Classifier] | None = None
_classifier_loads = 0
_local = threading.local()


def classifier_for(settings: Settings) -> Classifier:
    """This process's classifier for ``settings``, loaded on first use (one per process).

    A long-lived worker of an existing cluster keeps it between runs; a run with another
    model, backend, precision or batch size replaces it.
    """
    global _classifier, _classifier_loads
    key = dataclasses.replace(settings, smoothing="", min_snr=0.0, preset="", xic=())
    with _classifier_lock:
        if _classifier is not None and _classifier[0] == key:
            return _classifier[1]
        if _classifier is not None:
            _classifier[1].close()
            _classifier = None
        clf = Classifier(settings)
        _classifier = (key, clf)
        _classifier_loads += 1
        log.info("worker %d: classifier %s %s on %s", os.getpid(), clf.bundle.name, clf.bundle.version,
                 clf.backend.describe().get("backend"))
        return clf


def classifier_loads() -> int:
    """How many times this process loaded a classifier (the test checks: once per worker)."""
    return _classifier_loads


def _scan_work(settings: Settings, feature_spec):
    """This thread's ScanWork for ``settings`` (it owns reusable buffers: one per thread)."""
    from ionstream.processing import ScanWork

    cached = getattr(_local, "work", None)
    key = (settings.smoothing, settings.min_snr, settings.preset, settings.xic, feature_spec)
    if cached is None or cached[0] != key:
        work = ScanWork.from_config(settings, feature_spec=feature_spec)  # the daemon's construction
        cached = _local.work = (key, work)
    return cached[1]


# ---------------------------------------------------------------------------------------
# One capture (runs in a worker)
# ---------------------------------------------------------------------------------------

def pyarrow_modules():
    """(pyarrow, pyarrow.parquet), imported on first use (the [reprocess] extra)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


class _Tables:
    """Buffers rows per table and writes them as Parquet row groups (one file per table)."""

    def __init__(self, directory: Path, metadata: dict[str, Any], n_classes: int, n_xic: int):
        pa, _ = pyarrow_modules()
        self.dir = directory
        self._meta = {b"ionstream": json.dumps(metadata, sort_keys=True).encode()}
        self._writers: dict[str, Any] = {}
        self.schemas = {
            "peaks": pa.schema([("scan", pa.int64())] + [(name, pa.from_numpy_dtype(np.dtype(dtype)))
                                                          for name, dtype in PEAK_FIELDS]),
            "classes": pa.schema([("scan", pa.int64()), ("label", pa.string()), ("model_label", pa.string()),
                                  ("coverage", pa.float32()), ("ood_score", pa.float32()),
                                  ("unknown_reason", pa.string()), ("confidence", pa.float32()),
                                  ("probabilities", pa.list_(pa.float32(), max(1, n_classes)))]),
            "scans": pa.schema([("scan", pa.int64()), ("sequence", pa.int64()), ("t_device_ns", pa.int64()),
                                ("t_host_ns", pa.int64()), ("ms_level", pa.int16()), ("polarity", pa.string()),
                                ("tic", pa.float64()), ("xic", pa.list_(pa.float64())),
                                ("n_peaks", pa.int32())]),
            "events": pa.schema([("scan", pa.int64()), ("trace", pa.string()), ("kind", pa.string()),
                                 ("truncated", pa.bool_()), ("start_scan", pa.int64()), ("apex_scan", pa.int64()),
                                 ("end_scan", pa.int64()), ("start_time_s", pa.float64()),
                                 ("apex_time_s", pa.float64()), ("end_time_s", pa.float64()),
                                 ("height", pa.float64()), ("area", pa.float64()), ("baseline", pa.float64()),
                                 ("noise", pa.float64())]),
        }
        self._n_xic = n_xic

    def write(self, name: str, table) -> None:
        _, pq = pyarrow_modules()
        if table.num_rows == 0 and name in self._writers:
            return
        writer = self._writers.get(name)
        if writer is None:
            schema = table.schema.with_metadata(self._meta)
            writer = self._writers[name] = pq.ParquetWriter(self.dir / f"{name}.parquet", schema,
                                                            compression="zstd")
        writer.write_table(table.replace_schema_metadata(self._meta))

    def close(self) -> None:
        for name, schema in self.schemas.items():  # every table exists, even when empty
            if name not in self._writers:
                self.write(name, schema.empty_table())
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class _CaptureRun:
    """Processes one capture in scan order, writing tables every ROW_GROUP_SCANS scans."""

    def __init__(self, settings: Settings, tables: _Tables, classifier: Classifier | None, feature_spec):
        self.s = settings
        self.tables = tables
        self.clf = classifier
        self.work = _scan_work(settings, feature_spec)
        from ionstream.processing import TraceEvents

        self.traces = TraceEvents(settings.trace_names)  # the daemon's trace stage
        self.n_xic = len(settings.xic)
        bins = feature_spec.bins if feature_spec is not None else 0
        self._features = np.zeros((settings.max_batch, bins), np.float32) if classifier else None
        self._feature_scans: list[int] = []
        self._feature_covs: list[float] = []
        self._feature_spec = feature_spec
        self.counts = {"scans": 0, "status_frames": 0, "peaks": 0, "classified": 0, "events": 0, "dsp_errors": 0}
        self.first_error: str | None = None
        self._reset_buffers()
        self._events: list[dict[str, Any]] = []

    def _reset_buffers(self) -> None:
        self._peaks: dict[str, list[np.ndarray]] = {k: [] for k in ("scan",) + PEAK_COLUMNS}
        self._scans: dict[str, list] = {k: [] for k in ("scan", "sequence", "t_device_ns", "t_host_ns", "ms_level",
                                                          "polarity", "tic", "n_peaks")}
        self._xic: list[np.ndarray] = []
        self._cls_scan: list[int] = []
        self._cls_probs: list[np.ndarray] = []
        self._cls_verdicts: list = []
        self._buffered = 0

    def scan(self, header, samples: np.ndarray, mz: np.ndarray | None, host_time_ns: int) -> None:
        """One SCAN frame (views valid only during this call)."""
        try:
            scan = self.work.process(header, samples, mz)
        except Exception as exc:  # as the daemon's DSP stage: count, keep going
            self.counts["dsp_errors"] += 1
            if self.first_error is None:
                self.first_error = f"scan {header.scan_number}: {type(exc).__name__}: {exc}"
            return
        n = header.scan_number
        peaks = scan.peaks
        npk = len(peaks["mz"])
        self._peaks["scan"].append(np.full(npk, n, np.int64))
        for k in PEAK_COLUMNS:
            self._peaks[k].append(np.array(peaks[k], copy=True))
        sc = self._scans
        sc["scan"].append(n)
        sc["sequence"].append(header.sequence)
        sc["t_device_ns"].append(header.device_time_ns)
        sc["t_host_ns"].append(host_time_ns)
        sc["ms_level"].append(scan.ms_level)
        sc["polarity"].append(scan.polarity)
        sc["tic"].append(scan.tic)
        sc["n_peaks"].append(npk)
        self._xic.append(np.array(scan.xic, np.float64, copy=True))
        self.counts["scans"] += 1
        self.counts["peaks"] += npk
        # in scan order, as the daemon's sequencer emits them
        self._events.extend(self.traces.update(n, header.device_time_ns, scan.tic, scan.xic))
        if self.clf is not None and scan.features is not None:
            i = len(self._feature_scans)
            self._features[i] = scan.features
            self._feature_scans.append(n)
            self._feature_covs.append(coverage(*scan.mz_range, self._feature_spec))
            if i + 1 == len(self._features):
                self._classify()
        self._buffered += 1
        if self._buffered >= ROW_GROUP_SCANS:
            self.flush()

    def _classify(self) -> None:
        k = len(self._feature_scans)
        if not k:
            return
        probs = np.array(self.clf.predict(self._features[:k])[:k], np.float32, copy=True)
        top = [self.clf.labels[i] for i in probs.argmax(axis=1)]  # as MicroBatcher._complete
        # the daemon's out-of-distribution verdict (Pipeline._on_class), per scan
        self._cls_verdicts.extend(self.clf.gate.judge_batch(top, self._features[:k],
                                                            np.array(self._feature_covs, np.float64)))
        self._cls_scan.extend(self._feature_scans)
        self._cls_probs.append(probs)
        self._feature_scans, self._feature_covs = [], []

    def flush(self, final: bool = False) -> None:
        pa, _ = pyarrow_modules()
        if final:
            self._classify()
        t = self.tables
        p = self._peaks
        if p["scan"]:
            cols = {k: np.concatenate(v) for k, v in p.items()}
            t.write("peaks", pa.Table.from_pydict(cols, schema=t.schemas["peaks"]))
        if self._scans["scan"]:
            cols = dict(self._scans)
            k, n = self.n_xic, len(cols["scan"])
            values = np.concatenate(self._xic) if k else np.zeros(0)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)  # k values per scan (none without windows)
            cols["xic"] = pa.ListArray.from_arrays(offsets, pa.array(values, pa.float64()))
            t.write("scans", pa.Table.from_pydict(cols, schema=t.schemas["scans"]))
        if self._cls_probs:
            probs = np.concatenate(self._cls_probs)
            top = probs.argmax(axis=1)  # as MicroBatcher._complete
            labels, verdicts = self.clf.labels, self._cls_verdicts
            cols = {"scan": self._cls_scan, "label": [v.label for v in verdicts],
                    "model_label": [labels[k] for k in top], "coverage": [v.coverage for v in verdicts],
                    "ood_score": [v.ood_score for v in verdicts], "unknown_reason": [v.reason for v in verdicts],
                    "confidence": probs[np.arange(len(top)), top],
                    "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float32()),
                                                                       probs.shape[1])}
            t.write("classes", pa.Table.from_pydict(cols, schema=t.schemas["classes"]))
            self.counts["classified"] += len(top)
        if self._events:
            t.write("events", pa.Table.from_pylist(self._events, schema=t.schemas["events"]))
            self.counts["events"] += len(self._events)
            self._events = []
        self._reset_buffers()


def process_capture(task: dict[str, Any]) -> dict[str, Any]:
    """Reprocess one capture into ``task["out"]`` (a directory); return its summary row.

    Runs in a Dask worker (or in-process). Never raises for a bad capture: the row's
    ``status`` is ``done`` or ``failed`` (with ``error``).
    """
    from instrument.capture import CaptureError, CaptureReader, iter_frames
    from instrument.frames import FrameType

    t0 = time.perf_counter()
    path, out = Path(task["path"]), Path(task["out"])
    settings = Settings.from_dict(task["settings"])
    row = {"capture": str(path), "name": out.name, "status": "failed", "error": "", "key": task["key"],
           "settings_sha256": task["settings_sha256"], "worker": f"{socket.gethostname()}:{os.getpid()}",
           "scans": 0, "status_frames": 0, "peaks": 0, "classified": 0, "events": 0, "dsp_errors": 0,
           "crc_errors": 0, "sequence_gaps": 0, "torn_tail_bytes": 0, "corrupt_bytes": 0, "seconds": 0.0}
    tmp = out.parent / f".{out.name}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
    try:
        classifier = classifier_for(settings) if settings.backend != "none" else None
        spec = classifier.bundle.feature_spec if classifier else None
        with CaptureReader(path) as reader:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            meta = {"capture": str(path), "capture_identity": task["identity"], "settings": task["resolved"],
                    "settings_sha256": task["settings_sha256"], "trace_names": settings.trace_names,
                    "labels": list(classifier.labels) if classifier else []}
            tables = _Tables(tmp, meta, len(classifier.labels) if classifier else 0, len(settings.xic))
            run = _CaptureRun(settings, tables, classifier, spec)
            # a record is one frame (the capture format's rule): the frames `capture info` counts
            frames = iter_frames(reader, per_record=True)
            for host_time_ns, f in frames:
                h = f.header
                if h.frame_type == FrameType.SCAN:
                    run.scan(h, f.samples(), f.mz_axis(), host_time_ns)
                else:
                    run.counts["status_frames"] += 1
            run.flush(final=True)
            tables.close()
            stats = frames.decoder.stats
            row.update(run.counts, crc_errors=stats.header_crc_errors + stats.payload_crc_errors,
                       sequence_gaps=stats.sequence_gaps, torn_tail_bytes=reader.torn_tail_bytes,
                       corrupt_bytes=reader.corrupt_bytes)
            if run.first_error:
                row["error"] = run.first_error
        row["status"] = "done"
        row["seconds"] = time.perf_counter() - t0
        done = {**row, "identity": task["identity"], "settings": task["resolved"],
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / "done.json").write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)  # results of other settings or another file of this name
        os.replace(tmp, out)
    except (CaptureError, OSError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug or a bad model: report it with where, keep the run going
        row["error"] = f"{type(exc).__name__}: {exc} ({_where(exc)})"
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    row["seconds"] = time.perf_counter() - t0
    return row


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
