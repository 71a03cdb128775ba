"""Offline imaging: ion-image windows, capture parts, OpenCV segmentation, `ionstream images` on Dask."""
import json
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("cv2")
pytest.importorskip("dask.distributed")
pytest.importorskip("tifffile")

from instrument.capture import CaptureReader, CaptureWriter  # noqa: E402
from instrument.frames import encode_scan  # noqa: E402
from ionstream.offline.imaging.ionimages import IonWindow, WindowSums  # noqa: E402
from ionstream.offline.imaging.segment import score, segment_cells, segment_regions  # noqa: E402

from support import IONSTREAM  # noqa: E402
from test_imaging_sim import record_sim  # noqa: E402

N = 4096


@pytest.fixture(scope="module")
def imaging_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("imaging")
    truth = d / "run.truth.npz"
    cap = record_sim(d / "run.isc", f"sim://?imaging=64x64&samples={N}&rate=0&seed=3&truth={truth}")
    return cap, truth


class TestIonWindow:
    def test_parse_forms(self):
        assert IonWindow.parse("760.58:0.2") == IonWindow(760.58, 0.2)
        assert IonWindow.parse("1000:50ppm").half_width == pytest.approx(0.05)
        assert IonWindow.parse("1000").half_width == pytest.approx(0.5)
        assert IonWindow.parse("760.58").name == "mz760.58"

    @pytest.mark.parametrize("bad", ["", "abc", "760:", "760:-1", "0", "760:0"])
    def test_raises_naming_the_forms(self, bad):
        with pytest.raises(ValueError, match="MZ:HALFWIDTH"):
            IonWindow.parse(bad)


def _reference(axis, samples, w):
    """Window sum less width x the lower flank mean, written out plainly."""
    inside = (axis >= w.lo) & (axis <= w.hi)
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return 0.0
    a, b = idx[0], idx[-1] + 1
    n = b - a
    flanks = [samples[max(a - n, 0):a], samples[b:min(b + n, len(samples))]]
    means = [f.astype(float).mean() for f in flanks if f.size]
    base = min(means) if means else 0.0
    return float(samples[a:b].astype(float).sum() - n * base)


class TestWindowSums:
    @settings(max_examples=150, deadline=None)
    @given(n=st.integers(1, 300), seed=st.integers(0, 2**31),
           windows=st.lists(st.tuples(st.floats(90, 1010), st.floats(0.01, 80)), max_size=6))
    def test_matches_a_plain_reference(self, n, seed, windows):
        rng = np.random.default_rng(seed)
        axis = np.sort(rng.uniform(100, 1000, n))
        samples = rng.integers(0, 65535, n).astype(np.uint16)
        ws = [IonWindow(mz, hw) for mz, hw in windows]
        out = np.empty(1 + len(ws))
        WindowSums(axis, ws)(samples, out)
        assert out[0] == samples.astype(float).sum()
        for j, w in enumerate(ws):
            assert out[1 + j] == pytest.approx(_reference(axis, samples, w), rel=1e-9, abs=1e-6)


