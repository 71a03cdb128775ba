"""ionstream reprocess on a real 2-worker LocalCluster, checked against a live replay of the same capture.

The live side is the daemon's Pipeline in this process, replaying the capture at full speed
and publishing over real ZeroMQ on 127.0.0.1 to a Subscriber; the reprocess side is Dask
worker processes writing Parquet. Peaks must be equal array for array, classes label for
label and probability for probability (ONNX Runtime on the CPU gives the same bits for a
spectrum whatever batch it runs in: checked below, so exact comparison is justified), and
elution events event for event.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.distributed")
pytest.importorskip("pyarrow")

from ionstream.benchmarks.reprocess import write_sim_capture
from ionstream.offline.reprocess import read_results, reprocess
from ionstream.offline.reprocess_settings import (
    Settings,
    capture_identity,
    find_captures,
    output_names,
    settings_hash,
)
from ionstream.offline.reprocess_worker import classifier_loads

SCANS = 200
SAMPLES = 4096
XIC = ((400.0, 420.0), (700.0, 760.0))


def _scan_work_ready() -> bool:
    from ionstream.processing import ScanWork

    try:
        ScanWork(dsp_params={"smoothing": "savgol", "min_snr": 3.0}, xic_windows=[])
    except ImportError:
        return False
    return True


needs_dsp = pytest.mark.skipif(not _scan_work_ready(), reason="ScanWork cannot import its DSP (dsp.ScanProcessor)")


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    d = tmp_path_factory.mktemp("captures")
    paths = []
    for i in range(3):
        p = d / f"run{i}.isc"
        write_sim_capture(p, SCANS, SAMPLES, seed=11 + i)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit="2GiB")
    client = Client(cluster)
    yield client, cluster
    client.close()
    cluster.close()


def settings(**kw) -> Settings:
    return Settings(xic=XIC, **kw)


def live_replay(capture: Path, expect_scans: int) -> dict:
    """Run the daemon's Pipeline on replay://capture?speed=max; collect peaks, class and trace messages."""
    from ionstream import Subscriber
    from ionstream.config import Config
    from ionstream.daemon.pipeline import Pipeline

    config = Config()
    config.source.url = f"replay://{capture}?speed=max"
    config.dsp.workers = 2
    config.dsp.xic = [list(w) for w in XIC]
    config.inference.backend = "onnxruntime"
    config.publish.endpoint = "tcp://127.0.0.1:*"
    config.publish.control = ""
    config.publish.hwm = 100_000
    config.ring.max_samples = SAMPLES
    pipeline = Pipeline(config)
    pub = pipeline.publisher
    pub.start()
    topics = ("peaks", "class", "trace")
    got = {t: [] for t in topics}
    try:
        with Subscriber(pub.endpoint, topics, timeout=30.0, rcvhwm=100_000) as sub:
            # ZeroMQ's slow joiner: publish nothing until every subscription has arrived.
            deadline = time.monotonic() + 10
            while not all(pub.wait_for_subscribers(1, t, timeout=0.005) for t in topics):
                assert time.monotonic() < deadline, "subscription never reached the publisher"
                sub.socket.poll(5)
            pub.start = lambda *a, **k: pub  # already started; Pipeline.start() would start it again
            pipeline.start()
            while min(len(v) for v in got.values()) < expect_scans:
                msg = sub.recv()
                assert msg.gap == 0, f"live side missed {msg.gap} {msg.topic} message(s)"
                got[msg.topic].append(msg)
        deadline = time.monotonic() + 20
        while not pipeline.finished():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        pipeline.stop()
    assert pipeline.dsp.errors == 0 and pipeline.snapshot()["drops_total"] == 0
    return got


# ---------------------------------------------------------------------------------------
# Pieces that need no cluster
# ---------------------------------------------------------------------------------------

