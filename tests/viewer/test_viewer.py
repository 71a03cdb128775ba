"""The live viewer as a user sees it: Qt's offscreen platform, real ZeroMQ sockets, screenshots.

Three sources feed it: (1) a real ionstream Publisher driven here with simulator spectra at a
high rate, (2) `ionstream view --screenshot` as a subprocess, (3) a live daemon (`ionstream run
--spectrum` on the simulator, on free loopback ports). Each test checks what the plots hold,
not only that nothing crashed.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pg = pytest.importorskip("pyqtgraph")
pytest.importorskip("pyqtgraph.Qt.QtWidgets")

from instrument.frames import FrameDecoder  # noqa: E402
from instrument.simulator import SimConfig, Simulator  # noqa: E402
from instrument.spectrum_model import CLASS_LABELS, mz_axis  # noqa: E402
from ionstream.daemon.publisher import Publisher  # noqa: E402
from ionstream.client.subscriber import Message  # noqa: E402
from ionstream.viewer.model import TOPICS, Receiver, ViewerModel, health_rows, ion_image, top_peaks  # noqa: E402
from ionstream.viewer.window import ViewerWindow  # noqa: E402
from support import wait_until  # noqa: E402

IONSTREAM = [sys.executable, "-P", "-m", "ionstream.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def qapp():
    try:
        return pg.mkQApp("ionstream-test")
    except Exception as exc:  # no usable Qt platform on this machine
        pytest.skip(f"Qt cannot start: {exc}")


# ---------------------------------------------------------------------------------------
# a publisher driven with simulator scans (the daemon's message layouts, docs/wire.md)
# ---------------------------------------------------------------------------------------

class Feeder:
    """Publishes peaks, spectrum, trace, class and status for simulator scans from a thread."""

    def __init__(self, endpoint, *, rate_hz=50.0, samples=16384, spectrum=True, xic=True):
        import scipy.signal

        self.find_peaks = scipy.signal.find_peaks
        self.pub = Publisher(endpoint, source="sim://test").start()
        self.sim = Simulator(SimConfig(n_samples=samples, seed=4, status_interval_s=0))
        self.mz = mz_axis(self.sim.calibration, samples)
        self.rate_hz, self.spectrum, self.xic = rate_hz, spectrum, xic
        self.sent = 0
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self.pub.stop()

    def _run(self):
        # publish nothing before a subscriber is there (ZeroMQ's slow joiner): each test then
        # knows every message the viewer could have received
        self.pub.wait_for_subscribers(1, timeout=10)
        k = 0
        t_next = time.monotonic()
        while not self._stop.is_set():
            frame, truth = next(self.sim)
            if truth is None:
                continue
            f = next(FrameDecoder().feed(frame))
            h = f.header
            y = f.samples().astype(np.float32)
            y -= np.float32(np.median(y))
            idx, _ = self.find_peaks(y, height=25, prominence=25, distance=3)
            now = time.time_ns()
            times = {"scan": h.scan_number, "t_device_ns": h.device_time_ns, "t_acq_ns": now, "t_dsp_ns": now}
            n = len(idx)
            peaks = [self.mz[idx].astype("<f8"), y[idx].astype("<f4"), np.ones(n, "<f4"),
                     np.full(n, 0.02, "<f4"), (y[idx] / 5).astype("<f4")]
            self.peaks[h.scan_number] = peaks
            self.pub.publish("peaks", {**times, "ms_level": 1, "polarity": "positive", "tic": float(y.sum())}, peaks)
            if self.spectrum:
                self.pub.publish("spectrum", {**times, "kind": "processed"}, [self.mz, y])
            tic = float(y.sum())
            events = []
            if k % 25 == 10:
                events = [{"trace": "tic", "kind": "start", "scan": h.scan_number, "t_ns": h.device_time_ns,
                           "intensity": tic}]
            elif k % 25 == 15:
                events = [{"trace": "tic", "kind": "apex", "scan": h.scan_number, "t_ns": h.device_time_ns,
                           "intensity": tic}]
            elif k % 25 == 20:
                events = [{"trace": "tic", "kind": "end", "scan": h.scan_number, "t_ns": h.device_time_ns,
                           "intensity": tic}]
            xic = float(y[(self.mz > 500) & (self.mz < 520)].sum())
            names, values = (["tic", "xic:500-520"], [tic, xic]) if self.xic else (["tic"], [tic])
            self.pub.publish("trace", {**times, "names": names, "events": events}, [np.array(values, "<f8")])
            p = np.zeros(len(CLASS_LABELS), "<f4")
            p[int(truth.label)] = 0.9
            p += 0.1 / len(p)
            self.pub.publish("class", {**times, "t_infer_ns": time.time_ns(), "label": CLASS_LABELS[int(p.argmax())],
                                       "confidence": float(p.max()), "labels": list(CLASS_LABELS),
                                       "model": "test 1", "backend": "onnxruntime"}, [p])
            if k % 10 == 0:
                self.pub.publish("status", {"stats": {
                    "state": "running", "source": "sim://test", "scans_per_s": self.rate_hz, "MBps": 1.5,
                    "ring_fill": 0.01, "latency_p50_ms": 0.8, "latency_p99_ms": 2.5, "backend": "onnxruntime",
                    "drops_total": 3, "drops_ring_dsp": 0, "drops_batcher": 3, "crc_errors": 0,
                    "sequence_gaps": 0, "recording": ""}})
            self.sent += 1
            k += 1
            t_next = max(t_next + 1.0 / self.rate_hz, time.monotonic() - 0.1)
            delay = t_next - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


def accounted(model, topic="peaks") -> int:
    snap = model.snapshot()
    return snap.received.get(topic, 0) + snap.missed.get(topic, 0)


def settle(app, feeder, model, timeout=30.0) -> None:
    """Slow the feeder down until the viewer has caught up, then stop it.

    Messages lost in a burst show up as gaps only when a later message arrives, and messages
    still queued when the publisher closes are gone without trace; after this, every message
    the feeder sent is either received or counted as missed.
    """
    feeder.rate_hz = 10.0
    wait_until(step=app.processEvents, condition=lambda: accounted(model) >= feeder.sent - 1, timeout=timeout)
    feeder.stop()
    wait_until(step=app.processEvents, condition=lambda: accounted(model) >= feeder.sent, timeout=5.0)


# ---------------------------------------------------------------------------------------
# model and helpers (no Qt)
# ---------------------------------------------------------------------------------------

def message(topic, header, arrays=None, gap=0, restarted=False, session="s1"):
    h = {"seq": 0, "session": session, **header}
    return Message(topic, h, arrays or {}, time.time_ns(), gap, restarted)


class TestModel:
    def test_latest_messages_win_and_history_is_bounded(self):
        m = ViewerModel(history=50)
        for k in range(120):
            m.feed(message("peaks", {"scan": k}, {"mz": np.array([100.0 + k]), "intensity": np.array([1.0])}))
            m.feed(message("trace", {"scan": k, "t_device_ns": k * 10**8, "names": ["tic"],
                                     "events": [{"trace": "tic", "kind": "apex", "t_ns": k * 10**8,
                                                 "intensity": 5.0}] if k % 10 == 0 else []},
                           {"values": np.array([float(k)])}))
        snap = m.snapshot()
        assert snap.peaks.scan == 119
        assert len(snap.trace_t) == 50 and snap.trace_values[-1, 0] == 119.0
        assert snap.trace_t[-1] == pytest.approx(11.9)
        assert [e[2] for e in snap.events] == ["apex"] * 12
        assert snap.received == {"peaks": 120, "trace": 120}

    def test_gaps_and_restarts(self):
        m = ViewerModel()
        m.feed(message("trace", {"t_device_ns": 0, "names": ["tic"]}, {"values": np.array([1.0])}))
        m.feed(message("peaks", {"scan": 1}, gap=4))
        m.feed(message("trace", {"t_device_ns": 5, "names": ["tic"]}, {"values": np.array([1.0])},
                       restarted=True, session="s2"))
        snap = m.snapshot()
        assert snap.missed == {"peaks": 4} and snap.restarts == 1
        assert len(snap.trace_t) == 1  # a restarted daemon starts a new trace

    def test_health_rows_flag_drops_and_silence(self):
        snap = ViewerModel().snapshot()
        rows = {name: (value, bad) for name, value, bad in health_rows(snap)}
        assert rows["viewer: received"] == ("nothing yet", True)
        m = ViewerModel()
        m.feed(message("status", {"stats": {"state": "running", "drops_total": 2, "drops_batcher": 2,
                                            "ring_fill": 0.9, "scans_per_s": 20.0, "health": "unhealthy",
                                            "health_reasons": "2 scan(s) dropped in the last 10 s"}}))
        snap = m.snapshot()
        rows = {name: (value, bad) for name, value, bad in health_rows(snap)}
        assert rows["state"] == ("running", False)
        assert rows["drops total"] == ("2", True) and rows["  batcher"] == ("2", True)
        assert rows["health"] == ("2 scan(s) dropped in the last 10 s", True)
        assert rows["ring fill"] == ("90 %", True)
        later = {n: (v, b) for n, v, b in health_rows(snap, now_ns=snap.last_message_ns + 10 * 10**9)}
        assert later["state"][1] and "no data for 10 s" in later["state"][0]

    def test_latest_image_message_is_kept_and_one_image_picked(self):
        assert "image" in TOPICS
        m = ViewerModel()
        assert ion_image(m.snapshot().image) is None  # no imaging run: no image
        raster = {"width": 4, "height": 3, "pixel_size_x_um": 10.0, "pixel_size_y_um": 20.0}
        for filled in (2, 5):
            imgs = np.full((2, 3, 4), np.nan, np.float32)
            imgs.reshape(2, -1)[0, :filled] = np.arange(filled) + 1.0      # tic: 1, 2, ...
            imgs.reshape(2, -1)[1, :filled] = 100.0 * (np.arange(filled) + 1)
            m.feed(message("image", {"scan": filled, "names": ["tic", "xic:500-520"], "raster": raster,
                                     "filled": filled, "pixels": 12, "last": [(filled - 1) % 4, (filled - 1) // 4],
                                     "complete": False}, {"images": imgs}))
        snap = m.snapshot()
        assert snap.image.scan == 5 and snap.received == {"image": 2}
        tic = ion_image(snap.image)
        assert tic.name == "tic" and tic.names == ["tic", "xic:500-520"]
        assert (tic.width, tic.height, tic.pixel_size_um) == (4, 3, (10.0, 20.0))
        assert (tic.filled, tic.pixels, tic.last, tic.complete) == (5, 12, (0, 1), False)
        assert int(np.isfinite(tic.data).sum()) == 5 and np.isnan(tic.data[2]).all()  # unscanned rows stay NaN
        assert tic.levels[0] == pytest.approx(1.04) and tic.levels[1] == pytest.approx(4.98)  # filled pixels only
        xic = ion_image(snap.image, "xic:500-520")
        assert xic.name == "xic:500-520" and np.nanmax(xic.data) == 500.0
        assert ion_image(snap.image, "no-such-name").name == "tic"

    def test_image_of_the_wrong_layout_is_counted_not_kept(self):
        m = ViewerModel()
        m.feed(message("image", {"names": ["tic", "xic:1-2"]}, {"images": np.zeros((1, 2, 2), np.float32)}))
        snap = m.snapshot()
        assert snap.image is None and snap.errors == 1

    def test_a_restarted_daemon_drops_the_old_image(self):
        m = ViewerModel()
        m.feed(message("image", {"names": ["tic"], "filled": 1, "pixels": 4},
                       {"images": np.ones((1, 2, 2), np.float32)}))
        m.feed(message("peaks", {"scan": 1}, restarted=True, session="s2"))
        assert m.snapshot().image is None

    def test_top_peaks_keep_labels_apart(self):
        mz = np.array([100.0, 100.5, 101.0, 300.0, 500.0])
        inten = np.array([10.0, 9.0, 8.0, 5.0, 1.0])
        assert list(top_peaks(mz, inten, 3)) == [0, 1, 2]
        assert list(top_peaks(mz, inten, 3, min_separation=5.0)) == [0, 3, 4]
        assert len(top_peaks(mz, inten, 0)) == 0


# ---------------------------------------------------------------------------------------
# the window, in process, against a real publisher
# ---------------------------------------------------------------------------------------

def image_ink(path) -> float:
    from pyqtgraph.Qt import QtGui

    img = QtGui.QImage(str(path))
    assert not img.isNull()
    ptr = img.convertToFormat(QtGui.QImage.Format.Format_RGB32).constBits()
    arr = np.frombuffer(ptr, dtype=np.uint8, count=img.width() * img.height() * 4)
    return float(arr.reshape(-1, 4)[:, :3].std())


def test_window_shows_spectrum_peaks_traces_class_and_health(qapp, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    model = ViewerModel()
    receiver = Receiver(endpoint, model).start()
    view = ViewerWindow(model, endpoint=endpoint, window_s=30, fps=20, receiver=receiver)
    view.widget.resize(1280, 760)
    view.widget.show()
    feeder = Feeder(endpoint, rate_hz=100.0).start()
    try:
        assert feeder.pub.wait_for_subscribers(1, timeout=10)
        assert wait_until(step=qapp.processEvents, condition=lambda: view.plot_state()["trace_points"] and
                          view.plot_state()["trace_points"][0] > 100, timeout=20)
        assert wait_until(step=qapp.processEvents, condition=lambda: sum(view.plot_state()["events"].values()) >= 3, timeout=10)
        view.refresh()
        state = view.plot_state()
        shot = tmp_path / "viewer.png"
        assert view.screenshot(shot)
        settle(qapp, feeder, model)
    finally:
        feeder.stop()
        view.timer.stop()
        assert receiver.stop()
    assert receiver.error is None
    # spectrum: the whole processed spectrum is in the curve (drawn downsampled), peaks marked
    assert state["spectrum_points"] == 16384 and 0 < state["spectrum_drawn"] < 16384  # decimated for display
    snap = model.snapshot()
    drawn = feeder.peaks[state["scan"]]  # the peaks published for the scan on screen
    assert state["peak_marks"] == len(drawn[0]) > 3
    assert 1 <= len(state["peak_labels"]) <= 8
    assert state["peak_labels"][0] == f"{drawn[0][int(np.argmax(drawn[1]))]:.4f}"
    # traces scroll with their events
    assert state["trace_names"] == ["tic", "xic:500-520"] and state["xic_axis"]
    assert state["events"]["apex"] >= 1 and state["events"]["start"] >= 1
    # class and health
    assert any(label in state["class"] for label in CLASS_LABELS) and "%" in state["class"]
    assert "onnxruntime" in state["class_detail"]
    assert not state["image_visible"] and state["image_shape"] is None   # no imaging run, no image panel
    assert "running" in state["health"] and "sim://test" in state["health"]
    # it kept up at 100 scans/s: every message arrived, or at most a few were counted as missed
    for topic in ("peaks", "spectrum", "trace", "class"):
        assert accounted(model, topic) == feeder.sent
    assert sum(snap.missed.values()) <= 0.01 * sum(snap.received.values())
    assert image_ink(shot) > 10  # a picture with content, not a blank window


def test_window_draws_peaks_as_sticks_without_the_spectrum_topic(qapp):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    model = ViewerModel()
    receiver = Receiver(endpoint, model, topics=["peaks", "trace"]).start()
    view = ViewerWindow(model, endpoint=endpoint, fps=20, receiver=receiver)
    feeder = Feeder(endpoint, rate_hz=50.0, spectrum=False).start()
    try:
        assert wait_until(step=qapp.processEvents, condition=lambda: view.plot_state()["stick_points"] > 0, timeout=15)
        state = view.plot_state()
    finally:
        feeder.stop()
        view.timer.stop()
        receiver.stop()
    assert state["spectrum_points"] == 0 and state["stick_points"] == state["peak_marks"]
    assert "peaks" in state["title"] and "processed" not in state["title"]


def test_no_xic_axis_without_an_xic(qapp):
    """Issue 15 item 8: with no dsp.xic configured the trace plot has no (empty) XIC axis."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    model = ViewerModel()
    receiver = Receiver(endpoint, model, topics=["trace"]).start()
    view = ViewerWindow(model, endpoint=endpoint, fps=20, receiver=receiver)
    feeder = Feeder(endpoint, rate_hz=50.0, spectrum=False, xic=False).start()
    try:
        assert wait_until(step=qapp.processEvents, condition=lambda: view.plot_state()["trace_points"] and
                          view.plot_state()["trace_points"][0] > 5, timeout=15)
        state = view.plot_state()
    finally:
        feeder.stop()
        view.timer.stop()
        receiver.stop()
    assert state["trace_names"] == ["tic"] and not state["xic_axis"]


