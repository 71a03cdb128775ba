"""mzML export (psims) read back with pyteomics, import of a real instrument run, round trips, CLI.

The real data is tests/data/small_ltqft.mzML (Thermo LTQ FT, ProteoWizard's small.RAW; see
tests/data/README.md). Its arrays are checked against an independent decoder (lxml + base64 +
zlib) so that the import is not only checked by the library it reads with.
"""
import base64
import itertools
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psims")
pyteomics_mzml = pytest.importorskip("pyteomics.mzml")
etree = pytest.importorskip("lxml.etree")

from instrument.capture import CaptureReader, CaptureWriter, capture_info  # noqa: E402
from instrument.frames import AxisKind, FrameDecoder, FrameType, Polarity  # noqa: E402
from instrument.simulator import SimConfig, Simulator  # noqa: E402
from instrument.spectrum_model import mz_axis  # noqa: E402
from ionstream.offline.export import export_capture  # noqa: E402
from ionstream.offline.mzml_import import import_mzml  # noqa: E402
from ionstream.offline.peaks import CSV_COLUMNS, dsp_params_from_config, pick_peaks  # noqa: E402
from ionstream.offline.spectra import MzMLError, offline_vocabularies  # noqa: E402

offline_vocabularies()  # pyteomics below loads the CV through psims: never from the internet

DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "small_ltqft.mzML"
T0 = 1_700_000_000_000_000_000
NS = {"m": "http://psi.hupo.org/ms/mzml"}
IONSTREAM = [sys.executable, "-P", "-m", "ionstream.cli"]


def _has_pick_centroids() -> bool:
    try:
        from dsp import pick_centroids  # noqa: F401
    except ImportError:
        return False
    return True


def _scan_work_error() -> str | None:
    """Why the daemon's per-scan path cannot run here, or None when it can."""
    try:
        from ionstream.processing import ScanWork

        ScanWork(dsp_params=dsp_params_from_config(), xic_windows=[])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


needs_dsp = pytest.mark.skipif(not _has_pick_centroids(), reason="dsp.pick_centroids is not built yet")
needs_scan_work = pytest.mark.skipif(_scan_work_error() is not None,
                                     reason=f"the pipeline's ScanWork cannot run yet ({_scan_work_error()})")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def sim_capture(path, n_frames=30, *, samples=2048, ms_level=1, polarity="positive", dtype="uint16", seed=3,
                start_time_ns=5_000_000_000):
    sim = Simulator(SimConfig(n_samples=samples, seed=seed, status_interval_s=0.2, ms_level=ms_level,
                              polarity=polarity, dtype=dtype, start_time_ns=start_time_ns))
    frames = []
    with CaptureWriter(path, {"source": {"url": "sim://?seed=3", "kind": "sim"}, "settings": {"x": 1}}) as w:
        for i, (frame, _truth) in enumerate(itertools.islice(sim, n_frames)):
            w.append(frame, T0 + i * 50_000_000)
            frames.append(frame)
    return path, frames


def decoded_scans(path):
    """(header, samples copy, mz copy or None) of every SCAN frame in a capture."""
    out = []
    with CaptureReader(path) as reader:
        dec = FrameDecoder()
        for _t, frame in reader:
            for f in dec.feed(frame):
                if f.header.frame_type == FrameType.SCAN:
                    mz = f.mz_axis()
                    out.append((f.header, f.samples().copy(), None if mz is None else mz.copy()))
    return out


def independent_spectra(path):
    """Decode an mzML file with lxml, base64 and zlib only (no mzML library)."""
    doc = etree.parse(str(path))
    spectra = []
    for sp in doc.iterfind(".//m:spectrum", NS):
        item = {"id": sp.get("id"), "arrays": {}}
        for p in sp.iterfind("m:cvParam", NS):
            if p.get("name") == "ms level":
                item["ms_level"] = int(p.get("value"))
            item.setdefault("params", set()).add(p.get("name"))
        t = sp.find(".//m:scan/m:cvParam[@name='scan start time']", NS)
        item["rt"] = float(t.get("value")) * (60.0 if t.get("unitName") == "minute" else 1.0)
        for arr in sp.iterfind(".//m:binaryDataArray", NS):
            names = {p.get("name") for p in arr.iterfind("m:cvParam", NS)}
            raw = base64.b64decode(arr.findtext("m:binary", namespaces=NS) or "")
            if "zlib compression" in names:
                raw = zlib.decompress(raw)
            dtype = "<f8" if "64-bit float" in names else "<f4"
            kind = "mz" if "m/z array" in names else "intensity" if "intensity array" in names else "other"
            item["arrays"][kind] = np.frombuffer(raw, dtype=dtype)
        spectra.append(item)
    return spectra