class TestSettings:
    def test_from_config_is_what_the_daemon_builds(self):
        from ionstream.config import Config

        config = Config()
        config.dsp.smoothing, config.dsp.min_snr, config.dsp.xic = "gaussian", 5.0, [[100, 200]]
        s = Settings.from_config(config)
        # ionstream.daemon.pipeline.Pipeline._make_work passes exactly these to ScanWork
        assert s.dsp_params == {"smoothing": "gaussian", "min_snr": 5.0, "preset": ""}
        assert s.xic == ((100.0, 200.0),) and s.trace_names == ["tic", "xic:100-200"]
        assert s.backend == "onnxruntime"  # auto -> the CPU reference here
        assert Settings.from_dict(s.to_dict()) == s

    @needs_dsp
    def test_preset_reaches_the_dsp(self):
        """`[dsp] preset` was dropped by reprocess: its scans were picked with the TOF defaults."""
        from ionstream.config import Config
        from ionstream.offline.reprocess_worker import _scan_work

        config = Config()
        config.dsp.preset = "fticr"
        s = Settings.from_config(config)
        assert s.dsp_params["preset"] == "fticr"
        assert Settings.from_dict(s.to_dict()) == s
        params = _scan_work(s, None)._dsp.params
        assert (params.smoothing, params.detect_sigma, params.min_width) == ("none", 0.0, 0.0)
        resolved = dataclasses.replace(s, backend="none").resolved()
        assert resolved["dsp"]["preset"] == "fticr"
        assert settings_hash(resolved) != settings_hash(Settings(backend="none").resolved())

    def test_hash_follows_results_not_paths(self, tmp_path):
        import shutil

        from inference.bundle import DEFAULT_BUNDLE

        base = settings_hash(settings().resolved())
        assert settings_hash(settings().resolved()) == base
        assert settings_hash(settings(min_snr=4.0).resolved()) != base
        assert settings_hash(settings(backend="none").resolved()) != base
        copy = tmp_path / "bundle"
        shutil.copytree(DEFAULT_BUNDLE, copy)  # the same model file elsewhere: same results
        assert settings_hash(settings(model=str(copy)).resolved()) == base
        doc = json.loads((copy / "model.json").read_text())
        onnx = copy / "model.onnx"
        onnx.write_bytes(onnx.read_bytes() + b"\0")  # another model: another hash
        doc["files"]["fp32"].pop("sha256")
        (copy / "model.json").write_text(json.dumps(doc))
        assert settings_hash(settings(model=str(copy)).resolved()) != base


class TestCaptures:
    def test_identity_survives_a_copy_and_sees_a_change(self, captures, tmp_path):
        import shutil

        ident = capture_identity(captures[0])
        copy = tmp_path / "x.isc"
        shutil.copy(captures[0], copy)
        assert capture_identity(copy) == ident
        with open(copy, "r+b") as f:
            f.seek(-10, 2)
            f.write(b"0123456789")
        assert capture_identity(copy) != ident

    def test_directories_are_searched_and_names_are_unique(self, tmp_path):
        for d in ("a", "b"):
            (tmp_path / d).mkdir()
            (tmp_path / d / "run1.isc").write_bytes(b"")
        (tmp_path / "a" / "notes.txt").write_text("")
        found = find_captures([tmp_path, tmp_path / "a" / "run1.isc"])
        assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/run1.isc", "b/run1.isc"]
        names = output_names(found)
        assert len(set(names)) == 2 and all(n.startswith("run1-") for n in names)
        assert output_names([tmp_path / "a" / "run1.isc"]) == ["run1"]


def test_onnxruntime_cpu_is_batch_invariant():
    """Why classes are compared exactly: a spectrum's probabilities do not depend on its batch."""
    from inference.backend import open_backend
    from inference.bundle import load_bundle

    bundle = load_bundle(None)
    backend = open_backend(bundle, "onnxruntime", max_batch=32)
    x = np.sqrt(np.random.default_rng(0).random((32, bundle.feature_spec.bins), np.float32))
    full = backend.predict(x)
    for size in (1, 3, 7, 32):
        parts = np.concatenate([backend.predict(x[i:i + size]) for i in range(0, 32, size)])
        assert np.array_equal(parts, full), size


# ---------------------------------------------------------------------------------------
# On the cluster
# ---------------------------------------------------------------------------------------

