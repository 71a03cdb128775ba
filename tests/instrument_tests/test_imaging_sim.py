"""The simulator's imaging mode: a synthetic sample rastered pixel by pixel, with ground truth."""
import subprocess

import numpy as np
import pytest

from instrument.capture import CaptureReader, CaptureWriter
from instrument.frames import FrameDecoder, FrameType
from instrument.imaging import frame_position
from instrument.imaging_sample import SampleConfig, load_truth, make_sample
from instrument.simulator import SimConfig, Simulator
from instrument.sources import open_source
from instrument.sources.base import EndOfSource, SourceConfigError
from instrument.spectrum_model import mz_to_index

from support import IONSTREAM

N = 4096


def record_sim(path, url):
    """Record a sim:// source to a capture file in-process (no daemon): the frames as the source emits them."""
    src = open_source(url)
    src.open()
    buf = memoryview(bytearray(1 << 16))
    dec = FrameDecoder()
    with CaptureWriter(path, {"source": src.describe()}, compress=False) as w:
        try:
            while True:
                for f in dec.feed(buf[:src.readinto(buf)]):
                    w.append(f.raw, 0)
        except EndOfSource:
            pass
    return path


def _scans(sim, n):
    """(position, samples copy) of the next n SCAN frames."""
    out = []
    dec = FrameDecoder()
    while len(out) < n:
        frame, truth = next(sim)
        for f in dec.feed(frame):
            if f.header.frame_type == FrameType.SCAN:
                out.append((frame_position(f), f.samples().copy()))
    return out


class TestSample:
    def test_truth_has_varied_cells_some_touching_and_typed_regions(self):
        s = make_sample(SampleConfig(seed=3), n_samples=N)
        sizes = np.bincount(s.cells.ravel())[1:]
        assert s.n_cells >= 10 and sizes.min() >= 5 and sizes.max() >= 2 * sizes.min()
        # touching: two different cells on horizontally or vertically adjacent pixels
        a, b = s.cells[:, :-1], s.cells[:, 1:]
        c, d = s.cells[:-1, :], s.cells[1:, :]
        touching = ((a > 0) & (b > 0) & (a != b)).any() or ((c > 0) & (d > 0) & (c != d)).any()
        assert touching
        assert set(np.unique(s.regions)) == {0, 1, 2, 3}
        assert (s.cells[s.regions == 0] == 0).all()  # cells lie in the tissue
        assert set(s.cell_type[1:]) == {0, 1} and set(s.region_type[1:]) == {0, 1, 2}

    def test_same_seed_same_sample_other_seed_other(self):
        a = make_sample(SampleConfig(seed=5), n_samples=N)
        b = make_sample(SampleConfig(seed=5), n_samples=N)
        c = make_sample(SampleConfig(seed=6), n_samples=N)
        assert (a.cells == b.cells).all() and (a.heights(10, 30) == b.heights(10, 30)).all()
        assert not (a.cells == c.cells).all()

    def test_truth_file_round_trip(self, tmp_path):
        s = make_sample(SampleConfig(seed=2), n_samples=N)
        t = load_truth(s.save_truth(tmp_path / "t.npz"))
        assert (t["cells"] == s.cells).all() and (t["regions"] == s.regions).all()
        assert t["meta"]["config"]["seed"] == 2 and len(t["meta"]["markers"]) == 8

    def test_raises_on_a_tiny_raster(self):
        with pytest.raises(ValueError, match="at least 16x16"):
            SampleConfig(width=8, height=64)


