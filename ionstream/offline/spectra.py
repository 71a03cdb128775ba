"""Spectra from captures and mzML files: one :class:`Spectrum` type, whatever it came from.

* :func:`read_capture_spectra`: every SCAN frame of a capture (``instrument.capture.iter_frames``,
  one frame per record);
* :func:`read_mzml_spectra` and :func:`mzml_metadata`: an mzML run, read with pyteomics and lxml;
* :func:`read_spectra` / :func:`count_spectra`: either, chosen by the file's first bytes.

The writers are :mod:`ionstream.offline.export` (capture -> mzML), :mod:`ionstream.offline.mzml_import`
(mzML -> capture) and :mod:`ionstream.offline.peaks` (offline peak picking -> CSV or centroided mzML);
docs/mzml.md describes the mapping field by field. psims, pyteomics and lxml are the ``[mzml]``
extra; they are imported only when used.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instrument.frames import FrameHeader, FrameType, Polarity

log = logging.getLogger("ionstream.offline.spectra")

__all__ = [
    "Spectrum", "MzMLError", "Progress", "SPECTRUM_TYPES", "offline_vocabularies", "read_spectra",
    "read_capture_spectra", "read_mzml_spectra", "count_spectra", "mzml_metadata", "is_capture",
    "estimate_centroided",
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
    from instrument.capture import CaptureReader, iter_frames

    p = _Prepass()
    seen: set[int] = set()
    with CaptureReader(path) as reader:
        for _t, f in iter_frames(reader, per_record=True):
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
    from instrument.capture import CaptureReader, iter_frames
    from dsp.calibration import AxisCache

    axes = AxisCache()
    with CaptureReader(path) as reader:
        origin = None
        frames = iter_frames(reader, per_record=True)  # a record is one frame, as capture info counts
        decoder = frames.decoder
        index = status = 0
        for host_time_ns, f in frames:
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
        if stats is not None:
            stats.update(status_frames=status, invalid_records=frames.invalid_records,
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
