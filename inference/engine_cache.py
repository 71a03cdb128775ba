"""On-disk cache of serialized TensorRT engines (and timing caches).

An engine runs only on the TensorRT version and GPU architecture it was built for, and embodies
one precision and one optimisation profile, so the cache key is::

    ONNX SHA-256 + TensorRT version + GPU name + compute capability + precision
    + profile (min/opt/max batch, number of profiles) + feature length

Each entry is one file ``<key>.engine``::

    b"IONSTREAM-ENGINE\\n" | u32 header length | header JSON (the key fields, plan SHA-256 and size) | plan

Loading checks the magic, the header, that the header's key fields equal the requested ones and
the plan's SHA-256. A file that fails any check (truncated write, bit rot, a different TensorRT
or GPU, a hand-copied file) is *stale or corrupt*: :meth:`EngineCache.load` logs one line saying
which and why and returns None, and the caller rebuilds and stores a fresh entry. Writes go to a
temporary file that is renamed into place, so a crash never leaves a half-written entry under the
final name. Timing caches (``timing-<trt>-<gpu>-sm<cc>.cache``) are shared by all models on one
TensorRT version and GPU.

This module is plain Python (no TensorRT import), so it is tested everywhere.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("ionstream.inference")

MAGIC = b"IONSTREAM-ENGINE\n"
_LEN = struct.Struct("<I")
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ionstream" / "engines"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str       # "9.0"
    precision: str                # fp32 | fp16 | int8 (the ONNX graph's precision)
    profiles: int                 # identical optimisation profiles, one per execution context
    min_batch: int
    opt_batch: int
    max_batch: int
    n_features: int

    @property
    def filename(self) -> str:
        return (f"{self.onnx_sha256[:16]}-{self.precision}-b{self.min_batch}_{self.opt_batch}_{self.max_batch}x{self.profiles}"
                f"-f{self.n_features}-trt{_slug(self.trt_version)}-{_slug(self.gpu_name)}"
                f"-sm{self.compute_capability.replace('.', '')}.engine")

    @property
    def timing_cache_name(self) -> str:
        return (f"timing-trt{_slug(self.trt_version)}-{_slug(self.gpu_name)}"
                f"-sm{self.compute_capability.replace('.', '')}.cache")


class EngineCache:
    """A directory of engine files; see the module docstring."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    def path(self, key: EngineKey) -> Path:
        return self.directory / key.filename

    def load(self, key: EngineKey) -> bytes | None:
        """The cached plan for ``key``, or None (missing, or stale/corrupt: logged)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("engine cache: cannot read %s (%s); rebuilding", path, exc)
            return None
        problem = self._check(data, key)
        if problem:
            log.warning("engine cache: %s is %s; rebuilding", path, problem)
            return None
        return data[len(MAGIC) + _LEN.size + _LEN.unpack_from(data, len(MAGIC))[0]:]

    @staticmethod
    def _check(data: bytes, key: EngineKey) -> str | None:
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
            return "corrupt (no ionstream engine header)"
        (hlen,) = _LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        if start + hlen > len(data):
            return "corrupt (truncated header)"
        try:
            header = json.loads(data[start:start + hlen])
        except (ValueError, UnicodeDecodeError):
            return "corrupt (unreadable header)"
        if not isinstance(header, dict) or header.get("cache_version") != CACHE_VERSION:
            return f"stale (cache format {header.get('cache_version') if isinstance(header, dict) else '?'})"
        want = asdict(key)
        for field_name, value in want.items():
            if header.get(field_name) != value:
                return f"stale ({field_name} {header.get(field_name)!r} != {value!r})"
        plan = data[start + hlen:]
        if len(plan) != header.get("plan_size"):
            return f"corrupt (plan is {len(plan)} bytes, header says {header.get('plan_size')})"
        if hashlib.sha256(plan).hexdigest() != header.get("plan_sha256"):
            return "corrupt (plan checksum mismatch)"
        return None

    def store(self, key: EngineKey, plan: bytes) -> Path:
        """Write ``plan`` for ``key`` atomically; returns the file's path."""
        plan = bytes(plan)
        header = dict(asdict(key), cache_version=CACHE_VERSION, plan_size=len(plan),
                      plan_sha256=hashlib.sha256(plan).hexdigest())
        hbytes = json.dumps(header, sort_keys=True).encode()
        return self._atomic_write(self.path(key), MAGIC + _LEN.pack(len(hbytes)) + hbytes + plan)

    def discard(self, key: EngineKey) -> None:
        """Remove an entry (e.g. one whose plan TensorRT refused to deserialize)."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def load_timing_cache(self, key: EngineKey) -> bytes:
        try:
            return (self.directory / key.timing_cache_name).read_bytes()
        except OSError:
            return b""

    def store_timing_cache(self, key: EngineKey, data: bytes) -> None:
        if data:
            self._atomic_write(self.directory / key.timing_cache_name, bytes(data))

    def _atomic_write(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path