class TestImagingSimulator:
    def test_scans_carry_their_pixels_row_by_row(self):
        sim = Simulator(SimConfig(n_samples=N, imaging="16x16", status_interval_s=0))
        got = _scans(sim, 256 + 3)
        assert [(p.x, p.y) for p, _ in got[:20]] == [(i % 16, i // 16) for i in range(20)]
        assert (got[256][0].x, got[256][0].y) == (0, 0)  # the raster repeats
        assert got[0][0].raster.width == 16 and got[0][0].raster.pixel_size_x_um == 10.0

    def test_marker_ion_is_where_the_truth_puts_cells(self):
        sim = Simulator(SimConfig(n_samples=N, imaging="64x64", seed=3, status_interval_s=0))
        sample = sim.sample
        mz = sample.marker_mz("cell_type")[0]
        i = int(round(float(mz_to_index(sim.calibration, mz))))
        got = {(p.x, p.y): s for p, s in _scans(sim, 64 * 64)}
        inside = [got[(x, y)][i - 2:i + 3].astype(float).sum() for y, x in zip(*np.nonzero(
            (sample.cells > 0) & (sample.cell_type[sample.cells] == 0)))]
        outside = [got[(x, y)][i - 2:i + 3].astype(float).sum() for y, x in zip(*np.nonzero(sample.cells == 0))]
        assert min(inside) > max(outside)

    def test_next_into_gives_the_same_bytes(self):
        a = Simulator(SimConfig(n_samples=N, imaging="16x16", seed=4))
        b = Simulator(SimConfig(n_samples=N, imaging="16x16", seed=4))
        buf = bytearray(b.scan_frame_size)
        for _ in range(30):
            frame, _ = next(a)
            n, _ = b.next_into(buf)
            assert bytes(buf[:n]) == frame

    def test_ordinary_mode_keeps_80_byte_headers(self):
        sim = Simulator(SimConfig(n_samples=N))
        assert sim.header_size == 80 and sim.scan_frame_size == 80 + 2 * N + 4
        assert all(p is None for p, _ in _scans(sim, 3))

    def test_bad_imaging_option_is_named(self):
        with pytest.raises(ValueError, match="imaging must be WIDTHxHEIGHT"):
            SimConfig(imaging="64by64")


class TestSimSourceAndCapture:
    def test_sim_source_runs_one_raster_writes_truth_and_capture_keeps_positions(self, tmp_path):
        truth = tmp_path / "t.npz"
        src = open_source(f"sim://?imaging=16x16&samples={N}&rate=0&seed=2&truth={truth}")
        src.open()
        assert truth.exists() and src.finite and src.count == 256
        cap = tmp_path / "run.isc"
        buf = memoryview(bytearray(1 << 16))
        dec = FrameDecoder()
        with CaptureWriter(cap, {"source": src.describe()}) as w:
            try:
                while True:
                    n = src.readinto(buf)
                    for f in dec.feed(buf[:n]):
                        w.append(f.raw, 0)
            except EndOfSource:
                pass
        with CaptureReader(cap) as r:
            assert r.description["source"]["imaging"] == "16x16"
            dec = FrameDecoder()
            pos = [frame_position(f) for _, raw in r for f in dec.feed(raw) if f.header.frame_type == FrameType.SCAN]
        assert [(p.x, p.y) for p in pos] == [(i % 16, i // 16) for i in range(256)]

    def test_sim_source_refuses_a_malformed_raster(self):
        with pytest.raises(SourceConfigError, match="imaging must be WIDTHxHEIGHT"):
            open_source("sim://?imaging=big")

    def test_simulate_command_writes_one_raster_and_the_truth(self, tmp_path):
        out, truth = tmp_path / "frames.bin", tmp_path / "truth.npz"
        r = subprocess.run(IONSTREAM + ["simulate", "--imaging", "16x16", "--samples", str(N), "--rate", "0",
                                        "--status-interval", "0", "--out", str(out), "--truth", str(truth)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        dec = FrameDecoder()
        pos = [frame_position(f) for f in dec.feed(out.read_bytes())]
        assert len(pos) == 256 and (pos[-1].x, pos[-1].y) == (15, 15)
        assert load_truth(truth)["cells"].shape == (16, 16)


def test_record_keeps_full_size_float32_pixel_scans(tmp_path):
    """Regression: a 65536-point float32 scan with the 32-byte PIXEL extension did not fit the
    default ring slot (sized for an 80-byte header) and every scan was dropped as oversize."""
    cap = tmp_path / "f32.isc"
    r = subprocess.run(IONSTREAM + ["record", "--source", "sim://?imaging=16x16&dtype=float32&rate=0",
                                    "--out", str(cap)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    with CaptureReader(cap) as reader:
        dec = FrameDecoder()
        scans = [f.header.n_samples for _, raw in reader for f in dec.feed(raw)
                 if f.header.frame_type == FrameType.SCAN]
    assert scans == [65536] * 256


def test_replay_carries_the_positions(tmp_path):
    """A capture of an imaging run replayed and recorded again: the same frames, positions and all."""
    first = tmp_path / "a.isc"
    src = f"sim://?imaging=16x16&samples={N}&rate=0&seed=7"
    for source, out in ((src, first), (f"replay://{first}?speed=max", tmp_path / "b.isc")):
        r = subprocess.run(IONSTREAM + ["record", "--source", source, "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    def positions(path):
        with CaptureReader(path) as reader:
            dec = FrameDecoder()
            return [(f.header.scan_number, frame_position(f)) for _, raw in reader for f in dec.feed(raw)
                    if f.header.frame_type == FrameType.SCAN]

    a, b = positions(first), positions(tmp_path / "b.isc")
    assert len(a) == 256 and a == b
    assert (a[17][1].x, a[17][1].y) == (1, 1)
