"""Reprocess archived captures on Dask: the live pipeline's per-scan code, Parquet out.

::

    from ionstream.offline.reprocess import Settings, reprocess

    settings = Settings.from_config(config)          # DSP, XIC windows, model, backend
    report = reprocess(["captures/"], "out/", settings, scheduler="local", workers=2)
    report.failed                                     # captures that could not be read

One Dask task per capture. A capture is decoded with the live decoder
(:class:`instrument.frames.FrameDecoder` over the records of
:class:`instrument.capture.CaptureReader`), each scan goes through
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

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ionstream.offline.reprocess")

OUTPUT_FORMAT = 1
"""Version of the output layout; part of the settings hash (a new layout redoes everything)."""
ID_BYTES = 64 * 1024
"""Bytes hashed at each end of a capture for its identity."""
ROW_GROUP_SCANS = 2048
"""Scans buffered before a row group is written to each Parquet file (bounds memory)."""
CAPTURE_SUFFIXES = (".isc",)
"""Files taken from a directory argument (recursively)."""
PEAK_FIELDS = ("mz", "intensity", "area", "fwhm", "snr")


# ---------------------------------------------------------------------------------------
# Settings and identity
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything that decides the results. Plain data: it travels to the workers.

    ``backend`` is ``onnxruntime``, ``tensorrt`` or ``none`` (no classes); a config's
    ``auto`` becomes ``onnxruntime`` here (Dask workers are CPU processes unless told
    otherwise, and ONNX Runtime on the CPU is the reference the live results are checked
    against). ``model`` is a bundle directory or "" for the shipped default.
    """

    smoothing: str = "savgol"
    min_snr: float = 3.0
    preset: str = ""
    xic: tuple[tuple[float, float], ...] = ()
    backend: str = "onnxruntime"
    model: str = ""
    precision: str = "fp32"
    max_batch: int = 32

    @classmethod
    def from_config(cls, config) -> Settings:
        """The settings the daemon would use with ``config`` (an ionstream.config.Config)."""
        dsp, inf = config.dsp, config.inference
        backend = "onnxruntime" if inf.backend == "auto" else inf.backend
        return cls(smoothing=dsp.smoothing, min_snr=float(dsp.min_snr), preset=dsp.preset,
                   xic=tuple((float(lo), float(hi)) for lo, hi in dsp.xic), backend=backend,
                   model=str(inf.model or ""), precision=inf.precision, max_batch=int(inf.max_batch))

    # The same construction as ionstream.daemon.pipeline.Pipeline._make_work.
    @property
    def dsp_params(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "min_snr": self.min_snr, "preset": self.preset}

    @property
    def trace_names(self) -> list[str]:
        """Names of the trace values, as the daemon's ``trace`` topic gives them."""
        return ["tic"] + [f"xic:{lo:g}-{hi:g}" for lo, hi in self.xic]

    def resolved(self) -> dict[str, Any]:
        """The settings as hashed and recorded: the model resolved to its file's SHA-256."""
        doc: dict[str, Any] = {"output_format": OUTPUT_FORMAT, "dsp": self.dsp_params,
                               "xic": [list(w) for w in self.xic], "backend": self.backend}
        if self.backend != "none":
            from inference.bundle import load_bundle

            bundle = load_bundle(self.model or None, check_graphs=False)
            bundle.onnx_for(self.precision)  # BundleError when the bundle has no such graph
            doc["model"] = {"name": bundle.name, "version": bundle.version, "path": str(bundle.path),
                            "precision": self.precision, "sha256": bundle.sha256[self.precision],
                            "labels": list(bundle.labels)}
            doc["max_batch"] = self.max_batch
        return doc

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["xic"] = [list(w) for w in self.xic]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        d = dict(d)
        d["xic"] = tuple(tuple(w) for w in d.get("xic", ()))
        return cls(**d)


def settings_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 (hex) of the resolved settings (canonical JSON; the model path is not part of it)."""
    doc = json.loads(json.dumps(resolved))
    doc.get("model", {}).pop("path", None)  # the same model file elsewhere gives the same results
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def capture_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Size and SHA-256 of the first and last ID_BYTES of a file: cheap, and it survives a copy.

    A capture is append-only, so a file that grew or was rewritten changes its size or its
    ends. OSError if the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256(f.read(ID_BYTES))
        if size > ID_BYTES:
            f.seek(max(ID_BYTES, size - ID_BYTES))
            h.update(f.read(ID_BYTES))
    return {"size": size, "ends_sha256": h.hexdigest()}


def capture_key(settings_sha: str, identity: dict[str, Any]) -> str:
    """What a finished capture's ``done.json`` must hold for a rerun to skip it."""
    doc = json.dumps({"settings": settings_sha, "capture": identity}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def find_captures(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the ``*.isc`` files under each directory given (sorted, recursive).

    A path that does not exist is kept: it is reported as failed, like any unreadable capture.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        found = sorted(q for q in p.rglob("*") if q.suffix in CAPTURE_SUFFIXES and q.is_file()) if p.is_dir() else [p]
        for q in found:
            r = q.resolve()
            if r not in seen:
                seen.add(r)
                out.append(q)
    return out


def output_names(captures: list[Path]) -> list[str]:
    """Directory name per capture: its stem, or stem-<8 hex of its absolute path> where stems collide."""
    stems = [c.stem for c in captures]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha256(str(c.resolve()).encode()).hexdigest()[:8]}"
            for s, c in zip(stems, captures)]


