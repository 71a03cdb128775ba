"""The live viewer (`ionstream view`): pyqtgraph on Qt, fed by :class:`ionstream.Subscriber` only.

Threads and the real-time rule
------------------------------
The viewer is a subscriber like any analysis application: it connects to the daemon's PUB
endpoint and can never slow it down (a subscriber that falls behind loses messages at its
own ZeroMQ queue, counted here as gaps; the daemon never waits). To keep up at the
daemon's full rate anyway, work is split so that receiving stays cheap:

* the receiver thread (``ionstream-view-rx``) owns the Subscriber. For each message it only
  stores a reference (the arrays are zero-copy views over the received frames) in
  :class:`ViewerModel`: the latest spectrum, peaks, class and status replace the previous
  ones; trace points go into a bounded history. It is stopped by a message on an inproc
  PAIR pipe and closes its sockets itself.
* the Qt thread redraws on a timer (``fps``, default 10 Hz) from a snapshot of the model:
  whatever arrived in between is skipped, never queued. Long spectra are drawn with
  pyqtgraph's peak-preserving downsampling (min/max per pixel column) and clipped to the
  view, so a 64k-point spectrum costs about as much as the pixels it covers.

Panels: the current spectrum (processed, when the daemon publishes the opt-in ``spectrum``
topic, else the peak list as sticks) with the picked peaks marked and the tallest
labelled with their m/z; the class label with its confidence and the probability of every
class; the TIC and XIC traces scrolling over the last ``window_s`` seconds with elution
events (start, apex, end) marked; and a health panel (rates, drops per stage, latency,
ring fill, backend, and this viewer's own received/missed counts). In an imaging run (the
daemon publishes the ``image`` topic) an image panel appears beside them: the TIC ion image,
or the one picked in its list (each XIC window of ``dsp.xic``), growing as the raster fills,
with the pixels not scanned yet left transparent (the dark background).
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import numpy as np

from ionstream.viewer.model import ModelSnapshot, Receiver, ViewerModel, health_rows, ion_image, top_peaks

log = logging.getLogger("ionstream.viewer.window")


def _qt():
    try:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtCore, QtGui, QtWidgets
    except ImportError as exc:
        raise ImportError(f"the viewer needs pyqtgraph and Qt: pip install 'ionstream[view]' ({exc})") from None
    return pg, QtCore, QtGui, QtWidgets


TRACE_COLOURS = ("#e0e0e0", "#4fc3f7", "#ffb74d", "#81c784", "#ba68c8", "#f06292", "#fff176", "#90a4ae")
EVENT_STYLE = {"start": ("t1", "#81c784"), "apex": ("o", "#ff5252"), "end": ("t", "#ffb74d")}
STYLE = """
QWidget { background: #101418; color: #c8d0d8; }
QGroupBox { border: 1px solid #2a323b; border-radius: 4px; margin-top: 14px; padding: 6px; }
QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 4px; color: #8a96a3; }
"""
class ViewerWindow:
    """The viewer's main window. ``ViewerWindow(model).widget`` is a QMainWindow.

    ``refresh()`` redraws from the model (the Qt timer calls it ``fps`` times a second);
    ``plot_state()`` reports what the plots hold (for tests and ``--screenshot``).
    """

    def __init__(self, model: ViewerModel, *, endpoint: str = "", window_s: float = 60.0, labels: int = 8,
                 fps: float = 10.0, receiver: Receiver | None = None):
        pg, QtCore, QtGui, QtWidgets = _qt()
        self.pg, self.QtCore, self.QtWidgets = pg, QtCore, QtWidgets
        self.model = model
        self.receiver = receiver
        self.window_s = window_s
        self.n_labels = labels
        self._last_version = -1
        self._drawn_scan = None
        self._frames = deque(maxlen=32)
        pg.setConfigOptions(antialias=False, background="#101418", foreground="#c8d0d8")

        win = self.widget = QtWidgets.QMainWindow()
        win.setStyleSheet(STYLE)
        win.setWindowTitle(f"ionstream view — {endpoint}" if endpoint else "ionstream view")
        central = QtWidgets.QWidget()
        win.setCentralWidget(central)
        grid = QtWidgets.QGridLayout(central)
        grid.setContentsMargins(6, 6, 6, 6)

        # spectrum
        self.spec_plot = pg.PlotWidget()
        self.spec_plot.setLabel("bottom", "m/z")
        self.spec_plot.setLabel("left", "intensity", units="counts")
        self.spec_plot.showGrid(x=True, y=True, alpha=0.15)
        self.spec_plot.setTitle("waiting for the daemon…", size="10pt")
        self.spec_curve = self.spec_plot.plot(pen=pg.mkPen("#4fc3f7", width=1))
        self.spec_curve.setDownsampling(auto=True, method="peak")
        self.spec_curve.setClipToView(True)
        self.spec_curve.setSkipFiniteCheck(True)
        self.stick_curve = self.spec_plot.plot(pen=pg.mkPen("#4fc3f7", width=1), connect="pairs")
        self.peak_marks = pg.ScatterPlotItem(symbol="t", size=8, pen=None, brush=pg.mkBrush("#ff5252"))
        self.spec_plot.addItem(self.peak_marks)
        self.peak_labels = []
        for _ in range(labels):
            item = pg.TextItem("", color="#ffcdd2", anchor=(0.5, 1.2))
            item.setVisible(False)
            self.spec_plot.addItem(item)
            self.peak_labels.append(item)

        # traces
        self.trace_plot = pg.PlotWidget()
        self.trace_plot.setLabel("bottom", "time", units="s")
        self.trace_plot.setLabel("left", "TIC", units="counts")
        self.trace_plot.showGrid(x=True, y=True, alpha=0.15)
        self.trace_legend = self.trace_plot.addLegend(offset=(10, 5), brush=pg.mkBrush(16, 20, 24, 170))
        # XICs on their own right-hand axis (they are orders of magnitude below the TIC)
        tic_item = self._tic_item = self.trace_plot.getPlotItem()
        self.xic_view = pg.ViewBox()
        tic_item.showAxis("right", False)  # shown once a trace message names an XIC (dsp.xic configured)
        tic_item.scene().addItem(self.xic_view)
        tic_item.getAxis("right").linkToView(self.xic_view)
        tic_item.getAxis("right").setLabel("XIC", units="counts")
        self.xic_view.setXLink(tic_item)

        def sync_views() -> None:
            self.xic_view.setGeometry(tic_item.vb.sceneBoundingRect())
            self.xic_view.linkedViewChanged(tic_item.vb, self.xic_view.XAxis)

        tic_item.vb.sigResized.connect(sync_views)
        self.trace_curves: list = []
        self.event_marks = {}   # (kind, 'tic' | 'xic') -> scatter, in the TIC or the XIC view
        for kind, (sym, col) in EVENT_STYLE.items():
            for view in ("tic", "xic"):
                item = pg.ScatterPlotItem(symbol=sym, size=10, pen=pg.mkPen(col), brush=pg.mkBrush(col))
                (self.trace_plot if view == "tic" else self.xic_view).addItem(item)
                self.event_marks[kind, view] = item
        self._trace_names: list = []

        # class
        class_box = QtWidgets.QGroupBox("class")
        vbox = QtWidgets.QVBoxLayout(class_box)
        self.class_label = QtWidgets.QLabel("–")
        font = self.class_label.font()
        font.setPointSize(20)
        font.setBold(True)
        self.class_label.setFont(font)
        self.class_detail = QtWidgets.QLabel("no classification yet")
        self.class_detail.setWordWrap(True)
        self.prob_plot = pg.PlotWidget()
        self.prob_plot.setMaximumHeight(170)
        self.prob_plot.setYRange(0, 1)
        self.prob_plot.setMouseEnabled(x=False, y=False)
        self.prob_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush="#4fc3f7")
        self.prob_plot.addItem(self.prob_bars)
        vbox.addWidget(self.class_label)
        vbox.addWidget(self.class_detail)
        vbox.addWidget(self.prob_plot)
        self._prob_labels: list = []

        # health
        health_box = QtWidgets.QGroupBox("health")
        hbox = QtWidgets.QVBoxLayout(health_box)
        self.health = QtWidgets.QLabel()
        self.health.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.health.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop)
        hbox.addWidget(self.health)

        # ion images: hidden until an `image` message arrives (imaging runs only)
        self.image_box = QtWidgets.QGroupBox("ion image")
        ibox = QtWidgets.QVBoxLayout(self.image_box)
        self.image_choice = QtWidgets.QComboBox()
        self.image_choice.setToolTip("which ion image to show: the TIC or an XIC window (dsp.xic)")
        self.image_choice.currentTextChanged.connect(self._image_chosen)
        self.image_plot = pg.PlotWidget()
        self.image_plot.setAspectLocked(True)
        self.image_plot.invertY(True)          # row 0 at the top, as the raster is scanned
        self.image_plot.setLabel("bottom", "x (µm)")   # no SI prefixes: µm on both axes
        self.image_plot.setLabel("left", "y (µm)")
        # NaN (no scan there yet) is drawn transparent: the dark background shows through
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_plot.addItem(self.image_item)
        self.image_bar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False, width=12)
        self.image_bar.setImageItem(self.image_item, insert_in=self.image_plot.getPlotItem())
        self.image_last = pg.ScatterPlotItem(symbol="s", size=9, pen=pg.mkPen("#ff5252", width=1.5), brush=None)
        self.image_plot.addItem(self.image_last)
        self.image_info = QtWidgets.QLabel("")
        self.image_info.setMinimumHeight(2 * self.image_info.fontMetrics().height() + 4)   # two lines
        ibox.addWidget(self.image_choice)
        ibox.addWidget(self.image_plot, 1)
        ibox.addWidget(self.image_info)
        self.image_box.setVisible(False)
        self._image_name: str | None = None    # None: the TIC
        self._image_names: list = []
        self._image_shown = None               # the IonImage on screen
        self._image_extent: tuple | None = None  # (width, height) µm the view was fitted to
        self._grid = grid

        grid.addWidget(self.spec_plot, 0, 0)
        grid.addWidget(self.trace_plot, 1, 0)
        grid.addWidget(class_box, 0, 1)
        grid.addWidget(health_box, 1, 1)
        grid.addWidget(self.image_box, 0, 2, 2, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)
        win.resize(1280, 760)

        self.timer = QtCore.QTimer()
        self.timer.timeout.connect(self.refresh)
        self.timer.start(max(1, int(1000 / fps)))

    # ---- drawing ------------------------------------------------------------------------
    def refresh(self) -> None:
        snap = self.model.snapshot()
        self._frames.append(time.monotonic())
        if snap.version != self._last_version:
            self._last_version = snap.version
            self._draw_spectrum(snap)
            self._draw_traces(snap)
            self._draw_class(snap)
            self._draw_image(snap)
        self._draw_health(snap)

    def _draw_spectrum(self, snap: ModelSnapshot) -> None:
        spec = snap.spectrum
        # with spectra, draw a spectrum and the peaks of that same scan; else the latest peaks
        peaks = snap.spectrum_peaks if spec is not None else snap.peaks
        if peaks is None and spec is None:
            return
        pmz = np.asarray(peaks["mz"]) if peaks is not None else np.zeros(0)
        pint = np.asarray(peaks["intensity"], dtype=np.float64) if peaks is not None else np.zeros(0)
        if spec is not None:
            self.spec_curve.setData(spec["mz"], spec["intensity"])
            self.stick_curve.setData([], [])
        else:
            self.spec_curve.setData([], [])
            xs = np.repeat(pmz, 2)
            ys = np.zeros(len(xs))
            ys[1::2] = pint
            self.stick_curve.setData(xs, ys)
        self.peak_marks.setData(pmz, pint)
        (x0, x1), _ = self.spec_plot.getPlotItem().viewRange()
        top = top_peaks(pmz, pint, len(self.peak_labels), min_separation=0.06 * (x1 - x0))
        for item, k in zip(self.peak_labels, list(top) + [None] * len(self.peak_labels)):
            if k is None:
                item.setVisible(False)
                continue
            item.setText(f"{pmz[k]:.4f}")
            item.setPos(float(pmz[k]), float(pint[k]))
            item.setVisible(True)
        ref = peaks if peaks is not None else spec
        self._drawn_scan = ref.scan
        h = ref.header
        pol = h.get("polarity", "")
        level = f"MS{h['ms_level']}" if "ms_level" in h else ""
        what = "processed spectrum" if spec is not None else "peaks"
        lat = ref.latency_ms()
        self.spec_plot.setTitle(
            f"scan {ref.scan} · {level} {pol} · {len(pmz)} peaks · {what}"
            + (f" · latency {lat:.1f} ms" if lat is not None and lat >= 0 else ""), size="10pt")

    def _draw_traces(self, snap: ModelSnapshot) -> None:
        pg = self.pg
        names = snap.trace_names
        if names != self._trace_names:
            for i, curve in enumerate(self.trace_curves):
                (self.trace_plot if i == 0 else self.xic_view).removeItem(curve)
            self.trace_legend.clear()
            self.trace_curves = []
            for i, name in enumerate(names):
                curve = pg.PlotDataItem(pen=pg.mkPen(TRACE_COLOURS[i % len(TRACE_COLOURS)], width=1.2))
                curve.setDownsampling(auto=True, method="peak")
                curve.setClipToView(True)
                (self.trace_plot if i == 0 else self.xic_view).addItem(curve)
                self.trace_legend.addItem(curve, name)
                self.trace_curves.append(curve)
            self._trace_names = list(names)
            self._tic_item.showAxis("right", len(names) > 1)  # no empty XIC axis without an XIC
        t = snap.trace_t
        if not len(t):
            return
        for i, curve in enumerate(self.trace_curves):
            curve.setData(t, snap.trace_values[:, i])
        t_end = float(t[-1])
        t_start = max(float(t[0]), t_end - self.window_s)
        self.trace_plot.setXRange(t_start, t_end + 1e-9, padding=0.02)
        visible = t >= t_start
        if visible.any():
            shown = snap.trace_values[visible]
            for view, cols in ((self.trace_plot, shown[:, :1]), (self.xic_view, shown[:, 1:])):
                if cols.size:
                    lo, hi = float(cols.min()), float(cols.max())
                    view.setYRange(min(lo, 0.0), hi * 1.08 if hi > 0 else 1.0, padding=0)
        for (kind, view), item in self.event_marks.items():
            pts = [(te, y) for te, name, k, y in snap.events
                   if k == kind and te >= t_start and math.isfinite(y) and (name == "tic") == (view == "tic")]
            item.setData([p[0] for p in pts], [p[1] for p in pts])

    def _draw_class(self, snap: ModelSnapshot) -> None:
        cls = snap.cls
        if cls is None:
            return
        h = cls.header
        probs = np.asarray(cls.arrays.get("probabilities", np.zeros(0)), dtype=np.float64)
        conf = h.get("confidence", float(probs.max()) if len(probs) else math.nan)
        self.class_label.setText(f"{h.get('label', '?')}  {100 * conf:.0f} %" if math.isfinite(conf) else
                                 str(h.get("label", "?")))
        self.class_detail.setText(f"scan {cls.scan} · {h.get('model', '')} · {h.get('backend', '')}")
        labels = list(h.get("labels") or [])
        self.prob_bars.setOpts(x=np.arange(len(probs)), height=probs, width=0.7)
        if labels != self._prob_labels:
            axis = self.prob_plot.getAxis("bottom")
            axis.setTicks([[(i, name.replace("_", " ")[:14]) for i, name in enumerate(labels)]])
            self._prob_labels = labels

    def _image_chosen(self, name: str) -> None:
        if name and name in self._image_names:
            self._image_name = name
            self._draw_image(self.model.snapshot())

    def _draw_image(self, snap: ModelSnapshot) -> None:
        img = ion_image(snap.image, self._image_name)
        if img is None:
            return
        if not self.image_box.isVisible():
            self.image_box.setVisible(True)
            # make room: the health table wraps its long rows so the image gets the width
            self.health.setWordWrap(True)
            self._grid.setColumnStretch(1, 2)
            self._grid.setColumnStretch(2, 3)
        if img.names != self._image_names:
            self._image_names = list(img.names)
            self.image_choice.blockSignals(True)   # refilling the list is not the user's choice
            self.image_choice.clear()
            self.image_choice.addItems(img.names)
            self.image_choice.setCurrentText(img.name)
            self.image_choice.blockSignals(False)
        (sx, sy) = img.pixel_size_um
        self.image_item.setImage(img.data, levels=img.levels, autoLevels=False)
        extent = (img.width * sx, img.height * sy)
        self.image_item.setRect(0.0, 0.0, *extent)   # in µm, so the aspect is the sample's
        if extent != self._image_extent:            # a new raster: fit it once, then leave zoom to the user
            self.image_plot.setRange(xRange=(0.0, extent[0]), yRange=(0.0, extent[1]), padding=0.02)
            self._image_extent = extent
        self.image_bar.setLevels(img.levels)
        x, y = img.last
        if x >= 0 and not img.complete:   # mark the newest pixel while the raster fills
            self.image_last.setData([(x + 0.5) * sx], [(y + 0.5) * sy])
        else:
            self.image_last.setData([], [])
        pct = 100.0 * img.filled / img.pixels if img.pixels else 0.0
        self.image_info.setText(f"{img.name} · {img.width} × {img.height} px of {sx:g} × {sy:g} µm\n"
                                f"{img.filled} / {img.pixels} pixels ({pct:.0f} %)"
                                + (" · complete" if img.complete else f" · scan {snap.image.scan}"))
        self._image_shown = img

    def _draw_health(self, snap: ModelSnapshot) -> None:
        rows = health_rows(snap)
        if len(self._frames) > 1:
            fps = (len(self._frames) - 1) / max(1e-9, self._frames[-1] - self._frames[0])
            rates = ", ".join(f"{t} {r:.0f}/s" for t, r in sorted(snap.rates.items()) if r > 0)
            rows.append(("viewer: display", f"{fps:.0f} fps" + (f"; {rates}" if rates else ""), False))
        if self.receiver is not None and self.receiver.error is not None:
            rows.append(("viewer: receiver", f"stopped: {self.receiver.error}", True))
        html = ["<table cellspacing='2'>"]
        for name, value, bad in rows:
            colour = "#ff5252" if bad else "#c8d0d8"
            html.append(f"<tr><td style='color:#8a96a3; white-space:nowrap'>{name}</td><td style='color:{colour}'>"
                        f"&nbsp;{_escape(value)}</td></tr>")
        html.append("</table>")
        self.health.setText("".join(html))

    # ---- introspection ---------------------------------------------------------------------
    def plot_state(self) -> dict[str, Any]:
        """What each plot holds now (point counts, labels), as a user would see it."""
        def n(data) -> int:
            return 0 if data is None else len(data)

        tr = [n(c.xData) for c in self.trace_curves]
        return {
            "scan": self._drawn_scan,
            "spectrum_points": n(self.spec_curve.xData),          # the spectrum held
            "spectrum_drawn": n(self.spec_curve.getData()[0]),    # after downsampling to the view
            "stick_points": n(self.stick_curve.xData) // 2,
            "peak_marks": len(self.peak_marks.data),
            "peak_labels": [item.textItem.toPlainText() for item in self.peak_labels if item.isVisible()],
            "trace_names": list(self._trace_names),
            "xic_axis": self._tic_item.getAxis("right").isVisible(),
            "trace_points": tr,
            "events": {kind: sum(len(item.data) for (k, _v), item in self.event_marks.items() if k == kind)
                       for kind in EVENT_STYLE},
            "class": self.class_label.text(),
            "class_detail": self.class_detail.text(),
            "probabilities": len(self.prob_bars.opts.get("height", []) if self.prob_bars.opts.get("height")
                                 is not None else []),
            "image_visible": self.image_box.isVisible(),
            "image_name": self._image_shown.name if self._image_shown is not None else None,
            "image_names": list(self._image_names),
            "image_shape": None if self.image_item.image is None else tuple(self.image_item.image.shape),
            "image_filled": 0 if self.image_item.image is None else int(np.isfinite(self.image_item.image).sum()),
            "image_complete": bool(self._image_shown is not None and self._image_shown.complete),
            "image_info": self.image_info.text(),
            "health": self.health.text(),
            "title": self.spec_plot.getPlotItem().titleLabel.text,
        }

    def screenshot(self, path: str) -> bool:
        """Save the window as it is drawn now (PNG by the extension); True on success."""
        return bool(self.widget.grab().save(str(path)))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any) -> str:
    """A value for a log line as words, not a Python repr: ``a 1, b [x y]``."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_plain(v) for v in value) + "]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def run_viewer(endpoint: str, *, fps: float = 10.0, window_s: float = 60.0, labels: int = 8, curve=None,
               screenshot: str | None = None, after_s: float = 5.0, duration_s: float | None = None,
               size: tuple[int, int] | None = None) -> int:
    """Open the viewer window on ``endpoint`` and run the Qt event loop; returns an exit code.

    ``screenshot``: save a picture of the window after ``after_s`` seconds, then exit
    (0 if the plots hold data, 1 if nothing arrived). ``duration_s``: close after that long.
    """
    pg, QtCore, _QtGui, _QtWidgets = _qt()
    app = pg.mkQApp("ionstream view")
    model = ViewerModel()
    receiver = Receiver(endpoint, model, curve=curve).start()
    view = ViewerWindow(model, endpoint=endpoint, window_s=window_s, labels=labels, fps=fps, receiver=receiver)
    if size:
        view.widget.resize(*size)
    view.widget.show()
    result = {"code": 0}

    def shoot() -> None:
        view.refresh()
        state = view.plot_state()
        ok = view.screenshot(screenshot)
        has_data = state["spectrum_points"] or state["stick_points"]
        shown = {k: v for k, v in state.items() if k not in ("health", "image_info")}   # one line of words
        log.info("screenshot %s: %s", screenshot, _plain(shown))
        result["code"] = 0 if ok and has_data else 1
        app.quit()

    if screenshot:
        QtCore.QTimer.singleShot(int(after_s * 1000), shoot)
    elif duration_s:
        QtCore.QTimer.singleShot(int(duration_s * 1000), app.quit)
    try:
        app.exec()
    finally:
        view.timer.stop()
        receiver.stop()
    return result["code"]
