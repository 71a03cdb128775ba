"""Logging set-up: plain lines on a terminal, key=value or JSON lines for the journal."""
from __future__ import annotations

import json
import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``ts=... level=... logger=... msg="..."`` plus extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={json.dumps(record.getMessage())}"]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
        if record.exc_info:
            parts.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class ClientFormatter(logging.Formatter):
    """A client command's line on a terminal: ``ionstream status: no reply from ...``
    (``warning:`` before a warning), one sentence, no timestamp or logger name."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno >= logging.ERROR or record.levelno <= logging.INFO else \
            f"{record.levelname.lower()}: "
        text = f"{self.prog}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


FORMATS = ("plain", "kv", "json", "client")


def setup_logging(level: int = logging.INFO, fmt: str | None = None, *, prog: str = "ionstream") -> None:
    """Configure the root logger on stderr.

    ``fmt``: "plain" (timestamped human lines: the daemon's on a terminal), "client" (one
    ``PROG: message`` sentence per record: a client command's on a terminal), "kv" (one
    key=value line per record, as the systemd journal likes it; the default when stderr is not
    a terminal) or "json". None: "plain" on a terminal, "kv" otherwise.
    """
    if fmt is None:
        fmt = "plain" if sys.stderr.isatty() else "kv"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "kv":
        handler.setFormatter(KeyValueFormatter())
    elif fmt == "client":
        handler.setFormatter(ClientFormatter(prog))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