def xsd_valid(path) -> bool:
    import psims

    xsd = etree.XMLSchema(etree.parse(os.path.join(os.path.dirname(psims.__file__), "validation", "xsd",
                                                   "mzML1.1.0.xsd")))
    root = etree.parse(str(path)).getroot()
    mz = root if etree.QName(root).localname == "mzML" else root.find("m:mzML", NS)
    ok = xsd.validate(etree.ElementTree(mz))
    assert ok, xsd.error_log
    return ok


# ---------------------------------------------------------------------------------------
# export: capture -> mzML, read back with pyteomics
# ---------------------------------------------------------------------------------------

class TestExport:
    def test_profile_spectra_read_back_with_pyteomics(self, tmp_path):
        cap, _ = sim_capture(tmp_path / "run.isc", 30)
        scans = decoded_scans(cap)
        out = tmp_path / "run.mzML"
        summary = export_capture(cap, out)
        assert summary.spectra == len(scans) > 20 and summary.status_frames == 30 - len(scans)
        assert xsd_valid(out)
        t0 = scans[0][0].device_time_ns
        with pyteomics_mzml.MzML(str(out)) as reader:  # indexed: random access by id works
            spectra = list(reader)
            by_id = reader.get_by_id(f"scan={scans[3][0].scan_number}")
        assert len(spectra) == len(scans)
        assert by_id["index"] == 3
        for (h, samples, _), s in zip(scans, spectra):
            assert s["id"] == f"scan={h.scan_number}"
            assert s["ms level"] == 1 and "MS1 spectrum" in s
            assert "positive scan" in s and "profile spectrum" in s
            scan = s["scanList"]["scan"][0]
            assert scan["scan start time"] == pytest.approx((h.device_time_ns - t0) / 60e9, abs=1e-12)
            assert scan["scan start time"].unit_info == "minute"
            np.testing.assert_array_equal(s["m/z array"], mz_axis(h.calibration, h.n_samples))
            assert s["intensity array"].dtype == np.float32
            np.testing.assert_array_equal(s["intensity array"], samples.astype(np.float32))
            assert s["total ion current"] == pytest.approx(float(samples.sum(dtype=np.float64)))
            assert s["base peak intensity"] == samples.max()

    def test_uncompressed_arrays(self, tmp_path):
        cap, _ = sim_capture(tmp_path / "run.isc", 6)
        export_capture(cap, tmp_path / "z.mzML")
        export_capture(cap, tmp_path / "n.mzML", compress=False)
        assert xsd_valid(tmp_path / "n.mzML")
        names = {p.get("name") for p in etree.parse(str(tmp_path / "n.mzML")).iterfind(".//m:binaryDataArray/m:cvParam", NS)}
        assert "no compression" in names and "zlib compression" not in names
        for a, b in zip(pyteomics_mzml.read(str(tmp_path / "z.mzML")), pyteomics_mzml.read(str(tmp_path / "n.mzML"))):
            np.testing.assert_array_equal(a["m/z array"], b["m/z array"])
            np.testing.assert_array_equal(a["intensity array"], b["intensity array"])

    def test_tic_chromatogram_and_metadata(self, tmp_path):
        cap, _ = sim_capture(tmp_path / "run.isc", 12)
        out = tmp_path / "run.mzML"
        export_capture(cap, out)
        with pyteomics_mzml.MzML(str(out)) as reader:
            tic = next(reader.iterfind("chromatogram"))
            n = len(list(reader))
        assert tic["id"] == "TIC" and "total ion current chromatogram" in tic
        assert len(tic["time array"]) == n and np.all(np.diff(tic["time array"]) > 0)
        doc = etree.parse(str(out))
        source_file = doc.find(".//m:sourceFile", NS)
        assert source_file.get("name") == "run.isc"
        assert any(p.get("name") == "SHA-1" for p in source_file.iterfind("m:cvParam", NS))
        ic = doc.find(".//m:instrumentConfiguration", NS)
        assert ic.find("m:userParam[@name='ionstream source']", NS).get("value") == "sim://?seed=3"
        assert ic.find(".//m:analyzer/m:cvParam", NS).get("name") == "time-of-flight"
        run = doc.find(".//m:run", NS)
        assert run.get("id") == "run" and run.get("startTimeStamp")
        software = {s.get("id") for s in doc.iterfind(".//m:software", NS)}
        assert {"ionstream", "psims"} <= software

    @pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
    def test_ms2_negative_and_sample_dtypes(self, tmp_path, dtype):
        cap, _ = sim_capture(tmp_path / "n.isc", 8, ms_level=2, polarity="negative", dtype=dtype)
        out = tmp_path / "n.mzML"
        export_capture(cap, out)
        scans = decoded_scans(cap)
        for (h, samples, _), s in zip(scans, pyteomics_mzml.read(str(out))):
            assert s["ms level"] == 2 and "MSn spectrum" in s and "negative scan" in s
            np.testing.assert_array_equal(s["intensity array"], samples.astype(np.float64))

    def test_damaged_capture_exports_its_whole_frames(self, tmp_path):
        cap, _ = sim_capture(tmp_path / "d.isc", 20)
        size = cap.stat().st_size
        with open(cap, "r+b") as f:  # tear the last record, as a crash would
            f.truncate(size - 100)
        out = tmp_path / "d.mzML"
        summary = export_capture(cap, out)
        assert summary.spectra == len(decoded_scans(cap))
        assert len(list(pyteomics_mzml.read(str(out)))) == summary.spectra

    def test_not_a_capture_is_refused_and_nothing_is_left(self, tmp_path):
        from instrument.capture import CaptureError

        bad = tmp_path / "x.isc"
        bad.write_bytes(b"hello")
        with pytest.raises(CaptureError, match="not an ionstream capture"):
            export_capture(bad, tmp_path / "x.mzML")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.isc"]

    @needs_scan_work
    def test_centroided_spectra_are_the_pipeline_peaks(self, tmp_path):
        from ionstream.processing import ScanWork

        cap, _ = sim_capture(tmp_path / "c.isc", 16, samples=8192)
        out = tmp_path / "c.mzML"
        params = dsp_params_from_config()
        summary = export_capture(cap, out, centroid=True)
        assert summary.centroided and summary.peaks > 0 and summary.dsp == params
        work = ScanWork(dsp_params=params, xic_windows=[])
        spectra = list(pyteomics_mzml.read(str(out)))
        assert len(spectra) == len(decoded_scans(cap))
        for (h, samples, _), s in zip(decoded_scans(cap), spectra):
            p = work.process(h, samples, None).peaks
            assert "centroid spectrum" in s
            np.testing.assert_array_equal(s["m/z array"], p["mz"])
            np.testing.assert_array_equal(s["intensity array"], p["intensity"])
            np.testing.assert_array_equal(s["signal to noise array"], p["snr"])
        assert xsd_valid(out)


