"""Reprocessing settings and identities: what a run computes with, and which capture it is.

:class:`Settings` (DSP, XIC windows, model, backend), the settings hash and a capture's identity
make the key that lets a rerun skip a capture already done (see :mod:`ionstream.offline.reprocess`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


OUTPUT_FORMAT = 2  # 2: classes gain model_label, coverage, ood_score, unknown_reason
"""Version of the output layout; part of the settings hash (a new layout redoes everything)."""
ID_BYTES = 64 * 1024
"""Bytes hashed at each end of a capture for its identity."""
CAPTURE_SUFFIXES = (".isc",)
"""Files taken from a directory argument (recursively)."""


# ---------------------------------------------------------------------------------------
# Settings and identity
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything that decides the results. Plain data: it travels to the workers.

    ``backend`` is ``onnxruntime``, ``tensorrt`` or ``none`` (no classes); a config's
    ``auto`` becomes ``onnxruntime`` here (Dask workers are CPU processes unless told
    otherwise, and ONNX Runtime on the CPU is the reference the live results are checked
    against). ``model`` is a bundle directory or "" for the shipped default.
    """

    smoothing: str = "savgol"
    min_snr: float = 3.0
    preset: str = ""
    xic: tuple[tuple[float, float], ...] = ()
    backend: str = "onnxruntime"
    model: str = ""
    precision: str = "fp32"
    max_batch: int = 32

    @classmethod
    def from_config(cls, config) -> Settings:
        """The settings the daemon would use with ``config`` (an ionstream.config.Config)."""
        dsp, inf = config.dsp, config.inference
        backend = "onnxruntime" if inf.backend == "auto" else inf.backend
        return cls(smoothing=dsp.smoothing, min_snr=float(dsp.min_snr), preset=dsp.preset,
                   xic=tuple((float(lo), float(hi)) for lo, hi in dsp.xic), backend=backend,
                   model=str(inf.model or ""), precision=inf.precision, max_batch=int(inf.max_batch))

    # What the settings hash records of the DSP; the ScanWork itself comes from
    # ionstream.processing.ScanWork.from_config(settings), the daemon's construction.
    @property
    def dsp_params(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "min_snr": self.min_snr, "preset": self.preset}

    @property
    def trace_names(self) -> list[str]:
        """Names of the trace values, as the daemon's ``trace`` topic gives them."""
        from ionstream.processing import trace_names

        return trace_names(self.xic)

    def resolved(self) -> dict[str, Any]:
        """The settings as hashed and recorded: the model resolved to its file's SHA-256."""
        doc: dict[str, Any] = {"output_format": OUTPUT_FORMAT, "dsp": self.dsp_params,
                               "xic": [list(w) for w in self.xic], "backend": self.backend}
        if self.backend != "none":
            from inference.bundle import load_bundle

            bundle = load_bundle(self.model or None, check_graphs=False)
            bundle.onnx_for(self.precision)  # BundleError when the bundle has no such graph
            doc["model"] = {"name": bundle.name, "version": bundle.version, "path": str(bundle.path),
                            "precision": self.precision, "sha256": bundle.sha256[self.precision],
                            "labels": list(bundle.labels)}
            doc["max_batch"] = self.max_batch
        return doc

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["xic"] = [list(w) for w in self.xic]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        d = dict(d)
        d["xic"] = tuple(tuple(w) for w in d.get("xic", ()))
        return cls(**d)


def settings_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 (hex) of the resolved settings (canonical JSON; the model path is not part of it)."""
    doc = json.loads(json.dumps(resolved))
    doc.get("model", {}).pop("path", None)  # the same model file elsewhere gives the same results
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def capture_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Size and SHA-256 of the first and last ID_BYTES of a file: cheap, and it survives a copy.

    A capture is append-only, so a file that grew or was rewritten changes its size or its
    ends. OSError if the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256(f.read(ID_BYTES))
        if size > ID_BYTES:
            f.seek(max(ID_BYTES, size - ID_BYTES))
            h.update(f.read(ID_BYTES))
    return {"size": size, "ends_sha256": h.hexdigest()}


def capture_key(settings_sha: str, identity: dict[str, Any]) -> str:
    """What a finished capture's ``done.json`` must hold for a rerun to skip it."""
    doc = json.dumps({"settings": settings_sha, "capture": identity}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def find_captures(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the ``*.isc`` files under each directory given (sorted, recursive).

    A path that does not exist is kept: it is reported as failed, like any unreadable capture.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        found = sorted(q for q in p.rglob("*") if q.suffix in CAPTURE_SUFFIXES and q.is_file()) if p.is_dir() else [p]
        for q in found:
            r = q.resolve()
            if r not in seen:
                seen.add(r)
                out.append(q)
    return out


def output_names(captures: list[Path]) -> list[str]:
    """Directory name per capture: its stem, or stem-<8 hex of its absolute path> where stems collide."""
    stems = [c.stem for c in captures]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha256(str(c.resolve()).encode()).hexdigest()[:8]}"
            for s, c in zip(stems, captures)]
