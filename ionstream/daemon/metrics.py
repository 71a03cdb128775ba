"""Optional Prometheus endpoint: the same figures as the status line and the status topic.

A custom collector reads the daemon's last status tick at scrape time, so the exported numbers
are the pipeline's own counters, not a second set of books kept in parallel, and a scrape never
changes what anyone else sees. Counters are exported as counters: let PromQL's ``rate()``
compute rates over the window you choose.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

log = logging.getLogger("ionstream.daemon.metrics")

# snapshot key -> (metric name, help)
COUNTERS = {
    "scans": ("ionstream_scans_total", "scans published"),
    "bytes": ("ionstream_source_bytes_total", "bytes read from the source"),
    "dsp_restarts": ("ionstream_dsp_restarts_total", "DSP workers restarted after they died"),
    "frames": ("ionstream_frames_total", "device frames decoded"),
    "crc_errors": ("ionstream_crc_errors_total", "frames with a failed header or payload CRC"),
    "header_crc_errors": ("ionstream_header_crc_errors_total", "frames whose header CRC failed"),
    "payload_crc_errors": ("ionstream_payload_crc_errors_total", "frames whose payload CRC failed (noisy link)"),
    "bad_headers": ("ionstream_bad_headers_total", "frame headers impossible or not understood (e.g. newer version)"),
    "sequence_restarts": ("ionstream_sequence_restarts_total", "device sequence restarts (firmware restarted)"),
    "resyncs": ("ionstream_resyncs_total", "decoder resynchronisations after bad bytes"),
    "bytes_skipped": ("ionstream_bytes_skipped_total", "bytes skipped while resynchronising"),
    "sequence_gaps": ("ionstream_sequence_gaps_total", "missing device sequence numbers"),
    "disconnects": ("ionstream_source_disconnects_total", "device losses"),
    "reconnects": ("ionstream_source_reconnects_total", "device re-opens after a loss"),
    "dsp_errors": ("ionstream_dsp_errors_total", "scans whose DSP raised"),
    "dsp_skipped": ("ionstream_dsp_skipped_total", "valid scans the DSP could not analyse (published empty)"),
}
GAUGES = {
    "scans_per_s": ("ionstream_scan_rate", "scans per second"),
    "ring_fill": ("ionstream_ring_fill_ratio", "ring buffer fill for the slowest reader (0..1)"),
    "latency_p50_ms": ("ionstream_latency_p50_ms", "frame-in to message-out latency, median (ms)"),
    "latency_p99_ms": ("ionstream_latency_p99_ms", "frame-in to message-out latency, 99th percentile (ms)"),
    "reorder_depth": ("ionstream_reorder_depth", "results waiting for order restoration"),
}


def serve(port: int, snapshot: Callable[[], dict[str, Any]]):
    """Serve /metrics on 127.0.0.1:port; returns the server (call .shutdown() to stop)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

    class SnapshotCollector:
        def collect(self):
            s = snapshot()
            for key, (name, doc) in COUNTERS.items():
                if key in s:
                    yield CounterMetricFamily(name.removesuffix("_total"), doc, value=s[key])
            for key, (name, doc) in GAUGES.items():
                value = s.get(key)
                if isinstance(value, (int, float)) and not math.isnan(value):
                    yield GaugeMetricFamily(name, doc, value=value)
            yield GaugeMetricFamily("ionstream_healthy", "1 when no health rule fires (docs/operations.md)",
                                    value=1.0 if s.get("health", "ok") == "ok" else 0.0)
            drops = CounterMetricFamily("ionstream_drops", "scans dropped, per place", labels=["stage"])
            for key, value in s.items():
                if key.startswith("drops_") and key != "drops_total":
                    drops.add_metric([key.removeprefix("drops_")], value)
            yield drops

    registry = CollectorRegistry()
    registry.register(SnapshotCollector())
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    log.info("Prometheus metrics on 127.0.0.1:%d/metrics", port)
    return server, thread
