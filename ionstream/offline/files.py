"""Writing output files safely: a temporary file beside the target, renamed into place on success."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

__all__ = ["atomic_output", "sha1_of"]


@contextlib.contextmanager
def atomic_output(path: Path, *, overwrite: bool = True):
    """Yield a temporary path beside ``path``; on success it becomes ``path``, on failure it goes.

    ``overwrite=False`` raises FileExistsError (before any work, and atomically at the end)
    instead of replacing an existing file.
    """
    if not overwrite and path.exists():
        raise FileExistsError(errno.EEXIST, "file exists", str(path))
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never replace a capture
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def sha1_of(path) -> str:
    """The SHA-1 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