def test_receiver_keeps_up_at_a_high_rate_and_the_display_skips(qapp):
    """Scans as fast as the feeder goes (up to 1000/s, 5 topics, 16k-point spectra): nothing unaccounted."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    model = ViewerModel()
    receiver = Receiver(endpoint, model, rcvhwm=1000).start()
    view = ViewerWindow(model, endpoint=endpoint, fps=10, receiver=receiver)
    feeder = Feeder(endpoint, rate_hz=1000.0).start()
    deadline = time.monotonic() + 120.0
    try:
        while feeder.sent <= 300:   # a count, not a duration: however fast this host is
            assert time.monotonic() < deadline, f"the feeder sent only {feeder.sent} scans"
            view.refresh()          # the display redraws the latest scan while messages pour in
            qapp.processEvents()
            time.sleep(0.1)
        settle(qapp, feeder, model)
    finally:
        feeder.stop()
        view.timer.stop()
        receiver.stop()
    snap = model.snapshot()
    # every peaks message either arrived or is counted as missed (a gap), none is unaccounted for
    assert accounted(model) == feeder.sent > 300 and snap.received["peaks"] > 0
    # How many arrive at 1000/s and how long a redraw takes are performance, not behaviour
    # (DESIGN: benchmarks, never timed asserts): `ionstream bench` measures them.


# ---------------------------------------------------------------------------------------
# `ionstream view --screenshot` as a subprocess
# ---------------------------------------------------------------------------------------

def test_cli_screenshot_against_a_publisher(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    feeder = Feeder(endpoint, rate_hz=30.0).start()
    try:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        r = subprocess.run(IONSTREAM + ["view", "--endpoint", endpoint, "--screenshot", "shot.png", "--after", "3",
                                        "--size", "1000", "600"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    finally:
        feeder.stop()
    assert r.returncode == 0, r.stderr
    assert "screenshot shot.png: scan " in r.stderr and "{'" not in r.stderr  # plain text, no Python repr
    assert (tmp_path / "shot.png").stat().st_size > 10_000
    assert image_ink(tmp_path / "shot.png") > 10


def test_cli_screenshot_with_nothing_published_exits_1(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run(IONSTREAM + ["view", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--screenshot", "x.png",
                                    "--after", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------
# against a live daemon on the simulator
# ---------------------------------------------------------------------------------------

def _daemon_can_run() -> str | None:
    try:
        from ionstream.config import load
        from ionstream.processing import ScanWork

        dsp = load(None).dsp
        ScanWork(dsp_params={"smoothing": dsp.smoothing, "min_snr": dsp.min_snr}, xic_windows=[])
    except Exception as exc:
        return f"the daemon cannot process scans yet ({type(exc).__name__}: {exc})"
    return None


@pytest.mark.skipif(_daemon_can_run() is not None, reason=str(_daemon_can_run()))
def test_viewer_on_a_live_daemon(qapp, tmp_path):
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daemon = subprocess.Popen(IONSTREAM + ["run", "--source", "sim://?rate=50&samples=16384", "--spectrum",
                                           "--endpoint", pub, "--control", ctl, "--no-status-line",
                                           "--duration", "60s"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    model = ViewerModel()
    receiver = Receiver(pub, model).start()
    view = ViewerWindow(model, endpoint=pub, fps=20, receiver=receiver)
    view.widget.resize(1280, 760)
    view.widget.show()
    try:
        ok = wait_until(step=qapp.processEvents, condition=lambda: (view.plot_state()["spectrum_points"] > 0 and model.snapshot().status
                                       and view.plot_state()["trace_points"]
                                       and view.plot_state()["trace_points"][0] > 50), timeout=40)
        assert ok, daemon.stderr.read() if daemon.poll() is not None else "no data from the daemon"
        view.refresh()
        state = view.plot_state()
        assert view.screenshot(tmp_path / "daemon.png")
    finally:
        view.timer.stop()
        receiver.stop()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    snap = model.snapshot()
    assert state["spectrum_points"] == 16384 and state["peak_marks"] > 0
    assert "running" in state["health"] and snap.status.get("scans_per_s", 0) > 10
    assert image_ink(tmp_path / "daemon.png") > 10


def image_alpha(item) -> np.ndarray:
    """The alpha channel of an ImageItem as drawn, [height, width] (row-major items)."""
    from pyqtgraph.Qt import QtGui

    item.render()
    q = item.qimage.convertToFormat(QtGui.QImage.Format.Format_ARGB32)
    arr = np.frombuffer(q.constBits(), dtype=np.uint8, count=q.height() * q.bytesPerLine())
    return arr.reshape(q.height(), q.bytesPerLine() // 4, 4)[:, :q.width(), 3].copy()  # BGRA in memory


@pytest.mark.skipif(_daemon_can_run() is not None, reason=str(_daemon_can_run()))
def test_image_panel_grows_on_a_live_imaging_daemon(qapp, tmp_path):
    """Issue 21: an imaging run's `image` messages appear as an ion image that fills pixel by pixel."""
    pub = f"tcp://127.0.0.1:{free_port()}"
    model = ViewerModel()
    receiver = Receiver(pub, model).start()
    view = ViewerWindow(model, endpoint=pub, fps=20, receiver=receiver)
    view.widget.resize(1280, 760)
    view.widget.show()
    assert not view.plot_state()["image_visible"]     # no panel before an image arrives
    daemon = subprocess.Popen(IONSTREAM + ["run", "--source", "sim://?imaging=16x16&samples=4096&rate=200",
                                           "--endpoint", pub, "--control", "", "--backend", "none",
                                           "--no-status-line", "--wait-subscribers", "1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []        # (filled pixels on screen, alpha of the drawn image) at each redraw that changed it

    def step():
        qapp.processEvents()
        state = view.plot_state()
        if state["image_visible"] and (not seen or seen[-1][0] != state["image_filled"]):
            seen.append((state["image_filled"], image_alpha(view.image_item), view.image_item.image.copy()))

    try:
        ok = wait_until(step=step, condition=lambda: view.plot_state()["image_complete"], timeout=60)
        assert ok, daemon.stderr.read() if daemon.poll() is not None else f"image never completed: {seen[-1:]}"
        view.refresh()
        state = view.plot_state()
        assert view.screenshot(tmp_path / "imaging.png")
    finally:
        view.timer.stop()
        receiver.stop()
        daemon.terminate()
        try:
            _, err = daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
    assert "Traceback" not in err
    assert state["image_visible"] and state["image_name"] == "tic" and state["image_names"] == ["tic"]
    assert state["image_shape"] == (16, 16) and state["image_filled"] == 256
    assert "256 / 256 pixels" in state["image_info"] and "complete" in state["image_info"]
    filled = [f for f, _a, _d in seen]
    assert filled == sorted(filled) and filled[-1] == 256
    partial = [(f, a, d) for f, a, d in seen if 0 < f < 256]
    assert partial, f"the panel never showed a partly filled raster: {filled}"   # it grew on screen
    for f, alpha, data in partial:
        scanned = np.isfinite(data)
        assert scanned.sum() == f and scanned[0].all() == (f >= 16)   # row by row from the top
        # pixels not scanned yet are transparent (the dark background shows), scanned ones opaque
        assert (alpha[~scanned] == 0).all() and (alpha[scanned] == 255).all()
    assert image_ink(tmp_path / "imaging.png") > 10


def test_cli_without_a_display_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    r = subprocess.run(IONSTREAM + ["view", "--endpoint", "tcp://127.0.0.1:9"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 2 and "no display" in r.stderr and "--screenshot" in r.stderr


@pytest.mark.skipif(not shutil.which("xvfb-run"), reason="xvfb-run is not installed (apt: the X packages .ci/run installs)")
def test_real_x11_window_under_xvfb(tmp_path):
    """The same viewer as a real X11 window (Qt's xcb platform) on a virtual X server."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    feeder = Feeder(endpoint, rate_hz=30.0).start()
    try:
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        r = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1400x900x24"] + IONSTREAM
                           + ["view", "--endpoint", endpoint, "--screenshot", "x11.png", "--after", "3"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    finally:
        feeder.stop()
    assert r.returncode == 0, r.stderr
    assert image_ink(tmp_path / "x11.png") > 10


@pytest.mark.skipif(not shutil.which("xvfb-run"), reason="xvfb-run is not installed (apt: the X packages .ci/run installs)")
@pytest.mark.skipif(_daemon_can_run() is not None, reason=str(_daemon_can_run()))
def test_real_x11_window_shows_the_ion_image_of_a_live_imaging_daemon(tmp_path):
    """Issue 21 on a real X11 window: `ionstream view` on a daemon rastering 16 x 16 pixels."""
    pub = f"tcp://127.0.0.1:{free_port()}"
    daemon = subprocess.Popen(IONSTREAM + ["run", "--source", "sim://?imaging=16x16&samples=4096&rate=200",
                                           "--endpoint", pub, "--control", "", "--backend", "none",
                                           "--no-status-line", "--wait-subscribers", "1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        # the daemon waits for this viewer; 256 pixels at 200/s are scanned well within --after
        r = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1400x900x24"] + IONSTREAM
                           + ["view", "--endpoint", pub, "--screenshot", "x11.png", "--after", "6"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    finally:
        daemon.terminate()
        try:
            daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
    assert r.returncode == 0, r.stderr
    assert "image_visible yes" in r.stderr and "image_shape [16 16]" in r.stderr, r.stderr
    assert "image_filled 256" in r.stderr and "image_complete yes" in r.stderr, r.stderr
    assert image_ink(tmp_path / "x11.png") > 10
