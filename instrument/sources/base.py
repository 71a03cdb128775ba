"""The Source interface: something that yields device-frame bytes.

A source only moves bytes. Framing, CRCs and resync live in the decoder
(instrument.frames.FrameDecoder); threads, rings and reconnect policy live in the
acquisition thread (instrument.acquisition). That split keeps every source small and
lets the decoder be tested without threads or devices.

Error contract (the acquisition thread relies on it):
- ``open()`` raises SourceUnavailable when the device cannot be opened *now*
  (missing, unplugged); the thread retries with backoff. Its subclass SourceBusy says
  another process holds the device: refused at start-up, retried after a disconnect.
- ``readinto(buf)`` returns the number of bytes written into ``buf``; 0 means
  "no data yet" (a read timeout, ~0.1 s at most, so the thread can notice stop requests).
  It raises SourceDisconnected when the device vanished mid-stream (the thread closes,
  counts it and reopens), and EndOfSource when a finite source (a file, a replay) is done.
- Anything else raised is a bug, and is reported as such.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


class AcquisitionError(IOError):
    """Base of every error a source raises on purpose."""


class SourceUnavailable(AcquisitionError):
    """The device cannot be opened now (missing, busy, no permission); retrying may help."""


class SourceBusy(SourceUnavailable):
    """Another process holds the device (a serial port locked by a second daemon, say).

    At start-up this is an error, not something to wait out: the acquisition thread's start()
    raises it. After a disconnect it is retried like any SourceUnavailable.
    """


class SourceDisconnected(AcquisitionError):
    """The device went away mid-stream (unplugged adapter, closed socket)."""


class EndOfSource(Exception):
    """A finite source (file, replay) has delivered everything."""


class SourceConfigError(ValueError):
    """A source URL or option is malformed; the message names it and what is expected."""


@dataclass(frozen=True)
class SourceURL:
    """A parsed source URL such as ``serial:///dev/ttyUSB0?baud=921600``."""

    scheme: str
    netloc: str
    path: str
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "SourceURL":
        if "://" not in text:
            raise SourceConfigError(
                f"source {text!r} is not a URL; expected e.g. sim://, serial:///dev/ttyUSB0?baud=921600, "
                "tcp://127.0.0.1:5555, replay://capture.isc?speed=max, usb://1234:5678"
            )
        parts = urlsplit(text)
        options: dict[str, str] = {}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            options[key] = values[-1]
        return cls(parts.scheme.lower(), parts.netloc, parts.path, options, text)

    def option(self, name: str, default: Any, kind: type = str) -> Any:
        """Option ``name`` converted with ``kind``; SourceConfigError names a bad value."""
        if name not in self.options:
            return default
        raw = self.options[name]
        try:
            return kind(raw)
        except (TypeError, ValueError):
            expected = {int: "an integer", float: "a number"}.get(kind, f"a {kind.__name__}")
            raise SourceConfigError(
                f"source {self.text!r}: option {name}={raw or '(empty)'} is not {expected}"
            ) from None

    def check_options(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise SourceConfigError(
                f"source {self.text!r}: unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            )


class Source(abc.ABC):
    """A byte stream of device frames. Not thread-safe: one acquisition thread owns it."""

    #: True for sources that end (files, replays): EndOfSource stops acquisition cleanly.
    finite: bool = False

    def __init__(self, url: SourceURL):
        self.url = url

    @abc.abstractmethod
    def open(self) -> None:
        """Open the device. Raises SourceUnavailable when it cannot be opened now."""

    @abc.abstractmethod
    def readinto(self, buf: memoryview) -> int:
        """Read up to len(buf) bytes into buf; 0 = no data yet (timeout <= ~0.1 s)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice or after a failed open."""

    def describe(self) -> dict[str, Any]:
        """Settings that describe this source, recorded in capture headers (JSON-able)."""
        return {"url": self.url.text, "kind": self.url.scheme}

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