# ---------------------------------------------------------------------------------------
# import: real mzML -> capture -> replay
# ---------------------------------------------------------------------------------------

class TestImport:
    def test_the_real_run_is_valid_mzml(self):
        assert xsd_valid(REAL)

    def test_profile_spectra_become_explicit_axis_frames(self, tmp_path):
        cap = tmp_path / "real.isc"
        summary = import_mzml(REAL, cap)
        assert summary.spectra == 2 and summary.skipped_centroided == 5
        assert summary.instrument[0] == "LTQ FT" and summary.run_id == "small"
        info = capture_info(cap)
        assert info.ok and info.scans == 2 and info.closed_cleanly
        truth = [s for s in independent_spectra(REAL) if "profile spectrum" in s["params"]]
        scans = decoded_scans(cap)
        for k, ((h, samples, mz), ref) in enumerate(zip(scans, truth)):
            assert h.axis_kind == AxisKind.EXPLICIT and h.sequence == k
            assert h.scan_number == int(ref["id"].split("scan=")[1]) == k + 1
            assert h.ms_level == 1 and h.polarity == Polarity.POSITIVE
            assert h.device_time_ns == round(ref["rt"] * 1e9)
            assert samples.dtype == np.float32 and mz.dtype == np.float64
            np.testing.assert_array_equal(mz, ref["arrays"]["mz"])
            np.testing.assert_array_equal(samples, ref["arrays"]["intensity"])
        with CaptureReader(cap) as reader:
            src = reader.description["source"]
            times = [t for t, _ in reader]
        assert src["kind"] == "mzml" and src["file"] == REAL.name and src["instrument"][0]["name"] == "LTQ FT"
        assert src["start_time"] == "2005-07-20T18:44:22Z"
        # host times: the run's start time stamp + the scan times, so replay keeps the pace
        assert times[1] - times[0] == scans[1][0].device_time_ns - scans[0][0].device_time_ns
        assert times[0] == 1121885062 * 10**9 + scans[0][0].device_time_ns

    def test_centroided_and_ms_level_selection(self, tmp_path):
        summary = import_mzml(REAL, tmp_path / "ms2.isc", centroided=True)
        assert summary.spectra == 5 and summary.ms_levels == {2: 5}
        scans = decoded_scans(tmp_path / "ms2.isc")
        assert [h.scan_number for h, _, _ in scans] == [3, 4, 5, 6, 7]
        assert all(h.ms_level == 2 and h.axis_kind == AxisKind.EXPLICIT for h, _, _ in scans)
        none = import_mzml(REAL, tmp_path / "none.isc", ms_levels=[2])
        assert none.spectra == 0 and none.skipped_ms_level == 2

    def test_replay_plays_the_imported_frames_bit_exactly(self, tmp_path):
        from instrument.sources import EndOfSource, open_source

        cap = tmp_path / "real.isc"
        import_mzml(REAL, cap)
        with CaptureReader(cap) as reader:
            recorded = b"".join(bytes(f) for _, f in reader)
        src = open_source(f"replay://{cap}?speed=max")
        buf = memoryview(bytearray(1 << 16))
        played = bytearray()
        src.open()
        try:
            while True:
                try:
                    n = src.readinto(buf)
                except EndOfSource:
                    break
                played += buf[:n]
        finally:
            src.close()
        assert bytes(played) == recorded
        dec = FrameDecoder()
        frames = [(f.header.scan_number, f.mz_axis().copy()) for f in dec.feed(bytes(played))]
        assert [n for n, _ in frames] == [1, 2] and dec.stats.frames == 2 and dec.stats.bytes_skipped == 0

    def test_existing_capture_is_never_replaced_without_force(self, tmp_path):
        cap = tmp_path / "real.isc"
        cap.write_bytes(b"precious")
        with pytest.raises(FileExistsError):
            import_mzml(REAL, cap)
        assert cap.read_bytes() == b"precious"
        import_mzml(REAL, cap, overwrite=True)
        assert capture_info(cap).scans == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == ["real.isc"]  # no temporary left

    def test_not_mzml_is_a_clear_error(self, tmp_path):
        bad = tmp_path / "bad.mzML"
        bad.write_text("<notmzml/>")
        with pytest.raises(MzMLError, match="no <run> element"):
            import_mzml(bad, tmp_path / "x.isc")
        bad.write_text("this is not xml")
        with pytest.raises(MzMLError, match="not a readable mzML"):
            import_mzml(bad, tmp_path / "x.isc")
        assert not (tmp_path / "x.isc").exists()


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------

