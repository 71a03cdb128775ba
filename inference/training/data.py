"""Labelled spectra -> feature vectors, with the daemon's own feature code (dsp.features).

:func:`load_dataset` reads every file a :class:`~.labels.LabelTable` names once, in scan order,
gives each spectrum the label of the one row that selects it, and turns it into the feature
vector the daemon would compute for it (:class:`dsp.features.FeatureExtractor` on the frame's
m/z axis: captures' TOF calibration, or an explicit axis). Captures are read here (instrument/);
mzML files through a reader the caller passes (ionstream.offline.spectra.read_mzml_spectra: the import
contract keeps inference/ from importing the application).

Every problem is a :class:`~inference.training.TrainingError` naming the file and, where there
is one, the labels row: a scan number or range that selects nothing, two rows selecting the same
scan, centroided spectra, spectra that do not cover the feature window, a damaged capture.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dsp.features import FeatureExtractor, FeatureSpec
from inference.ood import coverage
from inference.training import TrainingError
from inference.training.labels import LabelRow, LabelTable

log = logging.getLogger("ionstream.train")

MIN_TRAIN_COVERAGE = 0.999
"""Fraction of the feature window (m/z) a training spectrum must cover."""


class SpectrumLike(Protocol):
    """What a reader yields per spectrum (ionstream.offline.spectra.Spectrum has these)."""

    scan: int                 # instrument scan number
    time_s: float             # s from the run start
    mz: np.ndarray            # float64 m/z, ascending
    intensity: np.ndarray     # counts
    centroided: bool


MzmlReader = Callable[[Path], Iterator[SpectrumLike]]


@dataclass(slots=True)
class _Spectrum:
    scan: int
    time_s: float
    mz: np.ndarray
    intensity: np.ndarray
    centroided: bool = False


@dataclass
class Dataset:
    """Feature vectors and where each came from (one row per labelled spectrum).

    ``X`` (n, bins) float32 features; ``y`` (n,) class index into ``labels``; ``run`` (n,) index
    into ``runs`` (the hold-out split's groups); ``file`` (n,) index into ``files``; ``scan`` (n,)
    scan numbers; ``coverage`` (n,) fraction of the feature window each spectrum covers (0..1).
    """

    X: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    spec: FeatureSpec
    run: np.ndarray
    runs: list[str]
    file: np.ndarray
    files: list[str]
    scan: np.ndarray
    coverage: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "Dataset":
        """The rows where ``mask`` is true (same labels, runs and files lists)."""
        return Dataset(self.X[mask], self.y[mask], self.labels, self.spec, self.run[mask], self.runs,
                       self.file[mask], self.files, self.scan[mask], self.coverage[mask], dict(self.info))

    def class_counts(self) -> dict[str, int]:
        """Spectra per class (every class, zeros included)."""
        counts = np.bincount(self.y, minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts)}


def is_capture(path: Path) -> bool:
    """True when ``path`` starts with the capture magic (else it is taken for mzML)."""
    from instrument.capture import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_capture(path: Path) -> Iterator[_Spectrum]:
    """SCAN frames of a capture as spectra on the pipeline's m/z axis.

    Raises TrainingError when the capture is damaged (corrupt bytes, CRC errors, records that do
    not hold one whole frame): labelled data with holes is better repaired or left out than
    silently half-used. A torn tail (the last record cut short by a crash) is only logged.
    """
    from dsp.calibration import AxisCache
    from instrument.capture import CaptureError, CaptureReader
    from instrument.frames import FrameDecoder, FrameType

    axes = AxisCache()
    try:
        with CaptureReader(path) as reader:
            source = reader.description.get("source") if isinstance(reader.description, dict) else None
            origin = source.get("time_origin_ns") if isinstance(source, dict) else None
            decoder = FrameDecoder()
            invalid = 0
            for _t, record in reader:
                decoded = list(decoder.feed(record))
                decoder.reset()  # a record is one frame: never join bytes across records
                if len(decoded) != 1:
                    invalid += 1
                for f in decoded:
                    h = f.header
                    if h.frame_type != FrameType.SCAN:
                        continue
                    if not isinstance(origin, int):
                        origin = h.device_time_ns
                    mz = f.mz_axis()
                    if mz is None:
                        mz = axes.get(h.calibration, h.n_samples)
                    yield _Spectrum(h.scan_number, (h.device_time_ns - origin) / 1e9, mz, f.samples())
            crc = decoder.stats.header_crc_errors + decoder.stats.payload_crc_errors
            if reader.corrupt_bytes or crc or invalid:
                raise TrainingError(
                    f"{path}: damaged capture ({reader.corrupt_bytes} corrupt bytes, {crc} CRC errors, {invalid} "
                    f"records without one whole frame); check it with `ionstream capture info {path}` and "
                    f"re-record it or remove it from the labels")
            if reader.torn_tail_bytes:
                log.warning("%s: torn tail (%d bytes of an unfinished last record ignored)", path,
                            reader.torn_tail_bytes)
    except CaptureError as exc:
        raise TrainingError(f"{path}: not a readable capture ({exc})") from None
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read ({exc})") from None


def spectra_of(path: Path, mzml_reader: MzmlReader | None) -> Iterator[SpectrumLike]:
    """Spectra of a capture (read here) or of an mzML file (through ``mzml_reader``)."""
    try:
        capture = is_capture(path)
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read ({exc})") from None
    if capture:
        return read_capture(path)
    if mzml_reader is None:
        raise TrainingError(f"{path}: not a capture, and no mzML reader was given (use the `ionstream` "
                            f"commands, which read mzML with pyteomics)")
    return _mzml(path, mzml_reader)


def _mzml(path: Path, reader: MzmlReader) -> Iterator[SpectrumLike]:
    try:
        yield from reader(path)
    except TrainingError:
        raise
    except Exception as exc:  # pyteomics/lxml raise many types for a broken file
        raise TrainingError(f"{path}: not a readable capture or mzML file ({type(exc).__name__}: {exc})") from None


def common_window(table: LabelTable, mzml_reader: MzmlReader | None = None) -> tuple[float, float]:
    """The m/z range every labelled file covers (from each file's first spectrum), rounded inward
    to 0.1 m/z: the default feature window for training."""
    lo, hi = 0.0, float("inf")
    for path in table.files:
        it = spectra_of(path, mzml_reader)
        s = next(iter(it), None)
        close = getattr(it, "close", None)
        if close:
            close()
        if s is None or len(s.mz) < 2:
            raise TrainingError(f"{path}: no spectra")
        lo, hi = max(lo, float(s.mz[0])), min(hi, float(s.mz[-1]))
    lo, hi = np.ceil(lo * 10) / 10, np.floor(hi * 10) / 10
    if not lo < hi:
        raise TrainingError(f"{table.origin}: the labelled files share no m/z range (first spectra end at "
                            f"{hi:g} and start at {lo:g}); label files of one instrument method together")
    return float(lo), float(hi)


def _row_for(rows: list[LabelRow], scan: int, time_s: float, path: Path) -> int:
    """Index (into ``rows``) of the one row selecting this scan, -1 for none; TrainingError for two."""
    hit = -1
    for i, r in enumerate(rows):
        if r.selector.matches(scan, time_s):
            if hit >= 0:
                a, b = rows[hit], r
                raise TrainingError(
                    f"{b.where}: labels overlap: scan {scan} of {path} (t = {time_s / 60:.3f} min) is selected by "
                    f"this row ({b.selector.text} -> {b.label}) and by {a.where} ({a.selector.text} -> {a.label}); "
                    f"each scan may have one label")
            hit = i
    return hit


def _nothing_selected(row: LabelRow, path: Path, scans: list[int], times: list[float]) -> TrainingError:
    if not scans:
        return TrainingError(f"{row.where}: {path} holds no spectra")
    if row.selector.kind == "rt":
        return TrainingError(f"{row.where}: retention time {row.selector.text} selects no scan of {path}, whose "
                             f"scans span {min(times) / 60:.3f} .. {max(times) / 60:.3f} min")
    return TrainingError(f"{row.where}: scan {row.selector.text} not found in {path}, which has scans "
                         f"{min(scans)} .. {max(scans)} ({len(scans)} spectra)")


@dataclass
class _FileRows:
    """What one file contributes: features (blocks), and per spectrum its row index, scan, coverage."""

    blocks: list[np.ndarray] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    scan: list[int] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)


def _check_spectrum(row: LabelRow, s: SpectrumLike, path: Path, spec: FeatureSpec,
                    min_coverage: float | None) -> float:
    """The spectrum's coverage of the window; TrainingError if it is centroided or covers too little."""
    if s.centroided:
        raise TrainingError(f"{row.where}: scan {s.scan} of {path} is centroided; the classifier learns "
                            f"profile spectra (export or acquire profile data)")
    cov = coverage(float(s.mz[0]), float(s.mz[-1]), spec) if len(s.mz) >= 2 else 0.0
    if min_coverage is not None and cov < min_coverage:
        lo, hi = (float(s.mz[0]), float(s.mz[-1])) if len(s.mz) else (0.0, 0.0)
        raise TrainingError(
            f"{row.where}: scan {s.scan} of {path} covers m/z {lo:.2f} .. {hi:.2f}, only {100 * cov:.1f} % of the "
            f"feature window {spec.mz_min:g} .. {spec.mz_max:g}; choose a window inside every labelled spectrum "
            f"(--mz-min/--mz-max) or leave those scans out")
    return cov


def _read_file(path: Path, rows: list[LabelRow], extract: FeatureExtractor, mzml_reader: MzmlReader | None,
               min_coverage: float | None, block_rows: int = 256) -> _FileRows:
    """Features of the spectra of ``path`` that one of ``rows`` selects; every row must select some."""
    spec = extract.spec
    got = _FileRows()
    used = [0] * len(rows)
    scans: list[int] = []
    times: list[float] = []
    block, k = np.empty((block_rows, spec.bins), np.float32), 0
    for s in spectra_of(path, mzml_reader):
        scans.append(int(s.scan))
        times.append(float(s.time_s))
        ri = _row_for(rows, int(s.scan), float(s.time_s), path)
        if ri < 0:
            continue
        cov = _check_spectrum(rows[ri], s, path, spec, min_coverage)
        if k == block_rows:
            got.blocks.append(block)
            block, k = np.empty((block_rows, spec.bins), np.float32), 0
        if len(s.mz) >= 2:
            extract(np.asarray(s.mz, np.float64), s.intensity, out=block[k])
        else:
            block[k] = 0.0
        k += 1
        used[ri] += 1
        got.row.append(ri)
        got.scan.append(int(s.scan))
        got.coverage.append(cov)
    got.blocks.append(block[:k])
    for r, n in zip(rows, used):
        if n == 0:
            raise _nothing_selected(r, path, scans, times)
    return got


def load_dataset(table: LabelTable, spec: FeatureSpec, *, labels: tuple[str, ...] | None = None,
                 mzml_reader: MzmlReader | None = None, min_coverage: float | None = MIN_TRAIN_COVERAGE,
                 progress: bool = True) -> Dataset:
    """Feature vectors of every labelled spectrum of ``table`` for ``spec``.

    ``labels``: the class order (default the table's; ``evaluate`` passes the bundle's, and a
    table label the bundle lacks is an error). ``min_coverage``: a spectrum covering less of
    the feature window is an error naming it (``None``: no check, its coverage is recorded).
    """
    from tqdm import tqdm

    labels = tuple(labels) if labels is not None else table.labels
    unknown = sorted(set(table.labels) - set(labels))
    if unknown:
        raise TrainingError(f"{table.origin}: label(s) {', '.join(unknown)} are not classes of this model "
                            f"({', '.join(labels)})")
    index = {lab: i for i, lab in enumerate(labels)}
    runs = list(dict.fromkeys(r.run for r in table.rows))
    files = table.files
    extract = FeatureExtractor(spec)
    blocks: list[np.ndarray] = []
    cols: dict[str, list] = {k: [] for k in ("y", "run", "file", "scan", "coverage")}
    with tqdm(total=len(files), desc="reading", unit="file", disable=not progress, file=sys.stderr) as bar:
        for fi, path in enumerate(files):
            rows = [r for r in table.rows if r.path == path]
            got = _read_file(path, rows, extract, mzml_reader, min_coverage)
            blocks.extend(got.blocks)
            cols["y"] += [index[rows[i].label] for i in got.row]
            cols["run"] += [runs.index(rows[i].run) for i in got.row]
            cols["file"] += [fi] * len(got.row)
            cols["scan"] += got.scan
            cols["coverage"] += got.coverage
            bar.update(1)
            bar.set_postfix(spectra=len(cols["y"]))
    X = np.concatenate(blocks) if blocks else np.zeros((0, spec.bins), np.float32)
    return Dataset(X, np.asarray(cols["y"], np.int64), labels, spec, np.asarray(cols["run"], np.int64), runs,
                   np.asarray(cols["file"], np.int64), [str(f) for f in files], np.asarray(cols["scan"], np.int64),
                   np.asarray(cols["coverage"], np.float32))
