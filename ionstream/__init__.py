"""ionstream: real-time acquisition and analysis pipeline for mass spectrometers.

Analysis applications import only this package::

    from ionstream import Subscriber
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Subscriber", "Message", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import ionstream` stays cheap for the CLI and needs no zmq until used.
    if name in ("Subscriber", "Message"):
        from ionstream.client import subscriber

        return getattr(subscriber, name)
    raise AttributeError(f"module 'ionstream' has no attribute {name!r}")