def test_mzml_capture_mzml_keeps_arrays_times_ids_and_instrument(tmp_path):
    cap, out = tmp_path / "real.isc", tmp_path / "again.mzML"
    import_mzml(REAL, cap)
    export_capture(cap, out)
    assert xsd_valid(out)
    original = [s for s in pyteomics_mzml.read(str(REAL)) if "profile spectrum" in s]
    again = list(pyteomics_mzml.read(str(out)))
    assert len(again) == len(original) == 2
    for a, b in zip(original, again):
        assert b["id"] == "scan=" + a["id"].split("scan=")[1]
        assert b["ms level"] == a["ms level"] and ("positive scan" in b) == ("positive scan" in a)
        ta, tb = a["scanList"]["scan"][0]["scan start time"], b["scanList"]["scan"][0]["scan start time"]
        assert tb == pytest.approx(ta, rel=1e-12)
        np.testing.assert_array_equal(b["m/z array"], a["m/z array"])
        np.testing.assert_array_equal(b["intensity array"], a["intensity array"])
        assert b["intensity array"].dtype == np.float32
    doc = etree.parse(str(out))
    assert doc.find(".//m:instrumentConfiguration/m:cvParam", NS).get("name") == "LTQ FT"
    analyzers = {p.get("name") for p in doc.iterfind(".//m:analyzer/m:cvParam", NS)}
    assert analyzers == {"fourier transform ion cyclotron resonance", "radial ejection linear ion trap"}


