"""Writing mzML (psims): the file description, instrument, processing and one spectrum at a time.

Used by :func:`ionstream.offline.export.export_capture` and :func:`ionstream.offline.peaks.pick_peaks`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instrument.frames import Polarity
from ionstream.offline.files import sha1_of
from ionstream.offline.spectra import (
    UP_DEVICE_TIME_NS,
    UP_DEVICE_TIME_S,
    UP_SCAN,
    UP_SEQUENCE,
    Spectrum,
    _require,
)

__all__ = ["MzMLOut", "ExportSummary", "processing_params"]


def _intensity_encoding(dtype: np.dtype):
    """The mzML float type that holds these intensities exactly (float32 for 16-bit ints)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.float64 if dtype.itemsize == 8 else np.float32
    return np.float32 if dtype.itemsize <= 2 else np.float64


class MzMLOut:
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
                                  id="SOURCE", params=[{"SHA-1": sha1_of(source_path)}])
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


def processing_params(w_params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"ionstream dsp.{k}", "value": str(v)} for k, v in sorted(w_params.items())]
