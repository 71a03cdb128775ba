"""The pipeline owner: builds every stage from a Config, starts, snapshots and stops them.

source → AcquisitionThread → RingBuffer ─┬─▶ Recorder (capture file)
                                          └─▶ DspWorkers ─▶ Sequencer (order) ─▶ traces, batcher, publisher
Stop order drains downstream: acquisition first, then the ring closes, DSP drains it,
the sequencer emits the rest, the batcher flushes, the publisher sends, files close.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from instrument.acquisition import AcquisitionThread
from instrument.ring import RingBuffer
from instrument.sources import open_source
from ionstream.config import Config
from ionstream.rates import LatencyWindow, RateMeter
from ionstream.stages import DspWorkers, ScanResult, Sequencer, tic_only

log = logging.getLogger("ionstream.pipeline")


class Pipeline:
    """The running daemon's stages. start() / stop(); snapshot() for status; record_* for captures."""

    def __init__(self, config: Config):
        self.config = config
        self.source = open_source(config.source.url)
        self.ring = RingBuffer(config.ring.slots, config.ring.resolved_slot_bytes(), config.ring.policy)
        self.acquisition = AcquisitionThread(self.source, self.ring)
        self.recorder = None
        self._record_lock = threading.Lock()
        self._results: queue.Queue[ScanResult] = queue.Queue(maxsize=4 * config.ring.slots)
        self.dsp = DspWorkers(self.ring, config.dsp_workers(), self._make_processor, self._results)
        self.sequencer = Sequencer(self.dsp, self._results, self._emit, self.ring._head)
        self.latency = LatencyWindow()
        self._rates = RateMeter()
        self._last_scan: dict[str, Any] = {}
        self._scans_out = 0
        self._peaks_total = 0
        self.started_at = 0.0
        self._stopped = threading.Event()

    # ---- stage hooks -----------------------------------------------------------------
    def _make_processor(self):
        return tic_only

    def _emit(self, result: ScanResult) -> None:
        """Called by the sequencer, in ring order, once per frame."""
        if result.kind != "scan":
            return
        self._scans_out += 1
        self.latency.add(time.time_ns() - result.host_time_ns)
        self._last_scan = {"scan_number": result.scan_number, **(result.payload or {})}

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "Pipeline":
        self.started_at = time.monotonic()
        self._rates.update({"scans": 0, "bytes": 0})
        self.dsp.start()
        self.sequencer.start()
        if self.config.capture.record:
            self.record_start(self.config.capture.record)
        self.acquisition.start()
        return self

    def finished(self) -> bool:
        """True once a finite source ended and everything downstream drained."""
        return not self.acquisition.alive and not self.dsp.alive and not self.sequencer.alive

    def stop(self, drain_timeout_s: float = 5.0) -> bool:
        """Stop acquisition, drain the stages within ``drain_timeout_s``, close files. True if drained."""
        deadline = time.monotonic() + drain_timeout_s
        self.acquisition.stop(timeout=max(0.1, deadline - time.monotonic()))
        self.ring.close()
        drained = self.dsp.join(max(0.1, deadline - time.monotonic()))
        if not drained:
            log.warning("DSP did not drain within %.1f s; stopping it", drain_timeout_s)
            self.dsp.stop()
        drained = self.sequencer.join(max(0.1, deadline - time.monotonic())) and drained
        self.record_stop()
        self._stopped.set()
        return drained

    # ---- recording -------------------------------------------------------------------
    def record_start(self, path: str | Path) -> Path:
        from instrument.recorder import Recorder

        path = Path(path)
        if not path.is_absolute() and path.parent == Path("."):
            path = Path(self.config.capture.dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._record_lock:
            if self.recorder is not None:
                raise RuntimeError(f"already recording to {self.recorder.path}; stop that first")
            description = {"source": self.source.describe(), "config": {"ring": vars(self.config.ring)}}
            self.recorder = Recorder(self.ring, path, description,
                                     fsync_interval_s=self.config.capture.fsync_interval_s,
                                     compress=self.config.capture.compress).start()
        return path

    def record_stop(self) -> Path | None:
        with self._record_lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        recorder.stop()
        return recorder.path

    # ---- status ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every live figure, flat, for the status line, the status topic and metrics."""
        acq, dec, ring = self.acquisition.stats, self.acquisition.decoder.stats, self.ring.stats
        counters = {"scans": self._scans_out, "bytes": acq.bytes_read}
        rates = self._rates.update(counters)
        lat = self.latency.percentiles((50, 99))
        recorder = self.recorder
        drops = {
            "drops_ring_dsp": self.dsp.dropped,
            "drops_ring_busy": ring.dropped_busy,
            "drops_ring_oversize": ring.dropped_oversize,
            "drops_recorder": recorder.dropped if recorder else 0,
        }
        return {
            "state": "running" if not self._stopped.is_set() else "stopped",
            "source": self.source.url.text,
            "uptime_s": time.monotonic() - self.started_at,
            "scans": self._scans_out,
            "scans_per_s": rates["scans"],
            "MBps": rates["bytes"] / 1e6,
            "frames": dec.frames,
            "crc_errors": dec.header_crc_errors + dec.payload_crc_errors,
            "resyncs": dec.resyncs,
            "bytes_skipped": dec.bytes_skipped,
            "sequence_gaps": dec.sequence_gaps,
            "disconnects": acq.disconnects,
            "reconnects": acq.reconnects,
            "reconnecting": not acq.connected and not acq.ended and self.acquisition.alive and acq.frames > 0,
            "ring_fill": self.ring.fill,
            "dsp_workers": self.dsp.n,
            "dsp_errors": self.dsp.errors,
            "reorder_depth": self.sequencer.reorder_depth,
            **drops,
            "drops_total": sum(drops.values()),
            "latency_p50_ms": lat[50],
            "latency_p99_ms": lat[99],
            "recording": str(recorder.path) if recorder else "",
            "recorded_frames": recorder.frames if recorder else 0,
        }