def test_capture_mzml_capture_keeps_samples_scan_numbers_and_device_times(tmp_path):
    cap, _ = sim_capture(tmp_path / "run.isc", 25, start_time_ns=2**62 + 12345)  # beyond float64's 2**53
    export_capture(cap, tmp_path / "run.mzML")
    import_mzml(tmp_path / "run.mzML", tmp_path / "back.isc")
    a, b = decoded_scans(cap), decoded_scans(tmp_path / "back.isc")
    assert len(a) == len(b) > 15
    for (ha, sa, _), (hb, sb, mzb) in zip(a, b):
        assert hb.scan_number == ha.scan_number and hb.device_time_ns == ha.device_time_ns
        assert hb.ms_level == ha.ms_level and hb.polarity == ha.polarity
        np.testing.assert_array_equal(sb, sa.astype(np.float32))
        np.testing.assert_array_equal(mzb, mz_axis(ha.calibration, ha.n_samples))


# ---------------------------------------------------------------------------------------
# offline peak picking
# ---------------------------------------------------------------------------------------

@needs_dsp
class TestPeaks:
    def test_csv_rows_are_pick_centroids_of_the_real_run(self, tmp_path):
        import csv

        from dsp import pick_centroids

        out = tmp_path / "peaks.csv"
        summary = pick_peaks(REAL, out)
        # the 5 centroided MS2 scans pass through as they are (not re-picked), the 2 profile scans are picked
        assert summary.spectra == 7 and summary.skipped_centroided == 5 and summary.peaks > 100
        rows = list(csv.DictReader(open(out)))
        assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == summary.peaks
        truth = [s for s in independent_spectra(REAL) if "profile spectrum" in s["params"]]
        for ref in truth:
            scan = int(ref["id"].split("scan=")[1])
            p = pick_centroids(ref["arrays"]["mz"], ref["arrays"]["intensity"], min_snr=3.0)
            mine = [r for r in rows if int(r["scan"]) == scan]
            assert len(mine) == len(p) > 100
            np.testing.assert_array_equal([float(r["mz"]) for r in mine], p["mz"])
            np.testing.assert_allclose([float(r["intensity"]) for r in mine], p["intensity"], rtol=1e-8)
            assert all(r["polarity"] == "positive" and r["ms_level"] == "1" for r in mine)
            assert all(float(r["rt_min"]) == pytest.approx(ref["rt"] / 60) for r in mine)
        # the FT scan's base peak (810.415 m/z, stated in the file's cvParams) is found
        ft = [r for r in rows if r["scan"] == "1"]
        best = max(ft, key=lambda r: float(r["intensity"]))
        assert float(best["mz"]) == pytest.approx(810.4153, abs=0.001)

    def test_centroided_mzml_output(self, tmp_path):
        summary = pick_peaks(REAL, tmp_path / "a.mzML")
        spectra = list(pyteomics_mzml.read(str(tmp_path / "a.mzML")))
        # scans 1-2 picked, the centroided scans 3-7 passed through (their S/N unknown: NaN)
        assert len(spectra) == 7 and sum(len(s["m/z array"]) for s in spectra) == summary.peaks
        assert all("centroid spectrum" in s and "signal to noise array" in s for s in spectra)
        assert [s["id"] for s in spectra] == [f"scan={k}" for k in range(1, 8)]
        assert np.isnan(spectra[2]["signal to noise array"]).all()
        assert xsd_valid(tmp_path / "a.mzML")
        doc = etree.parse(str(tmp_path / "a.mzML"))
        assert doc.find(".//m:instrumentConfiguration/m:cvParam", NS).get("name") == "LTQ FT"
        methods = {p.get("name") for p in doc.iterfind(".//m:processingMethod/m:cvParam", NS)}
        assert {"Conversion to mzML", "peak picking"} <= methods

    @needs_scan_work
    def test_capture_scans_are_picked_as_the_daemon_picks_them(self, tmp_path):
        from ionstream.processing import ScanWork

        import_mzml(REAL, tmp_path / "real.isc")
        pick_peaks(tmp_path / "real.isc", tmp_path / "b.mzML")
        work = ScanWork(dsp_params=dsp_params_from_config(), xic_windows=[])
        for (h, samples, mz), s in zip(decoded_scans(tmp_path / "real.isc"),
                                       pyteomics_mzml.read(str(tmp_path / "b.mzML"))):
            p = work.process(h, samples, mz).peaks
            np.testing.assert_array_equal(s["m/z array"], p["mz"])

    def test_bad_suffix(self, tmp_path):
        with pytest.raises(MzMLError, match=".csv or .mzML"):
            pick_peaks(REAL, tmp_path / "peaks.txt")


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

