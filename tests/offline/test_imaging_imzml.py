"""imzML export and import (pyimzML): round trips are exact, in continuous and processed modes."""
import subprocess

import numpy as np
import pytest

pytest.importorskip("pyimzml")

from pyimzml.ImzMLParser import ImzMLParser  # noqa: E402
from pyimzml.ImzMLWriter import ImzMLWriter  # noqa: E402

from ionstream.offline.imaging.imzml import export_imzml, import_imzml  # noqa: E402
from ionstream.offline.imaging.pixels import ImagingInputError, iter_part, plan_parts  # noqa: E402

from support import IONSTREAM  # noqa: E402
from test_imaging_sim import record_sim  # noqa: E402

N = 1024


def pixels(path):
    """{(x, y): (mz float64, intensity float64)} of a capture or imzML file, and its raster."""
    raster, parts = plan_parts(path)
    return raster, {(p.x, p.y): (np.array(p.mz, np.float64), np.array(p.intensity, np.float64))
                    for part in parts for p in iter_part(part)}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("imzml")
    return record_sim(d / "run.isc", f"sim://?imaging=16x16&samples={N}&rate=0&seed=5&pixel=25")


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]), k


@pytest.mark.parametrize("mode", ["continuous", "processed"])
def test_capture_to_imzml_to_capture_is_exact(capture, tmp_path, mode):
    rep = export_imzml(capture, tmp_path / "run.imzML", mode)
    assert rep.spectra == 256 and rep.mode == mode
    parser = ImzMLParser(rep.imzml)  # pyimzML reads what we wrote, by itself
    assert parser.imzmldict["pixel size x"] == 25.0 and len(parser.coordinates) == 256
    raster0, original = pixels(capture)
    raster1, from_imzml = pixels(rep.imzml)
    _same(original, from_imzml)
    assert raster1 == raster0
    back = import_imzml(rep.imzml, tmp_path / "back.isc")
    raster2, again = pixels(back.capture)
    _same(original, again)
    assert raster2 == raster0


def test_processed_imzml_from_other_software_comes_in(tmp_path):
    rng = np.random.default_rng(3)
    spectra = {}
    path = tmp_path / "other.imzML"
    with ImzMLWriter(str(path), mz_dtype=np.float64, intensity_dtype=np.float32, mode="processed") as w:
        for y in range(3):
            for x in range(4):
                mz = np.sort(rng.uniform(100, 900, 50 + x))
                inten = rng.uniform(0, 1e4, mz.size).astype(np.float32)
                w.addSpectrum(mz, inten, (x + 1, y + 1, 1))
                spectra[(x, y)] = (mz, inten.astype(np.float64))
    rep = import_imzml(path, tmp_path / "other.isc")
    assert rep.spectra == 12 and (rep.raster.width, rep.raster.height) == (4, 3)
    _, got = pixels(rep.capture)
    _same(spectra, got)
    out = export_imzml(rep.capture, tmp_path / "again.imzML")  # auto: different axes -> processed
    assert out.mode == "processed"
    _same(spectra, pixels(out.imzml)[1])


def test_continuous_refused_for_several_axes(tmp_path):
    path = tmp_path / "p.imzML"
    with ImzMLWriter(str(path), mode="processed") as w:
        w.addSpectrum(np.array([100.0, 200.0]), np.array([1.0, 2.0]), (1, 1, 1))
        w.addSpectrum(np.array([101.0, 201.0]), np.array([1.0, 2.0]), (2, 1, 1))
    cap = import_imzml(path, tmp_path / "p.isc").capture
    with pytest.raises(ValueError, match="2 different m/z axes"):
        export_imzml(cap, tmp_path / "c.imzML", "continuous")


def test_import_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "bad.imzML"
    bad.write_text("not xml")
    with pytest.raises(ImagingInputError, match="not a readable imzML file"):
        import_imzml(bad, tmp_path / "x.isc")


def test_cli_round_trip(capture, tmp_path):
    r = subprocess.run(IONSTREAM + ["imzml", "export", str(capture), "-o", str(tmp_path / "r.imzML")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "256 spectra (continuous mode)" in r.stderr, r.stderr
    r = subprocess.run(IONSTREAM + ["imzml", "import", str(tmp_path / "r.imzML"), "-o", str(tmp_path / "r.isc")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _same(pixels(capture)[1], pixels(tmp_path / "r.isc")[1])
    r = subprocess.run(IONSTREAM + ["imzml", "import", str(tmp_path / "missing.imzML"), "-o", str(tmp_path / "m.isc")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_zlib_compressed_imzml_is_refused_by_name(tmp_path):
    from pyimzml.compression import ZlibCompression

    path = tmp_path / "z.imzML"
    with ImzMLWriter(str(path), mode="processed", intensity_compression=ZlibCompression()) as w:
        w.addSpectrum(np.array([100.0, 200.0]), np.array([1.0, 2.0]), (1, 1, 1))
    with pytest.raises(ImagingInputError, match="zlib-compressed"):
        import_imzml(path, tmp_path / "z.isc")