class TestCaptureParts:
    @pytest.mark.parametrize("compress", [False, True])
    def test_parts_yield_every_record_once(self, tmp_path, compress):
        path = tmp_path / "c.isc"
        frames = [encode_scan(np.full(100 + i, i, np.uint16), sequence=i, scan_number=i, device_time_ns=i)
                  for i in range(300)]
        with CaptureWriter(path, {}, compress=compress) as w:
            for f in frames:
                w.append(f, 0)
        with CaptureReader(path) as r:
            size = path.stat().st_size
            for n in (1, 2, 7, 50):
                cuts = [r.data_offset + (size - r.data_offset) * i // n for i in range(n + 1)]
                got = [bytes(rec.frame) for a, b in zip(cuts, cuts[1:]) for rec in r.records_iter(a, b)]
                assert got == frames


def _disc(shape, cx, cy, r):
    yy, xx = np.indices(shape)
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


class TestSegmentation:
    def test_touching_cells_of_one_type_are_split_and_scored(self):
        truth = np.zeros((40, 60), np.int32)
        truth[_disc(truth.shape, 15, 20, 7)] = 1
        truth[_disc(truth.shape, 28, 20, 6) & (truth == 0)] = 2  # touching the first
        truth[_disc(truth.shape, 45, 20, 5)] = 3
        image = np.where(truth > 0, 1000.0, 10.0) + np.random.default_rng(1).normal(0, 20, truth.shape)
        seg = segment_cells([image])
        s = score(seg.labels, truth)
        assert seg.count == 3 and s.count_error == 0 and s.mean_iou > 0.9

    def test_a_small_cell_pressed_against_a_big_one_is_cut_off(self):
        """Their union's distance transform has one summit: only the pinched outline parts them."""
        yy, xx = np.indices((40, 50))
        big = np.hypot(xx - 20, yy - 20) / 9.0
        small = np.hypot(xx - 20 - 0.92 * 12.5, yy - 20.4) / 3.5  # centres 0.92 x the summed radii apart
        truth = np.where((np.minimum(big, small) <= 1.0), np.where(big <= small, 1, 2), 0).astype(np.int32)
        image = np.where(truth > 0, 800.0, 5.0)
        assert segment_cells([image], min_defect_px=99.0).count == 1  # the watershed alone keeps them as one
        seg = segment_cells([image])
        s = score(seg.labels, truth)
        assert seg.count == 2 and s.mean_iou > 0.85

    def test_cells_of_two_types_part_where_the_marker_changes(self):
        truth = np.zeros((30, 40), np.int32)
        truth[5:25, 5:20] = 1
        truth[5:25, 20:35] = 2  # a straight shared edge: no neck, only the markers tell them apart
        a = np.where(truth == 1, 500.0, 0.0)
        b = np.where(truth == 2, 500.0, 0.0)
        seg = segment_cells([a, b])
        assert score(seg.labels, truth).mean_iou == 1.0 and list(seg.types[1:]) == [0, 1]

    def test_regions(self):
        truth = np.zeros((40, 40), np.int32)
        truth[5:35, 5:20] = 1
        truth[5:35, 20:35] = 2
        seg = segment_regions([np.where(truth == 1, 300.0, 0.0), np.where(truth == 2, 300.0, 0.0)])
        assert score(seg.labels, truth).mean_iou == 1.0

    def test_score_counts_unmatched_truth_as_zero(self):
        truth = np.zeros((10, 10), np.int32)
        truth[1:4, 1:4] = 1
        truth[6:9, 6:9] = 2
        pred = np.where(truth == 1, 1, 0)
        s = score(pred, truth)
        assert s.mean_iou == 0.5 and s.count_error == 0.5 and s.matched == 1

    def test_raises_without_images(self):
        with pytest.raises(ValueError, match="at least one ion image"):
            segment_cells([])


class TestImagesOnDask:
    def test_simulated_run_segmented_against_its_truth(self, imaging_run, tmp_path):
        from dask.distributed import Client, LocalCluster

        from ionstream.offline.imaging.run import ImagingJob, run_job

        cap, truth = imaging_run
        out = tmp_path / "out"
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            report = run_job(ImagingJob(str(cap), str(out), truth=str(truth)), client=client)
        assert report["counts"]["scans"] == 4096 and report["pixels_scanned"] == 4096
        assert report["score"]["cells"]["mean_iou"] >= 0.9 and report["score"]["cells"]["count_error"] <= 0.1
        assert report["score"]["regions"]["mean_iou"] >= 0.9
        import pyarrow.parquet as pq
        import tifffile

        cells = pq.read_table(out / "cells.parquet").to_pydict()
        assert len(cells["id"]) == report["cells"] and min(cells["area_px"]) >= 4
        assert cells["area_um2"][0] == cells["area_px"][0] * 100.0
        spectra = pq.read_table(out / "mean_spectra.parquet")
        assert spectra.num_rows == report["cells"] + report["regions"]
        tif = tifffile.imread(out / "labels" / "cells.tif")
        assert tif.dtype == np.uint16 and int(tif.max()) == report["cells"]
        img = tifffile.TiffFile(out / "images" / "tic.tif")
        assert img.pages[0].dtype == np.uint16 and json.loads(img.pages[0].description)["unit"] == "counts"
        assert (out / "overview.png").stat().st_size > 10_000

    def test_cli_refuses_a_capture_without_positions(self, tmp_path):
        cap = record_sim(tmp_path / "lc.isc", f"sim://?samples={N}&rate=0&count=5")
        r = subprocess.run(IONSTREAM + ["images", str(cap), "--mz", "500", "--out", str(tmp_path / "o"),
                                        "--workers", "1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "carry no pixel position" in r.stderr and "Traceback" not in r.stderr

    def test_cli_reports_a_missing_input_before_starting_anything(self, tmp_path):
        out = tmp_path / "o"
        r = subprocess.run(IONSTREAM + ["images", str(tmp_path / "none.isc"), "--mz", "500", "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()

    def test_cli_needs_a_window(self, imaging_run, tmp_path):
        r = subprocess.run(IONSTREAM + ["images", str(imaging_run[0]), "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "at least one m/z window" in r.stderr

    def test_cli_names_a_bad_window(self, imaging_run, tmp_path):
        r = subprocess.run(IONSTREAM + ["images", str(imaging_run[0]), "--mz", "abc", "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "MZ:HALFWIDTH" in r.stderr


def _worker_env():
    import os

    return os.environ.get("MALLOC_MMAP_THRESHOLD_")


def test_local_workers_get_a_fixed_mmap_threshold():
    """Regression: Dask's MALLOC_TRIM_THRESHOLD_ alone made every 128 KiB+ buffer an mmap in the
    workers (3x slower than in one process); our LocalCluster workers get a 32 MiB threshold."""
    from ionstream.offline.imaging.run import MMAP_THRESHOLD_BYTES, open_imaging_client

    client, cluster = open_imaging_client("local", 1)
    try:
        assert list(client.run(_worker_env).values()) == [str(MMAP_THRESHOLD_BYTES)]
    finally:
        client.close()
        cluster.close()