def run_cli(*args, cwd):
    return subprocess.run(IONSTREAM + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_import_export_and_errors(tmp_path):
    r = run_cli("import", str(REAL), "-o", "real.isc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 profile spectra (MS1: 2) from run 'small' (LTQ FT)" in r.stdout and "skipped 5 centroided" in r.stdout
    r = run_cli("import", str(REAL), "-o", "real.isc", cwd=tmp_path)
    assert r.returncode == 2 and "exists; give --force" in r.stderr
    r = run_cli("export", "real.isc", "-o", "real.mzML", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 profile spectra (MS1: 2)" in r.stdout
    assert len(list(pyteomics_mzml.read(str(tmp_path / "real.mzML")))) == 2
    r = run_cli("export", "missing.isc", "-o", "x.mzML", cwd=tmp_path)
    assert r.returncode == 2 and "missing.isc" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("import", str(REAL), "-o", "ms3.isc", "--ms-level", "3", cwd=tmp_path)
    assert r.returncode == 1 and "no profile spectra" in r.stderr


@needs_scan_work
def test_imported_run_replays_through_the_live_pipeline(tmp_path):
    """import -> `ionstream run --source replay://` -> peaks topic: the daemon picks the real spectra."""
    import signal
    import socket

    from ionstream import Subscriber
    from ionstream.processing import ScanWork

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    cap = tmp_path / "real.isc"
    import_mzml(REAL, cap)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    seen = {}
    with Subscriber(endpoint, ["peaks"], timeout=60) as sub:
        daemon = subprocess.Popen(IONSTREAM + ["run", "--source", f"replay://{cap}?loop=1", "--endpoint", endpoint,
                                               "--control", "", "--no-status-line", "--duration", "90s"],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while len(seen) < 2:
                msg = sub.recv()
                seen.setdefault(msg.scan, (msg.header, msg["mz"].copy()))
        finally:
            daemon.send_signal(signal.SIGTERM)
            _out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    work = ScanWork(dsp_params=dsp_params_from_config(), xic_windows=[])
    for h, samples, mz in decoded_scans(cap):
        header, peaks_mz = seen[h.scan_number]
        assert header["ms_level"] == 1 and header["polarity"] == "positive"
        assert header["t_device_ns"] == h.device_time_ns
        np.testing.assert_array_equal(peaks_mz, work.process(h, samples, mz).peaks["mz"])
    assert len(seen[1][1]) > 50
