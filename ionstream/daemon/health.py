"""Daemon health: what "working" means, judged once per status tick from the snapshot.

The daemon is *unhealthy* while any of these holds (docs/operations.md, "Health"):
- ``no_data``: no frame arrived from the source for ``stall_s`` seconds (a finished replay,
  a daemon still waiting for subscribers and a reconnecting source are reported as such);
- ``drops``: scans were dropped during the last ``drop_window_s`` seconds;
- ``ring``: the ring is fuller than ``ring_fill_max`` for the slowest reader;
- ``stage``: a stage failed (named in the reason);
- ``recording``: a recording stopped on an error (disk full, I/O error).

Each episode is logged once at WARNING when it starts and once at INFO when it clears, so a
journal shows a problem without repeating it every second. ``ionstream status`` turns the
result into its exit code.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ionstream.daemon.health")


@dataclass
class HealthLimits:
    """Thresholds (seconds and ratios) of the health rules."""

    stall_s: float = 5.0
    drop_window_s: float = 10.0
    ring_fill_max: float = 0.9


@dataclass
class HealthMonitor:
    """Judges snapshots (``check`` once per tick, from the daemon loop only)."""

    limits: HealthLimits = field(default_factory=HealthLimits)
    _active: dict[str, str] = field(default_factory=dict)
    _drops: deque = field(default_factory=deque)   # (monotonic s, drops_total)
    _last_frames: int = -1
    _last_frame_t: float = 0.0

    def check(self, snapshot: dict[str, Any], now: float) -> dict[str, str]:
        """Reasons the daemon is unhealthy now (``{rule: text}``, empty when healthy); logs changes."""
        reasons = {}
        for rule, text in (("no_data", self._no_data(snapshot, now)), ("drops", self._dropping(snapshot, now)),
                           ("ring", self._ring(snapshot)), ("stage", self._stages(snapshot)),
                           ("recording", snapshot.get("record_error") or None)):
            if text:
                reasons[rule] = text
        self._log_changes(reasons)
        return reasons

    def _no_data(self, s: dict[str, Any], now: float) -> str | None:
        frames = int(s.get("frames", 0))
        if frames != self._last_frames:
            self._last_frames, self._last_frame_t = frames, now
            return None
        if s.get("source_ended") or s.get("waiting_subscribers"):
            return None
        silent = now - self._last_frame_t
        if silent < self.limits.stall_s:
            return None
        what = "source lost, reconnecting" if s.get("reconnecting") else "no data from the source"
        return f"{what} for {silent:.0f} s"

    def _dropping(self, s: dict[str, Any], now: float) -> str | None:
        drops = int(s.get("drops_total", 0))
        self._drops.append((now, drops))
        while len(self._drops) > 1 and now - self._drops[1][0] >= self.limits.drop_window_s:
            self._drops.popleft()
        new = drops - self._drops[0][1]
        if new <= 0:
            return None
        return f"{new} scan(s) dropped in the last {self.limits.drop_window_s:.0f} s"

    def _ring(self, s: dict[str, Any]) -> str | None:
        fill = float(s.get("ring_fill", 0.0))
        if fill <= self.limits.ring_fill_max:
            return None
        return f"ring {fill:.0%} full (a consumer is not keeping up)"

    @staticmethod
    def _stages(s: dict[str, Any]) -> str | None:
        failed = [f"{name} {state}" for name, state in s.get("stages", {}).items() if state.startswith("failed")]
        return "; ".join(failed) or None

    def _log_changes(self, reasons: dict[str, str]) -> None:
        for rule, text in reasons.items():
            if rule not in self._active:
                log.warning("unhealthy: %s", text)
        for rule in list(self._active):
            if rule not in reasons:
                log.info("recovered: %s", self._active[rule])
        self._active = dict(reasons)
