"""mzML (HUPO-PSI mzML 1.1) in and out: export captures, import runs, pick peaks offline.

Three operations, each a function and a CLI command:

* :func:`export_capture` (``ionstream export CAPTURE -o run.mzML [--centroid]``): every SCAN
  frame of a capture becomes one ``<spectrum>``: profile (the frame's samples on its m/z axis)
  or centroided (the live pipeline's peaks). Written with psims (indexed mzML, zlib arrays).
* :func:`import_mzml` (``ionstream import run.mzML -o run.isc``): every profile spectrum of an
  mzML run becomes one SCAN frame with an explicit float64 m/z axis (``AxisKind.EXPLICIT``),
  so ``replay://run.isc`` plays real instrument data through the live pipeline. Read with
  pyteomics.
* :func:`pick_peaks` (``ionstream peaks INPUT -o peaks.csv|peaks.mzML``): offline peak picking
  of an mzML run or a capture with :class:`ionstream.processing.ScanWork`, the per-scan code
  of the live pipeline, so offline and live peaks are the same numbers.

docs/mzml.md describes the mapping field by field (times, scan numbers, MS level, polarity,
metadata) and how the frame format carries an imported spectrum's own m/z axis.

psims, pyteomics and lxml are the ``[mzml]`` extra; they are imported only when used.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instrument.frames import (
    AxisKind,
    Calibration,
    FrameDecoder,
    FrameHeader,
    FrameType,
    Polarity,
    encode_scan,
    expected_payload_size,
    sample_type_of,
)

log = logging.getLogger("ionstream.offline.mzml")

__all__ = [
    "Spectrum", "PeakPicker", "ExportSummary", "ImportSummary", "PeaksSummary", "MzMLError",
    "offline_vocabularies", "read_spectra", "read_capture_spectra", "read_mzml_spectra", "count_spectra",
    "export_capture", "import_mzml", "pick_peaks", "dsp_params_from_config", "is_capture",
    "CSV_COLUMNS",
]

Progress = Callable[[int], None]
"""Called with the number of spectra just finished (a tqdm bar's ``update``)."""

# userParams ionstream writes on each exported spectrum's <scan>; read back by import so that
# capture -> mzML -> capture keeps the instrument's own scan numbers and clock.
# The device time is split in whole seconds and the ns within the second: each part is
# exact as a double, so it survives readers that parse every userParam as a float (ns since
# an epoch exceed 2**53).
UP_DEVICE_TIME_S = "ionstream device time s"     # device_time_ns // 10**9
UP_DEVICE_TIME_NS = "ionstream device time ns"   # device_time_ns % 10**9
UP_SCAN = "ionstream scan number"                # the frame's scan_number
UP_SEQUENCE = "ionstream frame sequence"         # the frame's sequence number

CSV_COLUMNS = ("index", "scan", "native_id", "ms_level", "polarity", "rt_min",
               "mz", "intensity", "area", "fwhm", "snr")
"""Columns of ``ionstream peaks -o peaks.csv``: one row per peak (units in docs/mzml.md)."""

_NATIVE_SCAN = re.compile(r"\bscan=(\d+)")


class MzMLError(ValueError):
    """An mzML file or a capture cannot be converted; the message names the file and why."""


def _require(module: str):
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"mzML support needs {module.split('.')[0]}: pip install 'ionstream[mzml]' "
                          f"({exc})") from None
    offline_vocabularies()
    return mod


def offline_vocabularies() -> None:
    """Make psims (and pyteomics, which loads the CV through psims) use their packaged controlled
    vocabularies instead of downloading the latest from the internet on first use.

    ionstream runs on instrument PCs and CI machines without internet access: a download
    attempt would at best fail (after a DNS lookup), at worst wait for a network time-out.
    """
    try:
        from psims.controlled_vocabulary.controlled_vocabulary import obo_cache
    except ImportError:
        return
    obo_cache.use_remote = False


# ---------------------------------------------------------------------------------------
# One spectrum, whatever it came from
# ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Spectrum:
    """One scan read from a capture or an mzML file.

    ``mz`` is float64 m/z (ascending for profile data); ``intensity`` is in counts, in the
    dtype it was stored in (frame sample dtype, or the mzML array's). Arrays may be views:
    copy what you keep past the iteration step.
    """

    index: int                   # 0-based position among the spectra read
    scan: int                    # instrument scan number
    ms_level: int
    polarity: Polarity
    time_s: float                # scan start time (s) from the start of the run
    mz: np.ndarray
    intensity: np.ndarray
    centroided: bool = False
    device_time_ns: int = 0
    native_id: str = ""
    host_time_ns: int | None = None
    sequence: int | None = None
    header: FrameHeader | None = None   # the frame's header when read from a capture
    type_source: str = "declared"       # where ``centroided`` came from: declared, estimated or given

    @property
    def rt_min(self) -> float:
        return self.time_s / 60.0

    def frame_header(self) -> FrameHeader:
        """The frame header this spectrum has (or would have as an imported frame)."""
        if self.header is not None:
            return self.header
        stype = sample_type_of(self.intensity.dtype)
        n = len(self.intensity)
        return FrameHeader(FrameType.SCAN, self.sequence or self.index, self.scan, self.device_time_ns,
                           self.ms_level, self.polarity, stype, AxisKind.EXPLICIT, n,
                           expected_payload_size(stype, AxisKind.EXPLICIT, n), Calibration())

