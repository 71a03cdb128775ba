"""`ionstream listen`: print a daemon's messages as they arrive, then a gap/latency summary."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any, TextIO

import numpy as np

from ionstream.cli.common import (
    add_pub_arguments,
    client_curve,
    error_sentence,
    pub_endpoint,
    report_config_error,
)
from ionstream.config import ConfigError

HELP = "print published messages (peaks, classes, ...) as they arrive"
DESCRIPTION = (
    "Subscribe to a running daemon and print each message: a table line per message, or one "
    "JSON object per line with --json (header, arrays as lists, gap, received_ns). Missed "
    "messages (sequence gaps) and publisher restarts are reported as they happen; on exit a "
    "summary gives counts, gaps and latency percentiles on stderr (also on Ctrl-C and SIGTERM; a "
    "publisher restart counts once, whatever the number of topics). Exit status: 0 after --count "
    "messages, Ctrl-C or SIGTERM, 1 when --timeout passes without a message."
)
log = logging.getLogger("ionstream.listen")

DEFAULT_TOPICS = "peaks,class"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pub_arguments(parser)
    parser.add_argument("--topics", default=DEFAULT_TOPICS, metavar="LIST",
                        help="comma-separated topics: peaks, class, spectrum, trace, status, or 'all' "
                             "(default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message on stdout")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="exit with status 1 if no message arrives for S seconds")
    parser.add_argument("--no-arrays", action="store_true", help="with --json: leave the arrays out")


def summarise(topic: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """A short human description of one message's content."""
    try:
        if topic == "peaks":
            mz, intensity = arrays.get("mz"), arrays.get("intensity")
            n = 0 if mz is None else len(mz)
            if n:
                top = int(np.argmax(intensity))
                return f"{n:4d} peaks  base m/z {mz[top]:.4f} ({intensity[top]:.3g})"
            return "   0 peaks"
        if topic == "class":
            probs = arrays.get("probabilities")
            p = f" p={float(probs.max()):.3f}" if probs is not None and len(probs) else ""
            return f"{header.get('label', '?')}{p}"
        if topic == "spectrum":
            inten = arrays.get("intensity")
            return f"{0 if inten is None else inten.size} points ({header.get('kind', '')})"
        if topic == "trace":
            values = arrays.get("values")
            tic = f"TIC {float(values[0]):.4g}" if values is not None and len(values) else ""
            events = header.get("events") or []
            return tic + (f"  {len(events)} event(s)" if events else "")
        if topic == "status":
            stats = header.get("stats") or {}
            return (f"{stats.get('state', '?')}  {stats.get('scans_per_s') or 0:.1f} scans/s  "
                    f"drops {stats.get('drops_total', 0)}")
    except (TypeError, ValueError, IndexError):
        pass
    names = ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items())
    return names or "-"


class Summary:
    """Counts, gaps and latencies of what `listen` saw."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.restarts = 0
        self._restarted_sessions: set[str] = set()
        self.latencies_ms: list[float] = []

    def add(self, msg: Any) -> bool:
        """Count ``msg``; True when it is the first sign of a publisher restart (a new session).

        Every topic's next message carries ``restarted``; one restart is counted once.
        """
        self.count[msg.topic] = self.count.get(msg.topic, 0) + 1
        if msg.gap:
            self.gaps[msg.topic] = self.gaps.get(msg.topic, 0) + msg.gap
        new_restart = bool(msg.restarted) and msg.session not in self._restarted_sessions
        if new_restart:
            self._restarted_sessions.add(msg.session)
            self.restarts += 1
        latency = msg.latency_ms()
        if latency is not None and len(self.latencies_ms) < 1_000_000:
            self.latencies_ms.append(latency)
        return new_restart

    def lines(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        total = sum(self.count.values())
        out = [f"{total} message(s) in {elapsed:.1f} s: "
               + (", ".join(f"{t} {n}" for t, n in sorted(self.count.items())) or "none")]
        missed = sum(self.gaps.values())
        out.append(f"missed {missed}" + (" (" + ", ".join(f"{t} {n}" for t, n in sorted(self.gaps.items())) + ")"
                                         if missed else "") + (f"; publisher restarts {self.restarts}"
                                                                if self.restarts else ""))
        if self.latencies_ms:
            p50, p99 = np.percentile(self.latencies_ms, [50, 99])
            out.append(f"latency acquisition->here p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                       f"max {max(self.latencies_ms):.2f} ms")
        return out


class _Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C does (summary printed, exit status 0)."""


def _on_sigterm(_signum, _frame) -> None:
    raise _Terminated()


def main(args: argparse.Namespace) -> int:
    from ionstream.client.keys import SecurityError
    from ionstream.client.subscriber import Subscriber

    try:
        endpoint = pub_endpoint(args)
        curve = client_curve(args)
        sub = Subscriber(endpoint, args.topics, timeout=args.timeout, curve=curve)
    except ConfigError as exc:
        return report_config_error(log, exc)
    except (SecurityError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # a malformed endpoint (zmq.ZMQError): one sentence, no traceback
        log.error("cannot connect to %s: %s", endpoint, error_sentence(exc))
        return 2
    # SIGTERM ends `listen` as Ctrl-C does: with the summary (only the main thread may set handlers).
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    summary = Summary()
    try:
        return _listen(args, sub, endpoint, summary)
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        for line in summary.lines():
            print(line, file=sys.stderr)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _listen(args: argparse.Namespace, sub: Any, endpoint: str, summary: Summary) -> int:
    from ionstream.client.wire import WireError, WireVersionError

    out: TextIO = sys.stdout
    if not args.json:
        print(f"listening on {endpoint} for {'all topics' if sub.topics is None else ', '.join(sub.topics)}"
              f"{'' if args.timeout is None else f' (timeout {args.timeout:g} s)'}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        print(f"{'time':<12} {'topic':<8} {'seq':>7} {'scan':>8} {'lat ms':>7}  content", file=out)
    with sub:
        while args.count is None or sum(summary.count.values()) < args.count:
            try:
                msg = sub.recv()
            except (TimeoutError, WireVersionError) as exc:
                log.error("%s", exc)
                return 1
            except WireError as exc:
                log.warning("malformed message skipped: %s", exc)
                continue
            new_restart = summary.add(msg)
            if args.json:
                out.write(json.dumps(msg.to_dict(arrays=not args.no_arrays), allow_nan=True) + "\n")
                out.flush()
                continue
            if new_restart:
                print(f"! publisher restarted (session {msg.session}); numbering starts over", file=out)
            if msg.gap:
                print(f"! missed {msg.gap} {msg.topic} message(s) (seq {msg.seq - msg.gap}..{msg.seq - 1})",
                      file=out)
            latency = msg.latency_ms()
            stamp = time.strftime("%H:%M:%S", time.localtime(msg.received_ns / 1e9)) + \
                f".{msg.received_ns // 1_000_000 % 1000:03d}"
            scan = "-" if msg.scan is None else msg.scan
            lat = "-" if latency is None else f"{latency:.2f}"
            print(f"{stamp:<12} {msg.topic:<8} {msg.seq:>7} {scan:>8} {lat:>7}  "
                  f"{summarise(msg.topic, dict(msg.header), dict(msg.arrays))}", file=out, flush=True)
    return 0
