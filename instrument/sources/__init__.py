"""Byte sources, chosen by URL scheme.

=========  ===============================================  =========================
scheme     example                                          module
=========  ===============================================  =========================
sim        ``sim://?rate=20&samples=65536&seed=1``          instrument.sources.sim
serial     ``serial:///dev/ttyUSB0?baud=921600``            instrument.sources.serial
tcp        ``tcp://127.0.0.1:5555``                         instrument.sources.tcp
replay     ``replay://path/to/capture.isc?speed=1.0|max``   instrument.sources.replay
usb        ``usb://1234:5678?serial=SN&ep=0x81``            instrument.sources.usb
=========  ===============================================  =========================
"""
from __future__ import annotations

import importlib

from instrument.sources.base import (
    AcquisitionError,
    EndOfSource,
    Source,
    SourceConfigError,
    SourceDisconnected,
    SourceUnavailable,
    SourceURL,
)

SCHEMES: dict[str, str] = {
    "sim": "instrument.sources.sim",
    "serial": "instrument.sources.serial",
    "tcp": "instrument.sources.tcp",
    "replay": "instrument.sources.replay",
    "usb": "instrument.sources.usb",
}

__all__ = ["open_source", "SCHEMES", "Source", "SourceURL", "AcquisitionError", "SourceUnavailable",
           "SourceDisconnected", "EndOfSource", "SourceConfigError"]


def open_source(url: str | SourceURL) -> Source:
    """A Source for ``url`` (not yet opened). SourceConfigError names an unknown scheme."""
    parsed = url if isinstance(url, SourceURL) else SourceURL.parse(url)
    module_name = SCHEMES.get(parsed.scheme)
    if module_name is None:
        raise SourceConfigError(
            f"source {parsed.text!r}: unknown scheme {parsed.scheme!r}; known: {', '.join(SCHEMES)}"
        )
    module = importlib.import_module(module_name)
    return module.create(parsed)