@needs_dsp
def test_local_cluster_results_equal_live_replay(captures, cluster, tmp_path):
    client, _ = cluster
    capture = captures[0]
    report = reprocess([capture], tmp_path / "out", settings(), client=client)
    assert report.done == 1 and not report.failed, report.rows
    res = read_results(tmp_path / "out" / "run0")
    live = live_replay(capture, SCANS)

    # peaks: one message per scan live; rows grouped by scan in Parquet
    peaks = res["peaks"].to_pydict()
    scan_col = np.asarray(peaks["scan"])
    assert [m.scan for m in live["peaks"]] == list(range(SCANS))
    assert sorted(set(scan_col.tolist())) <= list(range(SCANS))
    total = 0
    for msg in live["peaks"]:
        rows = scan_col == msg.scan
        for name, dtype in (("mz", "<f8"), ("intensity", "<f4"), ("area", "<f4"), ("fwhm", "<f4"), ("snr", "<f4")):
            mine = np.asarray(peaks[name], dtype=dtype)[rows]
            assert msg[name].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(mine, msg[name], err_msg=f"scan {msg.scan} {name}")
        total += len(msg["mz"])
    assert total == len(scan_col) > 0

    # per-scan TIC and XIC are the trace topic's values
    scans = res["scans"].to_pydict()
    assert scans["scan"] == list(range(SCANS))
    for i, msg in enumerate(live["trace"]):
        values = np.concatenate(([scans["tic"][i]], scans["xic"][i]))
        np.testing.assert_array_equal(values, msg["values"])
        assert msg.header["names"] == settings().trace_names

    # classes: labels exactly, probabilities bit for bit (batch-invariant backend, see above)
    classes = res["classes"].to_pydict()
    assert classes["scan"] == [m.scan for m in live["class"]] == list(range(SCANS))
    assert classes["label"] == [m.header["label"] for m in live["class"]]
    # the out-of-distribution verdict too (inference.ood), field for field as the class message
    for key in ("model_label", "unknown_reason"):
        assert classes[key] == [m.header[key] for m in live["class"]], key
    np.testing.assert_allclose(classes["coverage"], [m.header["coverage"] for m in live["class"]], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(classes["probabilities"], np.float32),
                                  np.stack([m["probabilities"] for m in live["class"]]))
    np.testing.assert_array_equal(np.asarray(classes["confidence"], np.float32),
                                  np.asarray([m.header["confidence"] for m in live["class"]], np.float32))

    # elution events: the same (trace, kind) decided at the same scan, in the same order
    live_events = [(m.scan, e["trace"], e["kind"]) for m in live["trace"] for e in m.header["events"]]
    mine = [(e["scan"], e["trace"], e["kind"]) for e in res["events"].to_pylist()]
    assert mine == live_events


@needs_dsp
def test_model_loaded_once_per_worker_and_rerun_skips(captures, cluster, tmp_path):
    client, _ = cluster
    out = tmp_path / "out"
    before = client.run(classifier_loads)
    report = reprocess(captures, out, settings(), client=client)
    assert report.done == 3 and report.scans_processed == 3 * SCANS
    after = client.run(classifier_loads)
    # 3 captures on 2 workers: a worker loads the model for its first task only
    assert all(after[w] - before.get(w, 0) <= 1 for w in after), (before, after)
    assert len(os.listdir(out)) == 4  # run0..2 + summary.parquet, no temporary directories left

    starts = []
    again = reprocess(captures, out, settings(), client=client, on_start=lambda *a: starts.append(a))
    assert again.skipped == 3 and again.done == 0 and starts[0][1] == 0  # nothing submitted
    changed = reprocess(captures[:1], out, settings(min_snr=6.0), client=client)
    assert changed.done == 1
    assert read_results(out / "run0")["done"]["settings"]["dsp"]["min_snr"] == 6.0

    import pyarrow.parquet as pq

    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [r["status"] for r in summary] == ["done"] and summary[0]["scans"] == SCANS


@needs_dsp
def test_corrupt_captures_are_reported_and_the_rest_finish(captures, cluster, tmp_path):
    client, _ = cluster
    bad = tmp_path / "bad.isc"
    bad.write_bytes(b"not a capture at all")
    cut = tmp_path / "cut.isc"
    cut.write_bytes(captures[1].read_bytes()[:12])  # magic, then the header is cut short
    missing = tmp_path / "missing.isc"
    torn = tmp_path / "torn.isc"
    torn.write_bytes(captures[2].read_bytes()[:-1000])  # a crash mid-record: readable, tail ignored
    report = reprocess([bad, captures[0], cut, missing, torn], tmp_path / "out", settings(), client=client)
    status = {Path(r["capture"]).name: r for r in report.rows}
    assert status["run0.isc"]["status"] == "done" and status["torn.isc"]["status"] == "done"
    assert status["torn.isc"]["torn_tail_bytes"] > 0 and status["torn.isc"]["scans"] == SCANS - 1
    assert "NotACaptureError" in status["bad.isc"]["error"]
    assert "CaptureError" in status["cut.isc"]["error"] and "cut short" in status["cut.isc"]["error"]
    assert "FileNotFoundError" in status["missing.isc"]["error"]
    assert {r["status"] for r in report.failed} == {"failed"} and len(report.failed) == 3
    assert not (tmp_path / "out" / "bad").exists()


