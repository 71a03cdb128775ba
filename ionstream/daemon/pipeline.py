"""The pipeline owner: builds every stage from a Config, starts, snapshots and stops them.

source → AcquisitionThread → RingBuffer ─┬─▶ Recorder (capture file)
                                          └─▶ DspWorkers ─▶ Sequencer (ring order)
                                                              ├─▶ peaks, spectrum, trace topics
                                                              └─▶ MicroBatcher ─▶ class topic
Stop order drains downstream: acquisition first, then the ring closes, DSP drains it, the
sequencer emits the rest, the batcher flushes, the publisher sends, files and sockets close.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from instrument.acquisition import AcquisitionThread
from instrument.ring import RingBuffer
from instrument.sources import open_source
from ionstream.config import Config, resolve_capture_path
from ionstream.processing import ProcessedScan, ScanWork, TraceEvents, trace_names
from inference.ood import OodGate
from ionstream.daemon.images import LiveImages
from ionstream.daemon.health import HealthLimits, HealthMonitor
from ionstream.daemon.rates import LatencyWindow, RateWindow
from ionstream.daemon.stages import DspWorkers, WorkerOutput, Sequencer

log = logging.getLogger("ionstream.daemon.pipeline")


class Pipeline:
    """The running daemon's stages. start() / stop(); snapshot() for status; record_*; reload_model()."""

    def __init__(self, config: Config):
        from ionstream.daemon.buffers import BufferPool
        from ionstream.daemon.publisher import Publisher
        from ionstream.daemon.security import CurveServer

        self.config = config
        self.source = open_source(config.source.url)
        policy = config.ring.policy
        if policy == "auto":
            # A finite source (a replay) can wait, so it never drops and replays stay
            # deterministic; a live device cannot wait, so its ring drops the oldest scans.
            policy = "block" if self.source.finite else "drop-oldest"
        self.ring = RingBuffer(config.ring.slots, config.ring.resolved_slot_bytes(), policy)
        self.acquisition = AcquisitionThread(self.source, self.ring)
        self.recorder = None
        self._record_lock = threading.Lock()

        self.bundle = None
        self.ood_gate = None
        self.batcher = None
        if config.inference.backend != "none":
            self.bundle = self._load_bundle(config.inference.model)
            self.ood_gate = OodGate.from_bundle(self.bundle)
            self.batcher = self._make_batcher(self.bundle)

        self.curve = CurveServer.from_config(config.publish)
        self.publisher = Publisher(config.publish.endpoint, source=config.source.url,
                                   queue_size=config.publish.queue, sndhwm=config.publish.hwm,
                                   allow_remote=config.publish.allow_remote, curve=self.curve)
        self.spectrum_pool = (BufferPool(config.ring.max_samples, np.float32, count=2 * config.ring.slots)
                              if config.publish.spectrum else None)

        self._results: queue.Queue[WorkerOutput] = queue.Queue(maxsize=4 * config.ring.slots)
        self.dsp = DspWorkers(self.ring, config.dsp_workers(), self._make_work, self._results)
        self.sequencer = Sequencer(self.dsp, self._results, self._emit, self.ring.head,
                                   max_pending=4 * config.ring.slots)
        self.traces = self._make_traces()
        self.images = LiveImages(self.traces.names)   # fills only from imaging scans (pixel positions)
        self.latency = LatencyWindow()
        self._rates = RateWindow()
        self._last_rates: dict[str, float] = {"scans": float("nan"), "bytes": float("nan")}
        self.health = HealthMonitor(HealthLimits(stall_s=config.status.stall_s,
                                                 drop_window_s=config.status.drop_window_s,
                                                 ring_fill_max=config.status.ring_fill_max))
        self._health_reasons: dict[str, str] = {}
        self.record_error = ""
        self.record_low_space = False
        self.model_reload = "idle"
        self._reload_thread: threading.Thread | None = None
        self.waiting_subscribers = False
        self._scans_out = 0
        self._peaks_total = 0
        self._classified = 0
        self._dsp_skipped = 0  # valid scans the DSP could not analyse (published empty)
        self.last_class: tuple[str, float] | None = None
        self.instrument_status: dict[str, Any] = {}
        self.started_at = 0.0
        self._stopped = threading.Event()

    # ---- construction helpers -----------------------------------------------------------
    @staticmethod
    def _load_bundle(path: str):
        from inference.bundle import load_bundle

        return load_bundle(path or None)

    def _make_batcher(self, bundle):
        from inference.batcher import MicroBatcher

        inf = self.config.inference
        factory = self._backend_factory(bundle)
        return MicroBatcher(factory, n_features=bundle.feature_spec.bins, max_batch=inf.max_batch,
                            max_delay_ms=inf.max_delay_ms, on_result=self._on_class, labels=bundle.labels,
                            queue_size=4 * self.config.ring.slots)

    def _backend_factory(self, bundle):
        from inference.backend import open_backend

        inf = self.config.inference
        options: dict[str, Any] = {}
        if inf.backend in ("auto", "tensorrt", "torch"):  # open_backend passes each backend its own options
            options.update(gpus=inf.gpus, contexts_per_gpu=inf.contexts_per_gpu,
                           engine_cache=inf.engine_cache or None)
        return lambda: open_backend(bundle, inf.backend, precision=inf.precision, max_batch=inf.max_batch,
                                    **options)

    def _make_work(self):
        return ScanWork.from_config(self.config.dsp, feature_spec=self.bundle.feature_spec if self.bundle else None,
                                    spectrum_pool=self.spectrum_pool)

    def _make_traces(self) -> TraceEvents:
        return TraceEvents(trace_names(self.config.dsp.xic))

    # ---- in-order emission (sequencer thread) -----------------------------------------
    def _emit(self, result: WorkerOutput) -> None:
        if result.kind == "status":
            self._on_instrument_status(result)
            return
        if result.kind != "scan":
            return
        scan: ProcessedScan = result.payload
        if scan.skipped:
            self._dsp_skipped += 1
        times = {"scan": result.scan_number, "t_device_ns": result.device_time_ns,
                 "t_acq_ns": result.host_time_ns, "t_dsp_ns": result.t_dsp_ns}
        peaks = scan.peaks
        self._peaks_total += len(peaks["mz"])
        # scan.peaks maps each PEAK_FIELDS name to its array, in that order: the buffers' names
        self.publisher.publish("peaks", {**times, "ms_level": scan.ms_level, "polarity": scan.polarity,
                                         "tic": scan.tic}, peaks)
        if scan.spectrum is not None:
            mz, intensity, release = scan.spectrum
            self.publisher.publish("spectrum", {**times, "kind": "processed"}, [mz, intensity], release=release)
        self._publish_trace(result, scan, times)
        if scan.position is not None and self.images.update(scan.position, scan.tic, scan.xic, time.monotonic()):
            header, buffers = self.images.message(time.monotonic())
            self.publisher.publish("image", {**times, **header}, buffers)
        self._scans_out += 1
        if self.batcher is not None and scan.features is not None:
            if not self.batcher.submit(result, scan.features, timeout=0):
                return  # counted by the batcher as dropped
        else:
            self.latency.add(time.monotonic_ns() - result.host_mono_ns)

    def _publish_trace(self, result: WorkerOutput, scan: ProcessedScan, times: dict) -> None:
        values = np.concatenate(([scan.tic], scan.xic)).astype("<f8")
        events = self.traces.update(result.scan_number, result.device_time_ns, scan.tic, scan.xic)
        self.publisher.publish("trace", {**times, "names": self.traces.names, "events": events}, [values])

    def _on_class(self, cls) -> None:
        """Batcher thread, in order: publish the label and close the scan's latency."""
        result: WorkerOutput = cls.key
        now = time.time_ns()
        if cls.error is None:
            self._classified += 1
            scan: ProcessedScan = result.payload
            # Inputs the model was not made for (m/z window not covered, far from the training data)
            # are labelled "unknown" with the reason (inference.ood; docs/wire.md, class).
            verdict = self.ood_gate.judge(cls.label, scan.features, *scan.mz_range)
            self.last_class = (verdict.label, cls.confidence)
            self.publisher.publish("class", {
                "scan": result.scan_number, "t_device_ns": result.device_time_ns, "t_acq_ns": result.host_time_ns,
                "t_dsp_ns": result.t_dsp_ns, "t_infer_ns": now, "label": verdict.label, "model_label": cls.label,
                **verdict.as_fields(),
                "confidence": cls.confidence, "labels": list(self.bundle.labels),
                "model": f"{self.bundle.name} {self.bundle.version}",
                "backend": self._backend_name(),
            }, [cls.probs])
        self.latency.add(time.monotonic_ns() - result.host_mono_ns)

    def _backend_name(self, key: str = "backend") -> str:
        """The running backend's name (or its ``device``/``precision``) from its describe()."""
        info = self.batcher.backend_info if self.batcher else None
        if isinstance(info, dict):
            return str(info.get(key) or (info.get("name") if key == "backend" else "") or "")
        return str(info or "") if key == "backend" else ""

    def _on_instrument_status(self, result: WorkerOutput) -> None:
        import dataclasses
        import struct

        from instrument.frames import decode_status

        try:
            status = decode_status(result.payload)
        except (ValueError, struct.error):
            log.debug("undecodable status frame (sequence %d)", result.sequence)
            return
        self.instrument_status = {k: (v.name.lower() if hasattr(v, "name") else v)
                                  for k, v in dataclasses.asdict(status).items()}

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, acquire: bool = True) -> "Pipeline":
        """Start every stage; the acquisition too unless ``acquire`` is False (then call
        :meth:`start_acquisition`, e.g. once subscribers have connected)."""
        self.started_at = time.monotonic()
        self._rates.sample({"scans": 0, "bytes": 0}, self.started_at)
        self.publisher.start()
        if self.batcher is not None:
            self.batcher.start()
            log.info("classifier: %s %s on %s", self.bundle.name, self.bundle.version, self._backend_name())
        self.dsp.start()
        self.sequencer.start()
        if acquire:
            self.start_acquisition()
        return self

    def start_acquisition(self) -> None:
        """Open the capture file (if configured) and start reading the source."""
        if self.config.capture.record:
            self.record_start(self.config.capture.record)
        self.acquisition.start()

    def finished(self) -> bool:
        """True once a finite source ended and everything downstream drained."""
        return not self.acquisition.alive and not self.dsp.alive and not self.sequencer.alive

    def stop(self, drain_timeout_s: float = 5.0) -> bool:
        """Stop acquisition, drain the stages within ``drain_timeout_s``, close files. True if drained."""
        deadline = time.monotonic() + drain_timeout_s
        remaining = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        self.acquisition.stop(timeout=remaining())
        self.ring.close()
        drained = self.dsp.join(remaining())
        if not drained:
            log.warning("DSP did not drain within %.1f s; stopping it", drain_timeout_s)
            self.dsp.stop()
        drained = self.sequencer.join(remaining()) and drained
        if self.batcher is not None:
            drained = self.batcher.stop(drain=True, timeout=remaining()) and drained
        self.record_stop()
        self.publisher.stop(timeout=remaining())
        if self._reload_thread is not None:
            self._reload_thread.join(remaining())
        self._stopped.set()
        return drained

    def reload_model(self, path: str | None = None) -> dict[str, Any]:
        """Load and check a bundle (default: the configured one), then swap it in between batches.

        Blocks until the new backend runs (minutes for an uncached TensorRT engine): call it
        through :meth:`start_reload` from the control thread or the daemon loop. Scans keep
        flowing meanwhile: the batcher queues them while the new backend starts. A bundle
        whose input spec differs from the running one is refused (the DSP workers compute
        features for the running spec).
        """
        if self.batcher is None:
            raise RuntimeError("no classifier is configured (inference.backend = none)")
        bundle = self._load_bundle(path if path is not None else self.config.inference.model)
        if bundle.feature_spec != self.bundle.feature_spec:
            raise ValueError(f"{bundle.json_path}: input spec differs from the running model's; restart to change it")
        self.batcher.reload(self._backend_factory(bundle))
        self.ood_gate = OodGate.from_bundle(bundle)
        self.bundle = bundle
        log.info("model reloaded: %s %s", bundle.name, bundle.version)
        return {"model": bundle.name, "version": bundle.version}

    def start_reload(self, path: str | None = None) -> dict[str, Any]:
        """Reload the model in the background; ``model_reload`` in status tells how it went.

        Returns at once with ``{"state": "reloading"}``; a second request while one runs is
        refused (RuntimeError).
        """
        if self.batcher is None:
            raise RuntimeError("no classifier is configured (inference.backend = none)")
        with self._record_lock:
            if self._reload_thread is not None and self._reload_thread.is_alive():
                raise RuntimeError("a model reload is already running; see model_reload in status")
            self.model_reload = "reloading"
            self._reload_thread = threading.Thread(target=self._reload, args=(path,), name="model-reload",
                                                   daemon=True)
            self._reload_thread.start()
        return {"state": "reloading"}

    def _reload(self, path: str | None) -> None:
        try:
            self.reload_model(path)
            self.model_reload = "ok"
        except Exception as exc:
            self.model_reload = f"failed: {exc}"
            log.error("model reload refused, the running model stays: %s", exc)

    # ---- recording ---------------------------------------------------------------------
    def record_start(self, path: str | Path) -> Path:
        """Start recording to ``path`` (relative paths resolve under capture.dir: config.resolve_capture_path)."""
        from instrument.recorder import Recorder

        path = resolve_capture_path(path, self.config.capture.dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._record_lock:
            if self.recorder is not None:
                raise RuntimeError(f"already recording to {self.recorder.path}; stop that first")
            description = {"source": self.source.describe(), "ring": vars(self.config.ring)}
            self.recorder = Recorder.from_config(self.ring, path, description, self.config.capture).start()
            self.record_error, self.record_low_space = "", False
        return path

    def record_stop(self) -> Path | None:
        with self._record_lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        recorder.stop()
        return recorder.path

    # ---- supervision (daemon loop, once a tick) ---------------------------------------
    def supervise(self) -> str | None:
        """Check every stage: restart dead DSP workers, end a failed recording.

        Returns why the daemon must stop (a stage that cannot be restarted safely died), or None.
        """
        self.dsp.restart_failed()
        recorder = self.recorder
        if recorder is not None and recorder.state in ("stopped_low_space", "failed"):
            # The recorder logged why and closed its file and ring reader; status keeps the reason.
            self.record_error = _record_error(recorder)
            self.record_low_space = recorder.low_space
            self.record_stop()
        for name, state in self.stage_states().items():
            if state.startswith("failed") and not name.startswith("dsp"):
                return f"the {name} stage {state}"
        if self.publisher.started and not self.publisher.alive and not self._stopped.is_set():
            return "the publisher thread died"
        return None

    def stage_states(self) -> dict[str, str]:
        """Every stage thread's state: running, stopped, not started or ``failed: why``."""
        states = {"acquisition": _thread_state(self.acquisition.alive, self.acquisition.stats.error,
                                               self.acquisition.started)}
        states.update(self.dsp.states())
        states["sequencer"] = self.sequencer.state
        if self.batcher is not None:
            err = self.batcher.error
            states["classifier"] = _thread_state(self.batcher.alive, err and f"{type(err).__name__}: {err}",
                                                 self.batcher.started)
        states["publisher"] = _thread_state(self.publisher.alive, None, self.publisher.started)
        recorder = self.recorder
        if recorder is not None:
            states["recorder"] = "running" if recorder.alive else (
                f"failed: {recorder.error}" if recorder.state == "failed" else "stopped")
        return states

    # ---- status ------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Compute rates (over a fixed window) and health once: the daemon loop's job, once a tick.

        Everyone else (control ``status``, Prometheus, the status topic) reads through
        :meth:`status`: live counters with the last tick's rates and health, so asking never
        changes a figure.
        """
        now = time.monotonic() if now is None else now
        self._last_rates = self._rates.sample({"scans": self._scans_out,
                                               "bytes": self.acquisition.stats.bytes_read}, now)
        snapshot = self.snapshot()
        self._health_reasons = self.health.check(snapshot, now)
        snapshot.update(self._health_fields(), state=self._state(self._health_reasons))
        return snapshot

    def status(self) -> dict[str, Any]:
        """Live counters, the last tick's rates and health (safe from any thread, changes nothing)."""
        return self.snapshot()

    def _health_fields(self) -> dict[str, Any]:
        reasons = self._health_reasons
        return {"health": "ok" if not reasons else "unhealthy",
                "health_reasons": "; ".join(reasons.values())}

    def _state(self, reasons: dict[str, str]) -> str:
        if self._stopped.is_set():
            return "stopped"
        if "stage" in reasons:
            return "degraded"
        if self.waiting_subscribers:
            return "waiting"
        return "running"

    def snapshot(self) -> dict[str, Any]:
        """Every live figure, flat where it is a number, for the status line, topic and metrics.

        Reads counters only (rates come from the last :meth:`tick`), so it may be called from
        any thread without disturbing anything.
        """
        acq, dec, ring = self.acquisition.stats, self.acquisition.decoder.stats, self.ring.stats
        rates = self._last_rates
        lat = self.latency.percentiles((50, 99))
        recorder = self.recorder
        pub = self.publisher.stats()
        batch = self.batcher.stats() if self.batcher else {}
        drops = {  # every figure here counts scans (frames); message drops are pub_drops_*
            "drops_ring_dsp": self.sequencer.skipped,
            "drops_ring_busy": ring.dropped_busy,
            "drops_ring_oversize": ring.dropped_oversize,
            "drops_recorder": recorder.dropped if recorder else 0,
            "drops_batcher": batch.get("dropped", 0),
        }
        snapshot = {
            "state": self._state(self._health_reasons),
            **self._health_fields(),
            "source": self.source.url.text,
            "uptime_s": time.monotonic() - self.started_at,
            "scans": self._scans_out,
            "scans_per_s": rates["scans"],
            "bytes": acq.bytes_read,
            "MBps": rates["bytes"] / 1e6,
            "frames": dec.frames,
            "peaks_per_scan": self._peaks_total / self._scans_out if self._scans_out else float("nan"),
            "crc_errors": dec.header_crc_errors + dec.payload_crc_errors,
            "header_crc_errors": dec.header_crc_errors,
            "payload_crc_errors": dec.payload_crc_errors,
            "bad_headers": dec.bad_headers,
            "sequence_restarts": dec.sequence_restarts,
            "resyncs": dec.resyncs,
            "bytes_skipped": dec.bytes_skipped,
            "sequence_gaps": dec.sequence_gaps,
            "disconnects": acq.disconnects,
            "reconnects": acq.reconnects,
            "reconnecting": not acq.connected and not acq.ended and self.acquisition.alive and acq.frames > 0,
            "source_ended": bool(acq.ended),
            "waiting_subscribers": self.waiting_subscribers,
            "ring_fill": self.ring.fill,
            "ring_policy": self.ring.policy.value,
            "dsp_workers": self.dsp.n,
            "dsp_errors": self.dsp.errors,
            "dsp_skipped": self._dsp_skipped,
            "dsp_restarts": self.dsp.restarts,
            "reorder_depth": self.sequencer.reorder_depth,
            "reorder_stalls": self.sequencer.stalled,
            "ring_oversize_kept": ring.oversize_kept,
            "ring_oversize_not_kept": ring.oversize_not_kept,
            **drops,
            "drops_total": sum(drops.values()),
            "latency_p50_ms": lat[50],
            "latency_p99_ms": lat[99],
            "recording": str(recorder.current_path) if recorder and recorder.state == "recording" else "",
            "recorded_frames": recorder.frames_written if recorder else 0,
            "record_error": self.record_error or (_record_error(recorder) if recorder and recorder.error else ""),
            "record_low_space": self.record_low_space or bool(recorder and recorder.low_space),
            "classified": self._classified,
            "backend": self._backend_name() if self.batcher else "none",
            "backend_device": self._backend_name("device"),
            "backend_precision": self._backend_name("precision"),
            "model": f"{self.bundle.name} {self.bundle.version}" if self.bundle else "",
            "model_reload": self.model_reload,
            "batch_mean": batch.get("mean_batch", float("nan")),
            "batch_queue_delay_p99_ms": batch.get("queue_delay_ms_p99", float("nan")),
            "instrument": self.instrument_status,
        }
        snapshot["stages"] = self.stage_states()
        if self.last_class:
            snapshot["last_class"], snapshot["last_confidence"] = self.last_class
        snapshot.update({k: v for k, v in pub.items() if isinstance(v, (int, float))})
        return snapshot


def _record_error(recorder) -> str:
    return f"recording to {recorder.current_path} stopped: {recorder.error or 'low disk space'}"


def _thread_state(alive: bool, error: str | None, started: bool) -> str:
    if alive:
        return "running"
    if error:
        return f"failed: {error}"
    return "stopped" if started else "not started"
