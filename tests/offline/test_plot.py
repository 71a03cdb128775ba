"""`ionstream plot`: a real picture of a real scan, checked as pixels and as drawn data."""
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pyteomics")

from instrument.capture import CaptureWriter  # noqa: E402
from instrument.simulator import SimConfig, Simulator  # noqa: E402
from ionstream.cli import plot  # noqa: E402

REAL = Path(__file__).parents[1] / "data" / "small_ltqft.mzML"
IONSTREAM = [sys.executable, "-P", "-m", "ionstream.cli"]


def _has_dsp() -> bool:
    try:
        from dsp import pick_centroids  # noqa: F401
    except ImportError:
        return False
    return True


def sim_capture(path, n=24, samples=8192, ms_level=1):
    sim = Simulator(SimConfig(n_samples=samples, seed=5, status_interval_s=0.5, ms_level=ms_level))
    with CaptureWriter(path, {"source": {"url": "sim://?seed=5", "kind": "sim"}}) as w:
        for i, (frame, _) in enumerate(itertools.islice(sim, n)):
            w.append(frame, i * 50_000_000)
    return path


def run_cli(*args, cwd):
    return subprocess.run(IONSTREAM + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_png_of_the_real_ft_scan(tmp_path):
    import matplotlib.image

    r = run_cli("plot", str(REAL), "--scan", "1", "-o", "scan1.png", "--tic", "--size", "8", "4", "--dpi", "100",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "scan 1 (MS1, t = 0.296 s), 19,914 points" in r.stdout
    img = matplotlib.image.imread(tmp_path / "scan1.png")
    assert img.shape[:2] == (400, 800)
    ink = (img[..., :3].mean(axis=2) < 0.5).mean()
    assert 0.003 < ink < 0.5  # axes, labels and a trace: neither blank nor filled


def test_drawn_trace_is_the_scan_and_tic_is_one_ms_level():
    spectrum, tic = plot.find_scan(REAL, index=1, tic=True)
    assert spectrum.scan == 2 and spectrum.ms_level == 1
    fig = plot.draw(spectrum, None, tic=tic)
    ax, ax_tic = fig.axes
    x, y = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, spectrum.mz)
    np.testing.assert_array_equal(y, spectrum.intensity.astype(np.float64))
    assert list(tic[2]) == [1, 2]  # the MS2 scans 3..7 are not in the MS1 TIC
    assert "scan 2 · MS1 · positive · profile" in ax.get_title()


def test_centroided_scan_is_drawn_as_sticks(tmp_path):
    spectrum, _ = plot.find_scan(REAL, scan=4)
    assert spectrum.centroided and spectrum.ms_level == 2
    fig = plot.draw(spectrum, None)
    assert len(fig.axes[0].collections[0].get_segments()) == len(spectrum.mz)


@pytest.mark.skipif(not _has_dsp(), reason="dsp.pick_centroids (the DSP stage) is not built yet")
def test_peaks_are_marked_and_labelled(tmp_path):
    spectrum, _ = plot.find_scan(REAL, scan=1)
    peaks = plot.pick(spectrum, None)
    assert peaks is not None and len(peaks["mz"]) > 100
    fig = plot.draw(spectrum, peaks, labels=4)
    ax = fig.axes[0]
    marker = next(line for line in ax.lines if line.get_marker() == "v")
    np.testing.assert_array_equal(marker.get_xdata(), peaks["mz"])
    labels = [float(t.get_text()) for t in ax.texts]
    assert len(labels) == 4
    assert labels[0] == pytest.approx(810.415, abs=1e-3)  # the tallest peak first
    assert min(abs(a - b) for i, a in enumerate(labels) for b in labels[i + 1:]) >= 0.025 * 1800  # apart
    cap = sim_capture(tmp_path / "run.isc")
    r = run_cli("plot", str(cap), "--scan", "6", "-o", "s.svg", cwd=tmp_path)
    assert r.returncode == 0 and "peaks marked" in r.stdout
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


def test_capture_scan_svg_and_errors(tmp_path):
    cap = sim_capture(tmp_path / "run.isc", n=12, samples=2048)
    r = run_cli("plot", str(cap), "--scan", "3", "--no-peaks", "--mz", "300", "700", "-o", "s.svg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "<svg" in (tmp_path / "s.svg").read_text()
    r = run_cli("plot", str(cap), "--scan", "99", "-o", "x.png", cwd=tmp_path)
    assert r.returncode == 2 and "has no scan 99 (scans 0..9)" in r.stderr
    r = run_cli("plot", "nope.isc", "-o", "x.png", cwd=tmp_path)
    assert r.returncode == 2 and "nope.isc" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("plot", str(cap), "-o", "x.nosuchformat", "--no-peaks", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