@needs_dsp
def test_cli_on_an_existing_scheduler(captures, cluster, tmp_path):
    _, cluster_ = cluster
    bad = tmp_path / "bad.isc"
    bad.write_bytes(b"garbage")
    cmd = [sys.executable, "-P", "-m", "ionstream.cli", "reprocess", str(captures[0]), str(bad), "--out",
           str(tmp_path / "out"), "--scheduler", cluster_.scheduler_address]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # not the checkout: its cext/ (sources, no build) would shadow the installed one
    assert proc.returncode == 1, proc.stderr  # one capture failed; the other finished
    assert "1 done, 0 skipped, 1 failed" in proc.stdout
    assert "NotACaptureError" in proc.stderr and "dashboard" in proc.stderr.lower()
    assert (tmp_path / "out" / "run0" / "done.json").exists()
    proc = subprocess.run([c for c in cmd if c != str(bad)], check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "0 done, 1 skipped, 0 failed" in proc.stdout, proc.stderr


@needs_dsp
def test_in_process_without_classifier_or_windows(captures, tmp_path):
    """process_capture is a plain function: no cluster needed; every table exists, typed, with metadata."""
    import pyarrow.parquet as pq

    from ionstream.offline.reprocess import plan
    from ionstream.offline.reprocess_worker import process_capture

    s = Settings(backend="none")
    resolved = s.resolved()
    tasks, rows = plan(captures[:1], tmp_path, settings_hash(resolved), resolved, s)
    assert rows == [] and len(tasks) == 1
    row = process_capture(tasks[0])
    assert row["status"] == "done" and row["scans"] == SCANS and row["classified"] == 0, row
    res = read_results(tmp_path / "run0")
    assert res["classes"].num_rows == 0 and res["classes"].schema.field("probabilities").type.value_type == "float"
    assert res["scans"].column("xic").to_pylist() == [[]] * SCANS
    assert str(res["peaks"].schema.field("mz").type) == "double" and str(res["peaks"].schema.field("snr").type) == "float"
    meta = json.loads(pq.read_schema(tmp_path / "run0" / "peaks.parquet").metadata[b"ionstream"])
    assert meta["settings"]["backend"] == "none" and meta["capture_identity"] == capture_identity(captures[0])
    assert res["done"]["key"] == tasks[0]["key"]


@needs_dsp
def test_a_record_that_is_not_one_frame_is_dropped_as_capture_info_counts_it(captures, tmp_path):
    """Third-party records that split a frame in two: reprocess, the mzML reader and `capture info`
    all read a capture with instrument.capture.iter_frames (one frame per record), so none of them
    joins the halves into a scan and all report the same number of scans (review item 6)."""
    from instrument.capture import CaptureReader, CaptureWriter, capture_info
    from ionstream.offline.reprocess import plan
    from ionstream.offline.reprocess_worker import process_capture
    from ionstream.offline.spectra import read_capture_spectra

    with CaptureReader(captures[0]) as r:
        records = [(t, bytes(rec)) for t, rec in r][:20]
    split = tmp_path / "in" / "split.isc"
    split.parent.mkdir()
    with CaptureWriter(split, {}) as w:
        for i, (t, rec) in enumerate(records):
            parts = [rec[:-4], rec[-4:]] if i == 5 else [rec]  # record 5's frame split over two records
            for part in parts:
                w.append(part, t)
    from instrument.frames import FrameDecoder, FrameType

    whole = [f.header.frame_type for _, rec in records for f in FrameDecoder().feed(rec)]
    assert whole[5] == FrameType.SCAN
    info = capture_info(split)
    assert info.invalid_records == 2 and info.scans == whole.count(FrameType.SCAN) - 1
    stats: dict = {}
    assert sum(1 for _ in read_capture_spectra(split, stats=stats)) == info.scans
    assert stats["invalid_records"] == 2
    s = Settings(backend="none")
    resolved = s.resolved()
    tasks, _ = plan([split], tmp_path / "out", settings_hash(resolved), resolved, s)
    row = process_capture(tasks[0])
    assert row["status"] == "done" and row["scans"] == info.scans, row