# ---------------------------------------------------------------------------------------
# Per-process state in a worker: the classifier (once per process), ScanWork (per thread)
# ---------------------------------------------------------------------------------------

class Classifier:
    """One backend over one bundle, shared by the threads of a worker process (under a lock)."""

    def __init__(self, settings: Settings):
        from inference.backend import open_backend
        from inference.bundle import load_bundle

        self.bundle = load_bundle(settings.model or None)
        self.labels = tuple(self.bundle.labels)
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
        work = ScanWork(dsp_params=settings.dsp_params, xic_windows=[tuple(w) for w in settings.xic],
                        feature_spec=feature_spec)
        cached = _local.work = (key, work)
    return cached[1]


# ---------------------------------------------------------------------------------------
# One capture (runs in a worker)
# ---------------------------------------------------------------------------------------

def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


class _Tables:
    """Buffers rows per table and writes them as Parquet row groups (one file per table)."""

    def __init__(self, directory: Path, metadata: dict[str, Any], n_classes: int, n_xic: int):
        pa, _ = _pa()
        self.dir = directory
        self._meta = {b"ionstream": json.dumps(metadata, sort_keys=True).encode()}
        self._writers: dict[str, Any] = {}
        self.schemas = {
            "peaks": pa.schema([("scan", pa.int64()), ("mz", pa.float64()), ("intensity", pa.float32()),
                                ("area", pa.float32()), ("fwhm", pa.float32()), ("snr", pa.float32())]),
            "classes": pa.schema([("scan", pa.int64()), ("label", pa.string()), ("confidence", pa.float32()),
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
        _, pq = _pa()
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
        self.counts = {"scans": 0, "status_frames": 0, "peaks": 0, "classified": 0, "events": 0, "dsp_errors": 0}
        self.first_error: str | None = None
        self._reset_buffers()
        self._events: list[dict[str, Any]] = []

    def _reset_buffers(self) -> None:
        self._peaks: dict[str, list[np.ndarray]] = {k: [] for k in ("scan",) + PEAK_FIELDS}
        self._scans: dict[str, list] = {k: [] for k in ("scan", "sequence", "t_device_ns", "t_host_ns", "ms_level",
                                                          "polarity", "tic", "n_peaks")}
        self._xic: list[np.ndarray] = []
        self._cls_scan: list[int] = []
        self._cls_probs: list[np.ndarray] = []
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
        for k in PEAK_FIELDS:
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
            if i + 1 == len(self._features):
                self._classify()
        self._buffered += 1
        if self._buffered >= ROW_GROUP_SCANS:
            self.flush()

    def _classify(self) -> None:
        k = len(self._feature_scans)
        if not k:
            return
        probs = self.clf.predict(self._features[:k])
        self._cls_scan.extend(self._feature_scans)
        self._cls_probs.append(np.array(probs[:k], np.float32, copy=True))
        self._feature_scans = []

    def flush(self, final: bool = False) -> None:
        pa, _ = _pa()
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
            labels = self.clf.labels
            cols = {"scan": self._cls_scan, "label": [labels[k] for k in top],
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
    from instrument.capture import CaptureError, CaptureReader
    from instrument.frames import FrameDecoder, FrameType

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
            decoder = FrameDecoder()  # one decoder over the whole stream, as the acquisition thread
            for host_time_ns, frame in reader:
                for f in decoder.feed(frame):
                    h = f.header
                    if h.frame_type == FrameType.SCAN:
                        run.scan(h, f.samples(), f.mz_axis(), host_time_ns)
                    else:
                        run.counts["status_frames"] += 1
            run.flush(final=True)
            tables.close()
            stats = decoder.stats
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
    pa, pq = _pa()
    types = {"capture": pa.string(), "name": pa.string(), "status": pa.string(), "error": pa.string(),
             "seconds": pa.float64(), "worker": pa.string(), "settings_sha256": pa.string(), "key": pa.string()}
    schema = pa.schema([(c, types.get(c, pa.int64())) for c in SUMMARY_COLUMNS])
    cols = {c: [r.get(c) for r in rows] for c in SUMMARY_COLUMNS}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp)
    os.replace(tmp, path)


def read_results(directory: str | os.PathLike) -> dict[str, Any]:
    """The tables of one capture's output directory as pyarrow Tables (and ``done`` as a dict)."""
    _, pq = _pa()
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