SPECTRUM_TYPES = ("auto", "profile", "centroid")


def estimate_centroided(mz: np.ndarray) -> bool:
    """Whether a spectrum whose file does not say is centroided, from its point spacing.

    Profile data sample a smooth m/z grid: consecutive spacings are nearly equal (within 5 %) for
    most pairs, broken only where a zero run was dropped (87-100 % of pairs in the Orbitrap, FT-ICR
    and TOF profiles of tests/data). Centroids sit where the peaks are, so consecutive spacings vary
    (5-11 % of pairs in the centroided scans of tests/data; at most 72 % in short spectra of
    isotope series). Profile when that share is >= 0.75, and >= 0.9 for spectra of fewer than 64
    points; fewer than 8 points count as centroided. (OpenMS's PeakTypeEstimator also decides
    from the spacing of the points.)
    """
    mz = np.asarray(mz, dtype=np.float64)
    if mz.size < 8:
        return True
    d = np.diff(mz)
    a, b = d[1:], d[:-1]
    share = float(np.mean(np.abs(a - b) <= 0.05 * np.maximum(np.abs(a), np.abs(b))))
    return share < (0.75 if mz.size >= 64 else 0.9)



def is_capture(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with the capture magic (else it is taken for mzML)."""
    from instrument.capture import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_spectra(path: str | os.PathLike, **kwargs: Any) -> Iterator[Spectrum]:
    """Spectra of a capture file or an mzML file (chosen by the file's first bytes)."""
    if is_capture(path):
        return read_capture_spectra(path, **kwargs)
    return read_mzml_spectra(path, **kwargs)


def count_spectra(path: str | os.PathLike) -> int:
    """Number of spectra :func:`read_spectra` will yield (capture: SCAN frames; mzML: spectra)."""
    if is_capture(path):
        return _capture_prepass(path).scans
    pyteomics_mzml = _require("pyteomics.mzml")
    with pyteomics_mzml.MzML(str(path), use_index=True) as reader:
        try:
            return len(reader)
        except Exception:  # no usable index: count by reading
            return sum(1 for _ in reader)


# ---------------------------------------------------------------------------------------
# Captures
# ---------------------------------------------------------------------------------------

@dataclass
class _Prepass:
    scans: int = 0
    status_frames: int = 0
    ms_levels: set = field(default_factory=set)
    polarities: set = field(default_factory=set)
    axis_kinds: set = field(default_factory=set)
    duplicate_scans: bool = False
    first_device_time_ns: int | None = None


def _capture_prepass(path) -> _Prepass:
    from instrument.capture import CaptureReader

    p = _Prepass()
    seen: set[int] = set()
    with CaptureReader(path) as reader:
        decoder = FrameDecoder()
        for _t, frame in reader:
            for f in decoder.feed(frame):
                h = f.header
                if h.frame_type != FrameType.SCAN:
                    p.status_frames += 1
                    continue
                p.scans += 1
                p.ms_levels.add(h.ms_level)
                p.polarities.add(h.polarity)
                p.axis_kinds.add(h.axis_kind)
                if h.scan_number in seen:
                    p.duplicate_scans = True
                seen.add(h.scan_number)
                if p.first_device_time_ns is None:
                    p.first_device_time_ns = h.device_time_ns
            decoder.reset()
    return p


def _time_origin_ns(description: dict[str, Any], first_device_time_ns: int | None) -> int:
    """Device time (ns) that is t = 0 of the run: an imported capture's own, else the first scan's."""
    source = description.get("source") if isinstance(description, dict) else None
    if isinstance(source, dict) and isinstance(source.get("time_origin_ns"), int):
        return source["time_origin_ns"]
    return first_device_time_ns or 0


def read_capture_spectra(path: str | os.PathLike, *, stats: dict | None = None) -> Iterator[Spectrum]:
    """Every SCAN frame of a capture as a :class:`Spectrum` (STATUS frames are skipped).

    TOF frames get the m/z axis of their calibration (the pipeline's axis); explicit-axis
    frames their own. ``time_s`` counts from the capture's time origin (the first scan, or
    the imported run's start). Damaged records are skipped as ``capture info`` counts them;
    ``stats`` (a dict), if given, receives ``status_frames``, ``invalid_records`` and the
    reader's ``torn_tail_bytes`` / ``corrupt_bytes``.
    """
    from instrument.capture import CaptureReader
    from dsp.calibration import AxisCache

    axes = AxisCache()
    with CaptureReader(path) as reader:
        origin = None
        decoder = FrameDecoder()
        index = status = invalid = 0
        for host_time_ns, frame in reader:
            whole = 0
            for f in decoder.feed(frame):
                whole += 1
                h = f.header
                if h.frame_type != FrameType.SCAN:
                    status += 1
                    continue
                if origin is None:
                    origin = _time_origin_ns(reader.description, h.device_time_ns)
                mz = f.mz_axis()
                if mz is None:
                    mz = axes.get(h.calibration, h.n_samples)
                yield Spectrum(index, h.scan_number, h.ms_level, h.polarity,
                               (h.device_time_ns - origin) / 1e9, mz, f.samples(),
                               centroided=False, device_time_ns=h.device_time_ns,
                               native_id=f"scan={h.scan_number}", host_time_ns=host_time_ns,
                               sequence=h.sequence, header=h)
                index += 1
            if whole != 1:
                invalid += 1
            decoder.reset()  # a record is one frame: never join bytes across records
        if stats is not None:
            stats.update(status_frames=status, invalid_records=invalid,
                         torn_tail_bytes=reader.torn_tail_bytes, corrupt_bytes=reader.corrupt_bytes,
                         crc_errors=decoder.stats.header_crc_errors + decoder.stats.payload_crc_errors)


# ---------------------------------------------------------------------------------------
# mzML reading (pyteomics) and header metadata (lxml, stops at <run>)
# ---------------------------------------------------------------------------------------

def _seconds(value) -> float:
    """A pyteomics scan start time (unitfloat) in seconds; mzML's default unit is minutes."""
    unit = getattr(getattr(value, "unit_info", None), "lower", lambda: None)() or "minute"
    v = float(value)
    if unit.startswith("s"):
        return v
    if unit.startswith("ms") or unit.startswith("milli"):
        return v / 1000.0
    if unit.startswith("h"):
        return v * 3600.0
    return v * 60.0


def _user_param(scan: dict, name: str):
    v = scan.get(name)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def read_mzml_spectra(path: str | os.PathLike, *, ms_levels: Iterable[int] | None = None,
                      centroided: bool | None = None, spectrum_type: str = "auto") -> Iterator[Spectrum]:
    """Spectra of an mzML file, read with pyteomics.

    ``ms_levels``: keep only these MS levels; ``centroided``: True keeps only centroided,
    False only profile spectra, None keeps both. ``spectrum_type``: 'auto' takes each spectrum's
    own 'profile spectrum'/'centroid spectrum' term and, where it has neither, estimates the type
    from the data (:func:`estimate_centroided`; ``type_source`` 'estimated'); 'profile' or
    'centroid' sets it for every spectrum (``type_source`` 'given'). ``index`` counts the spectra yielded; ``scan`` comes from our own userParam,
    else the nativeID's ``scan=N``, else the spectrum's 1-based position in the file.
    """
    pyteomics_mzml = _require("pyteomics.mzml")
    if spectrum_type not in SPECTRUM_TYPES:
        raise MzMLError(f"spectrum type must be one of {', '.join(SPECTRUM_TYPES)}, got {spectrum_type!r}")
    levels = None if ms_levels is None else {int(x) for x in ms_levels}
    index = 0
    with pyteomics_mzml.MzML(str(path), use_index=False, decode_binary=True) as reader:
        for position, s in enumerate(reader):
            level = int(s.get("ms level", 1))
            if levels is not None and level not in levels:
                continue
            mz = np.asarray(s.get("m/z array", np.zeros(0)), dtype=np.float64)
            if spectrum_type != "auto":
                is_centroid, source = spectrum_type == "centroid", "given"
            elif "centroid spectrum" in s or "profile spectrum" in s:
                is_centroid, source = "centroid spectrum" in s and "profile spectrum" not in s, "declared"
            else:
                is_centroid, source = estimate_centroided(mz), "estimated"
            if centroided is not None and is_centroid != centroided:
                continue
            scans = (s.get("scanList") or {}).get("scan") or [{}]
            scan = scans[0]
            native_id = s.get("id", "")
            number = _user_param(scan, UP_SCAN)
            if number is None:
                m = _NATIVE_SCAN.search(native_id)
                number = int(m.group(1)) if m else position + 1
            seconds, ns = _user_param(scan, UP_DEVICE_TIME_S), _user_param(scan, UP_DEVICE_TIME_NS)
            device_time = None if seconds is None or ns is None else seconds * 1_000_000_000 + ns
            start = scan.get("scan start time")
            time_s = _seconds(start) if start is not None else 0.0
            if device_time is None:
                device_time = int(round(time_s * 1e9))
            polarity = Polarity.UNKNOWN
            if "positive scan" in s or "positive scan" in scan:
                polarity = Polarity.POSITIVE
            elif "negative scan" in s or "negative scan" in scan:
                polarity = Polarity.NEGATIVE
            intensity = np.asarray(s.get("intensity array", np.zeros(0, np.float32)))
            if intensity.dtype not in (np.float32, np.float64):
                intensity = intensity.astype(np.float64)
            yield Spectrum(index, number, level, polarity, time_s, mz, intensity, centroided=is_centroid,
                           device_time_ns=device_time, native_id=native_id,
                           sequence=_user_param(scan, UP_SEQUENCE), type_source=source)
            index += 1


def mzml_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Run-level metadata of an mzML file: run id, start time, instrument, source files.

    Reads the document head with lxml up to the ``<run>`` start tag (it never parses spectra).
    """
    etree = _require("lxml.etree")
    meta: dict[str, Any] = {"run_id": None, "start_time": None, "instrument": [], "components": [],
                            "source_files": [], "software": []}
    where: list[str] = []
    try:
        for event, el in etree.iterparse(str(path), events=("start", "end"), huge_tree=True):
            tag = etree.QName(el).localname
            if event == "start":
                where.append(tag)
                if tag == "run":
                    meta["run_id"] = el.get("id")
                    meta["start_time"] = el.get("startTimeStamp")
                    break
                if tag == "sourceFile":
                    meta["source_files"].append(el.get("name"))
                if tag == "software":
                    meta["software"].append(f"{el.get('id')} {el.get('version') or ''}".strip())
                continue
            if tag == "cvParam":
                name, accession = el.get("name"), el.get("accession")
                item = {"accession": accession, "name": name}
                if accession == "MS:1000529":  # instrument serial number
                    meta["serial_number"] = el.get("value")
                elif "referenceableParamGroup" in where or (
                        "instrumentConfiguration" in where and "componentList" not in where):
                    if name and item not in meta["instrument"]:
                        meta["instrument"].append(item)
                elif "componentList" in where and name and item not in meta["components"]:
                    meta["components"].append(item)
            where.pop()
            if tag in ("cvParam", "userParam"):
                el.clear()
    except etree.XMLSyntaxError as exc:
        raise MzMLError(f"{path}: not a readable mzML file: {exc}") from None
    if meta["run_id"] is None:
        raise MzMLError(f"{path}: no <run> element: not an mzML file")
    return meta


def _parse_time(text: str | None) -> int | None:
    """ns since the epoch of an xs:dateTime (UTC when it has no zone), or None."""
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


@contextlib.contextmanager
def _atomic_output(path: Path, *, overwrite: bool = True):
    """Yield a temporary path beside ``path``; on success it becomes ``path``, on failure it goes.

    ``overwrite=False`` raises FileExistsError (before any work, and atomically at the end)
    instead of replacing an existing file.
    """
    if not overwrite and path.exists():
        raise FileExistsError(errno.EEXIST, "file exists", str(path))
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never replace a capture
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Import: mzML -> capture
# ---------------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    """What :func:`import_mzml` wrote. Sizes in bytes, times in s."""

    path: str
    spectra: int = 0                 # frames written
    skipped_centroided: int = 0
    skipped_ms_level: int = 0
    skipped_empty: int = 0
    sorted_axes: int = 0             # spectra whose m/z array had to be sorted
    estimated_profile: int = 0       # spectra without a type term, found to be profile from the data
    estimated_centroided: int = 0    # ... found to be centroided (read_mzml_spectra, spectrum_type='auto')
    max_samples: int = 0
    max_frame_bytes: int = 0
    duration_s: float = 0.0          # last - first scan start time
    ms_levels: dict = field(default_factory=dict)
    run_id: str | None = None
    instrument: list = field(default_factory=list)

    @property
    def ring_slot_bytes(self) -> int:
        """The smallest ``ring.slot_bytes`` that holds every frame of this capture."""
        return self.max_frame_bytes

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["ring_slot_bytes"] = self.ring_slot_bytes
        return d


def _count_estimated(summary, s: Spectrum) -> None:
    if s.type_source == "estimated":
        if s.centroided:
            summary.estimated_centroided += 1
        else:
            summary.estimated_profile += 1


def import_mzml(mzml_path: str | os.PathLike, out_path: str | os.PathLike, *,
                ms_levels: Iterable[int] | None = None, centroided: bool = False,
                compress: bool | int = False, overwrite: bool = False,
                progress: Progress | None = None, spectrum_type: str = "auto") -> ImportSummary:
    """Write the spectra of an mzML run as SCAN frames into a new capture at ``out_path``.

    Each kept spectrum becomes one frame carrying its own m/z array as an explicit float64
    axis (``AxisKind.EXPLICIT``) and its intensities in their stored dtype (float32 or
    float64). Frame fields: ``sequence`` 0, 1, 2, ...; ``scan_number`` from the spectrum
    (see :func:`read_mzml_spectra`); ``device_time_ns`` = scan start time in ns from the
    run start; ``ms_level`` and ``polarity`` from the spectrum's cvParams. Each record's
    host time is the run's ``startTimeStamp`` (or now, if absent) + the scan start time, so
    ``replay://`` at speed 1 plays the run at its acquisition pace.

    By default only profile spectra are imported (the pipeline picks peaks from profile
    data); ``centroided=True`` imports only the centroided ones instead. ``ms_levels``
    keeps only those MS levels. Empty spectra are skipped. ``spectrum_type`` as in
    :func:`read_mzml_spectra` (the summary counts the spectra whose type was estimated).
    """
    from instrument.capture import CaptureWriter

    mzml_path, out_path = Path(mzml_path), Path(out_path)
    meta = mzml_metadata(mzml_path)
    base_ns = _parse_time(meta["start_time"])
    if base_ns is None:
        import time

        base_ns = time.time_ns()
    summary = ImportSummary(path=str(out_path), run_id=meta["run_id"],
                            instrument=[item["name"] for item in meta["instrument"]])
    levels = None if ms_levels is None else {int(x) for x in ms_levels}
    description = {
        "source": {
            "url": f"mzml://{mzml_path.resolve()}", "kind": "mzml", "file": mzml_path.name,
            "sha1": _sha1(mzml_path), "run_id": meta["run_id"], "start_time": meta["start_time"],
            "instrument": meta["instrument"], "components": meta["components"],
            "serial_number": meta.get("serial_number"),
            "source_files": meta["source_files"], "time_origin_ns": 0,
        },
        "settings": {"import": {"ms_levels": sorted(levels) if levels else "all",
                                "spectra": "centroided" if centroided else "profile"}},
    }
    first_t = last_t = None
    seq = 0
    with _atomic_output(out_path, overwrite=overwrite) as tmp, \
            CaptureWriter(tmp, description, fsync_interval_s=None, compress=compress) as writer:
        for s in read_mzml_spectra(mzml_path, spectrum_type=spectrum_type):
            if progress is not None:
                progress(1)
            _count_estimated(summary, s)
            if s.centroided != centroided:
                summary.skipped_centroided += 1 if s.centroided else 0
                continue
            if levels is not None and s.ms_level not in levels:
                summary.skipped_ms_level += 1
                continue
            if len(s.mz) == 0 or len(s.mz) != len(s.intensity):
                summary.skipped_empty += 1
                continue
            mz, intensity = s.mz, s.intensity
            if np.any(np.diff(mz) < 0):
                order = np.argsort(mz, kind="stable")
                mz, intensity = mz[order], intensity[order]
                summary.sorted_axes += 1
            frame = encode_scan(intensity, sequence=seq, scan_number=s.scan & 0xFFFFFFFF,
                                device_time_ns=max(0, s.device_time_ns), ms_level=s.ms_level,
                                polarity=s.polarity, mz_axis=mz)
            writer.append(frame, base_ns + max(0, s.device_time_ns))
            seq += 1
            summary.spectra += 1
            summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
            summary.max_samples = max(summary.max_samples, len(mz))
            summary.max_frame_bytes = max(summary.max_frame_bytes, len(frame))
            first_t = s.time_s if first_t is None else first_t
            last_t = s.time_s
    if first_t is not None:
        summary.duration_s = last_t - first_t
    return summary


# ---------------------------------------------------------------------------------------
# Writing mzML (psims)
# ---------------------------------------------------------------------------------------

def _intensity_encoding(dtype: np.dtype):
    """The mzML float type that holds these intensities exactly (float32 for 16-bit ints)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.float64 if dtype.itemsize == 8 else np.float32
    return np.float32 if dtype.itemsize <= 2 else np.float64


class _MzMLOut:
    """A psims writer set up with ionstream's file description, instrument and processing."""

    def __init__(self, out_path: Path, *, run_id: str, start_time: str | None, source: dict[str, Any],
                 source_path: Path | None, centroided: bool, ms_levels: set[int], count: int,
                 unique_scans: bool, processing: list[dict[str, Any]] | None = None, compress: bool = True):
        psims_writer = _require("psims.mzml.writer")
        from ionstream import __version__

        self.count = count
        self.centroided = centroided
        self.compression = "zlib" if compress else "none"
        self.tic_times: list[float] = []
        self.tic_values: list[float] = []
        self.written = 0
        self._ids: set[str] = set()
        self.unique_scans = unique_scans
        self._fh = open(out_path, "wb")
        w = self.w = psims_writer.MzMLWriter(
            self._fh, close=True,
            native_id_format="scan number only nativeID format" if unique_scans
            else "multiple peak list nativeID format")
        self._cm = w.__enter__()
        try:
            w.controlled_vocabularies()
            contents = []
            if 1 in ms_levels or not ms_levels:
                contents.append("MS1 spectrum")
            if any(level > 1 for level in ms_levels):
                contents.append("MSn spectrum")
            contents.append("centroid spectrum" if centroided else "profile spectrum")
            files = []
            if source_path is not None:
                sf = w.SourceFile(location=source_path.resolve().parent.as_uri() + "/", name=source_path.name,
                                  id="SOURCE", params=[{"SHA-1": _sha1(source_path)}])
                files.append(sf)
            w.file_description(contents, files)
            w.software_list([
                w.Software(id="ionstream", version=__version__,
                           params=[{"custom unreleased software tool": "ionstream"}]),
                w.Software(id="psims", version=_dist_version("psims"), params=["psims"]),
            ])
            w.instrument_configuration_list([self._instrument(w, source)])
            methods = [w.ProcessingMethod(order=1, software_reference="ionstream",
                                          params=["Conversion to mzML"])]
            if centroided:
                methods.append(w.ProcessingMethod(order=2, software_reference="ionstream",
                                                  params=["peak picking"] + list(processing or [])))
            w.data_processing_list([w.DataProcessing(methods, id="ionstream_processing")])
            self._run = w.run(id=run_id, instrument_configuration="IC1",
                              source_file="SOURCE" if files else None, start_time=start_time)
            self._run.__enter__()
            self._slist = w.spectrum_list(count=count, data_processing_method="ionstream_processing")
            self._slist.__enter__()
        except BaseException:
            self._fh.close()
            raise

    @staticmethod
    def _instrument(w, source: dict[str, Any]):
        """IC1 from what the capture says about its source (imported runs keep their instrument)."""
        from psims.xml import UserParam

        source = source if isinstance(source, dict) else {}
        params: list[Any] = []
        terms = [_term(w, item) for item in source.get("instrument") or []]
        model = next((term for term in terms if term is not None and term.is_of_type("instrument model")), None)
        params.append(model.name if model is not None else "instrument model")
        if source.get("serial_number"):
            params.append({"instrument serial number": str(source["serial_number"])})
        if source.get("url"):
            params.append(UserParam(name="ionstream source", value=str(source["url"])))
        components = [c for c in (_term(w, item) for item in source.get("components") or []) if c is not None]
        if components:
            # the imported run's component terms (by accession, under today's CV names)
            src = [c.name for c in components if c.is_of_type("ionization type") or c.is_of_type("inlet type")]
            det = [c.name for c in components if c.is_of_type("detector type")]
            ana = [c.name for c in components if c.is_of_type("mass analyzer type")]
        else:  # the open frame format is a TOF digitiser's
            src, ana, det = [], ["time-of-flight"], ["microchannel plate detector"]
        ana = ana or ["mass analyzer type"]  # a hybrid (e.g. ion trap + FT-ICR) lists each analyzer
        comp = w.ComponentList([w.Source(1, src or ["ionization type"])]
                               + [w.Analyzer(2 + k, [name]) for k, name in enumerate(ana)]
                               + [w.Detector(2 + len(ana), det or ["detector type"])])
        return w.InstrumentConfiguration(id="IC1", component_list=comp, params=params)

    def write(self, s: Spectrum, mz: np.ndarray, intensity: np.ndarray, *, time_origin_s: float = 0.0,
              snr: np.ndarray | None = None) -> None:
        from psims.xml import UserParam

        w = self.w
        native_id = f"scan={s.scan}" if self.unique_scans else f"index={self.written}"
        if native_id in self._ids:  # never two spectra with one id
            native_id = f"index={self.written}"
        self._ids.add(native_id)
        rt_min = (s.time_s - time_origin_s) / 60.0
        params: list[Any] = [{"ms level": int(s.ms_level)},
                             "MS1 spectrum" if s.ms_level <= 1 else "MSn spectrum"]
        ienc = _intensity_encoding(intensity.dtype)
        values = np.asarray(intensity, dtype=np.float64)
        tic = float(values.sum()) if len(values) else 0.0
        params.append({"total ion current": tic})
        if len(values):
            k = int(np.argmax(values))
            params += [{"base peak m/z": float(mz[k])},
                       {"name": "base peak intensity", "value": float(values[k]),
                        "unit_name": "number of detector counts"},
                       {"lowest observed m/z": float(mz[0])}, {"highest observed m/z": float(mz[-1])}]
        seconds, ns = divmod(int(s.device_time_ns), 1_000_000_000)
        scan_params: list[Any] = [
            UserParam(name=UP_SCAN, value=int(s.scan)),
            UserParam(name=UP_DEVICE_TIME_S, value=seconds),
            UserParam(name=UP_DEVICE_TIME_NS, value=ns),
        ]
        if s.sequence is not None:
            scan_params.append(UserParam(name=UP_SEQUENCE, value=int(s.sequence)))
        polarity = {Polarity.POSITIVE: "positive scan", Polarity.NEGATIVE: "negative scan"}.get(s.polarity)
        other = []
        encoding = {"m/z array": np.float64, "intensity array": ienc}
        if snr is not None:
            other.append(("signal to noise array", np.asarray(snr, dtype=np.float32)))
            encoding["signal to noise array"] = np.float32
        w.write_spectrum(mz, intensity, id=native_id, centroided=self.centroided, polarity=polarity,
                         scan_start_time=rt_min, params=params, scan_params=scan_params,
                         encoding=encoding, other_arrays=other or None, compression=self.compression)
        self.tic_times.append(rt_min)
        self.tic_values.append(tic)
        self.written += 1

    def close(self) -> None:
        w = self.w
        self._slist.__exit__(None, None, None)
        if self.tic_times:
            with w.chromatogram_list(count=1, data_processing_method="ionstream_processing"):
                w.write_chromatogram(np.asarray(self.tic_times), np.asarray(self.tic_values), id="TIC",
                                     chromatogram_type="total ion current chromatogram",
                                     encoding={"time array": np.float64, "intensity array": np.float64},
                                     compression=self.compression)
        self._run.__exit__(None, None, None)
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._fh.close()
        except Exception:
            pass


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _term(w, item):
    """The PSI-MS CV entity for ``{"accession", "name"}`` (or a bare name), or None."""
    if isinstance(item, str):
        item = {"name": item}
    for key in (item.get("accession"), item.get("name")):
        if key:
            try:
                return w.context.term(key)
            except KeyError:
                continue
    return None


# ---------------------------------------------------------------------------------------
# Export: capture -> mzML
# ---------------------------------------------------------------------------------------

@dataclass
class ExportSummary:
    """What :func:`export_capture` / :func:`pick_peaks` wrote."""

    path: str
    spectra: int = 0
    centroided: bool = False
    peaks: int = 0
    status_frames: int = 0
    invalid_records: int = 0
    duration_s: float = 0.0
    ms_levels: dict = field(default_factory=dict)
    dsp: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def dsp_params_from_config(config=None) -> dict[str, Any]:
    """The ScanProcessor parameters the daemon uses for ``config`` (default configuration if None)."""
    if config is None:
        from ionstream.config import load

        config = load(None)
    return {"smoothing": config.dsp.smoothing, "min_snr": config.dsp.min_snr, "preset": config.dsp.preset}


_PEAK_FIELDS = (("mz", "<f8"), ("intensity", "<f4"), ("area", "<f4"), ("fwhm", "<f4"), ("snr", "<f4"))
_DEFAULT_SMOOTHING = "savgol"   # the configuration's default (ionstream.config.DspConfig)


class PeakPicker:
    """Peak picking for offline spectra with the live pipeline's DSP code.

    * A scan read from a capture goes through :class:`ionstream.processing.ScanWork`, the
      per-scan path of the daemon's DSP workers, with the daemon's ``[dsp]`` settings: the
      peaks are those the daemon publishes when it replays the capture.
    * A spectrum read from an mzML file goes through :func:`dsp.pick_centroids`, the DSP
      stage's entry point for one profile spectrum on its own m/z axis (same kernel; it adapts
      its sample-based widths to the spectrum's peak width and handles zero-suppressed
      profiles). It gets ``min_snr`` from the settings, and ``smoothing`` only when the
      configuration chose one other than the default (else pick_centroids chooses).

    Calling it returns the wire layout of the ``peaks`` topic: mz (<f8), intensity, area,
    fwhm, snr (<f4), sorted by m/z.
    """

    def __init__(self, dsp_params: dict[str, Any] | None = None):
        self.params = dict(dsp_params) if dsp_params is not None else dsp_params_from_config()
        self._work = None
        self._work_error: str | None = None
        self._warned = False

    def _scan_work(self):
        if self._work is None and self._work_error is None:
            try:
                from ionstream.processing import ScanWork

                self._work = ScanWork(dsp_params=dict(self.params), xic_windows=[])
            except Exception as exc:  # the DSP stage not wired (ImportError) or refusing the settings
                self._work_error = f"{type(exc).__name__}: {exc}"
        return self._work

    def pick_params(self) -> dict[str, Any]:
        """The keyword arguments given to dsp.pick_centroids."""
        params = {}
        if "min_snr" in self.params:
            params["min_snr"] = float(self.params["min_snr"])
        if self.params.get("preset"):
            params["preset"] = self.params["preset"]
        if self.params.get("smoothing", _DEFAULT_SMOOTHING) != _DEFAULT_SMOOTHING:
            params["smoothing"] = self.params["smoothing"]
        return params

    def __call__(self, s: "Spectrum") -> dict[str, np.ndarray]:
        if len(s.mz) < 3:
            return {name: np.zeros(0, dtype) for name, dtype in _PEAK_FIELDS}
        if s.header is not None:
            work = self._scan_work()
            if work is not None:
                mz = s.mz if s.header.axis_kind == AxisKind.EXPLICIT else None
                p = work.process(s.header, s.intensity, mz).peaks
                return {name: np.asarray(p[name], dtype=dtype) for name, dtype in _PEAK_FIELDS}
            if not self._warned:
                self._warned = True
                log.warning("the pipeline's per-scan path (ScanWork) is not available (%s); capture scans are "
                            "picked with dsp.pick_centroids instead", self._work_error)
        return self._pick_centroids(s.mz, s.intensity)

    def _pick_centroids(self, mz: np.ndarray, intensity: np.ndarray) -> dict[str, np.ndarray]:
        try:
            from dsp import pick_centroids
        except ImportError as exc:
            raise MzMLError(f"peak picking needs the DSP stage (dsp.pick_centroids): {exc}") from None
        mz = np.asarray(mz, dtype=np.float64)
        if not np.all(np.diff(mz) > 0):  # pick_centroids wants a strictly increasing axis
            order = np.argsort(mz, kind="stable")
            mz, intensity = mz[order], np.asarray(intensity)[order]
            keep = np.concatenate(([True], np.diff(mz) > 0))
            mz, intensity = mz[keep], intensity[keep]
        p = pick_centroids(mz, intensity, **self.pick_params())
        return {name: np.ascontiguousarray(p[name], dtype=dtype) for name, dtype in _PEAK_FIELDS}


def _passed_through(s: Spectrum) -> dict[str, np.ndarray]:
    """A centroided spectrum's own points in the peaks layout (area, FWHM, S/N unknown: NaN)."""
    mz = np.asarray(s.mz, dtype=np.float64)
    order = np.argsort(mz, kind="stable")
    n = mz.size
    out = {name: np.full(n, np.nan, dtype) for name, dtype in _PEAK_FIELDS}
    out["mz"] = mz[order]
    out["intensity"] = np.asarray(s.intensity, dtype=np.float32)[order]
    return out


def _processing_params(w_params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"ionstream dsp.{k}", "value": str(v)} for k, v in sorted(w_params.items())]


def export_capture(capture_path: str | os.PathLike, out_path: str | os.PathLike, *, centroid: bool = False,
                   dsp_params: dict[str, Any] | None = None, compress: bool = True,
                   progress: Progress | None = None) -> ExportSummary:
    """Write every SCAN frame of a capture as an mzML spectrum (profile, or centroided).

    Profile: the frame's samples (float32 in mzML for 16-bit samples, float64 for 32/64-bit)
    on its m/z axis (float64). Centroided: the peaks of ``ScanWork.process`` (the live
    pipeline's code) with ``dsp_params`` (default: the daemon's default configuration):
    m/z, height above baseline as intensity, and S/N as a ``signal to noise array``.
    ``scan start time`` is minutes from the capture's time origin; each ``<scan>`` also
    carries userParams with the frame's scan number, device time (ns) and sequence number.
    A TIC chromatogram closes the run. Arrays are zlib-compressed unless ``compress=False``
    (about 6x faster to write for 64k-point profile spectra, files about 1.7x larger).
    """
    from instrument.capture import CaptureReader

    capture_path, out_path = Path(capture_path), Path(out_path)
    pre = _capture_prepass(capture_path)
    with CaptureReader(capture_path) as reader:
        header = reader.header
        description = reader.description
    source = description.get("source") if isinstance(description.get("source"), dict) else {}
    summary = ExportSummary(path=str(out_path), centroided=centroid, status_frames=pre.status_frames)
    picker = None
    processing = None
    if centroid:
        picker = PeakPicker(dsp_params)
        summary.dsp = picker.params
        processing = _processing_params(picker.params)
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", capture_path.stem) or "run"
    if not run_id[0].isalpha() and run_id[0] != "_":
        run_id = "_" + run_id  # an xs:ID starts with a letter or underscore
    stats: dict[str, Any] = {}
    first = last = None
    with _atomic_output(out_path) as tmp:
        out = _MzMLOut(tmp, run_id=run_id, start_time=header.get("created"), source=source,
                       source_path=capture_path, centroided=centroid, ms_levels=pre.ms_levels, count=pre.scans,
                       unique_scans=not pre.duplicate_scans, processing=processing, compress=compress)
        try:
            for s in read_capture_spectra(capture_path, stats=stats):
                if picker is not None:
                    p = picker(s)
                    out.write(s, p["mz"], p["intensity"], snr=p["snr"])
                    summary.peaks += len(p["mz"])
                else:
                    out.write(s, s.mz, s.intensity)
                summary.spectra += 1
                summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
                first = s.time_s if first is None else first
                last = s.time_s
                if progress is not None:
                    progress(1)
            out.close()
        except BaseException:
            out.abort()
            raise
    summary.invalid_records = stats.get("invalid_records", 0)
    if first is not None:
        summary.duration_s = last - first
    return summary


# ---------------------------------------------------------------------------------------
# Offline peak picking: mzML or capture -> CSV or centroided mzML
# ---------------------------------------------------------------------------------------

@dataclass
class PeaksSummary(ExportSummary):
    skipped_centroided: int = 0      # centroided input spectra passed through as they are (not re-picked)
    estimated_profile: int = 0       # spectra without a type term, found to be profile from the data
    estimated_centroided: int = 0


def pick_peaks(in_path: str | os.PathLike, out_path: str | os.PathLike, *,
               dsp_params: dict[str, Any] | None = None, ms_levels: Iterable[int] | None = None,
               progress: Progress | None = None, spectrum_type: str = "auto") -> PeaksSummary:
    """Pick peaks in every profile spectrum of ``in_path`` (mzML or capture) with the live pipeline's code.

    ``out_path`` ending in ``.csv`` gets one row per peak (:data:`CSV_COLUMNS`); ``.mzML``
    gets centroided spectra (as ``export --centroid``). Spectra already centroided in the
    input (declared, given by ``spectrum_type``, or estimated from the data when the file does not
    say: :func:`read_mzml_spectra`) are never re-picked: their points pass through as they are
    (intensity as given; area, FWHM and S/N empty in CSV) and are counted in ``skipped_centroided``.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".csv", ".mzml"):
        raise MzMLError(f"{out_path}: output must end in .csv or .mzML")
    capture = is_capture(in_path)
    if not capture:
        mzml_metadata(in_path)  # a clear error for a file that is not mzML
    picker = PeakPicker(dsp_params)
    params = picker.params
    summary = PeaksSummary(path=str(out_path), centroided=True, dsp=params)
    levels = None if ms_levels is None else {int(x) for x in ms_levels}
    spectra = read_capture_spectra(in_path) if capture else read_mzml_spectra(in_path, spectrum_type=spectrum_type)

    def picked():
        for s in spectra:
            if progress is not None:
                progress(1)
            if levels is not None and s.ms_level not in levels:
                continue
            _count_estimated(summary, s)
            if s.centroided:
                summary.skipped_centroided += 1
                yield s, _passed_through(s)
                continue
            yield s, picker(s)

    if suffix == ".csv":
        with _atomic_output(out_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for s, p in picked():
                pol = s.polarity.name.lower()
                for i in range(len(p["mz"])):
                    writer.writerow((s.index, s.scan, s.native_id, s.ms_level, pol, f"{s.rt_min:.9g}",
                                     repr(float(p["mz"][i])), f"{float(p['intensity'][i]):.9g}",
                                     f"{float(p['area'][i]):.9g}", f"{float(p['fwhm'][i]):.9g}",
                                     f"{float(p['snr'][i]):.9g}"))
                summary.spectra += 1
                summary.peaks += len(p["mz"])
                summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
        return summary

    # centroided mzML: the spectrum count must be known before the first spectrum
    count, ms_set, seen, unique = 0, set(), set(), True
    for s in (read_capture_spectra(in_path) if capture else read_mzml_spectra(in_path, spectrum_type=spectrum_type)):
        if levels is None or s.ms_level in levels:
            count += 1
            ms_set.add(s.ms_level)
            unique = unique and s.scan not in seen
            seen.add(s.scan)
    if capture:
        from instrument.capture import CaptureReader

        with CaptureReader(in_path) as reader:
            start_time = reader.header.get("created")
            source = reader.description.get("source") or {}
    else:
        meta = mzml_metadata(in_path)
        start_time = meta["start_time"]
        source = {"url": f"mzml://{in_path.resolve()}", "instrument": meta["instrument"],
                  "components": meta["components"], "serial_number": meta.get("serial_number")}
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", in_path.stem) or "run"
    if not run_id[0].isalpha():
        run_id = "_" + run_id
    with _atomic_output(out_path) as tmp:
        out = _MzMLOut(tmp, run_id=run_id, start_time=start_time, source=source, source_path=in_path,
                       centroided=True, ms_levels=ms_set, count=count, unique_scans=unique,
                       processing=_processing_params(params))
        try:
            for s, p in picked():
                out.write(s, p["mz"], p["intensity"], snr=p["snr"])
                summary.spectra += 1
                summary.peaks += len(p["mz"])
                summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
            out.close()
        except BaseException:
            out.abort()
            raise
    return summary
