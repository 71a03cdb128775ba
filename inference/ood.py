"""Inputs the model was not made for: m/z coverage and an out-of-distribution score.

A class message is only worth its label when the spectrum looks like what the model learnt.
Two measures, both cheap per scan (a few microseconds of NumPy):

``coverage``  the fraction (0..1) of the model's feature window ``[mz_min, mz_max)`` (m/z) that
              the spectrum's m/z range covers. A narrow-window scan (say m/z 400..430 against a
              90..2110 window: 1.5 %) leaves most feature bins empty, and the network answers
              with confidence about a picture it never saw.
``ood_score`` distance of the feature vector from the training features: the norm of its part
              outside the principal subspace of the training features (``k`` components,
              :class:`OodStats`), divided by the same norm's 99.5th percentile over the training
              spectra. 1.0 is the edge of the training data; a spectrum of another instrument,
              sample type or m/z window lands well above.

:class:`OodGate` turns them into a verdict: below ``min_coverage`` or above ``max_score`` the
label becomes ``unknown`` with the reason. The daemon, ``ionstream evaluate`` and reprocessing
all use the gate, so they agree. A bundle without OOD statistics (the shipped default) is judged
on coverage alone (``ood_score`` is None).

Bundle entry (model.json)::

    "ood": {"path": "ood.npz", "sha256": "...", "method": "pca-residual", "components": 32,
            "reference_percentile": 99.5, "max_score": 1.5, "min_coverage": 0.5}
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsp.features import FeatureSpec

UNKNOWN = "unknown"
DEFAULT_MIN_COVERAGE = 0.5
"""Coverage (fraction of the feature window) below which a label is ``unknown``."""
DEFAULT_MAX_SCORE = 1.5
"""ood_score above which a label is ``unknown`` (1.0 = the training data's 99.5th percentile)."""
REFERENCE_PERCENTILE = 99.5


class OodError(ValueError):
    """OOD statistics that cannot be used (names the file and the problem)."""


def coverage(mz_first: float, mz_last: float, spec: FeatureSpec) -> float:
    """Fraction (0..1) of ``spec``'s window ``[mz_min, mz_max)`` inside ``[mz_first, mz_last]`` (m/z)."""
    lo, hi = max(mz_first, spec.mz_min), min(mz_last, spec.mz_max)
    return max(0.0, hi - lo) / (spec.mz_max - spec.mz_min)


@dataclass(frozen=True)
class OodStats:
    """Principal subspace of training features: ``mean`` (bins,), ``components`` (k, bins)
    orthonormal rows, and ``reference``: the residual norm's REFERENCE_PERCENTILE on the
    training features (feature units)."""

    mean: np.ndarray
    components: np.ndarray
    reference: float

    @classmethod
    def fit(cls, X: np.ndarray, k: int = 32, *, max_rows: int = 4000, seed: int = 0) -> "OodStats":
        """Fit on training features ``X`` (n, bins); at most ``max_rows`` rows (a fixed-seed sample) go
        into the SVD; the reference percentile is taken over all rows."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise OodError(f"need at least 2 feature vectors to fit OOD statistics, got shape {X.shape}")
        rng = np.random.default_rng(seed)
        sample = X if len(X) <= max_rows else X[np.sort(rng.choice(len(X), max_rows, replace=False))]
        mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        k = max(1, min(k, len(sample) - 1, X.shape[1]))
        _, _, vt = np.linalg.svd((sample - mean).astype(np.float64), full_matrices=False)
        stats = cls(mean, vt[:k].astype(np.float32), 1.0)
        resid = stats.residual(X)
        ref = float(np.percentile(resid, REFERENCE_PERCENTILE))
        return cls(mean, stats.components, max(ref, 1e-6))

    def residual(self, X: np.ndarray) -> np.ndarray:
        """Norm of each row's part outside the subspace (feature units); X (n, bins) or (bins,)."""
        X = np.atleast_2d(np.asarray(X, np.float32))
        r = X - self.mean
        proj = r @ self.components.T
        sq = np.einsum("ij,ij->i", r, r) - np.einsum("ij,ij->i", proj, proj)
        return np.sqrt(np.maximum(sq, 0.0))

    def score(self, X: np.ndarray) -> np.ndarray:
        """ood_score of each row (1.0 = the training data's reference percentile)."""
        return self.residual(X) / self.reference

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # np.savez on a file object: no '.npz' appended
            np.savez(f, mean=self.mean, components=self.components, reference=np.float64(self.reference))

    @classmethod
    def load(cls, path: str | Path, bins: int) -> "OodStats":
        try:
            with np.load(path, allow_pickle=False) as d:
                mean, comps, ref = d["mean"], d["components"], float(d["reference"])
        except (OSError, KeyError, ValueError) as exc:
            raise OodError(f"{path}: not readable OOD statistics ({exc})") from None
        if mean.shape != (bins,) or comps.ndim != 2 or comps.shape[1] != bins or not ref > 0:
            raise OodError(f"{path}: OOD statistics for {mean.shape} features with components {comps.shape} "
                           f"do not fit the model's {bins} bins")
        return cls(mean.astype(np.float32), comps.astype(np.float32), ref)


@dataclass(frozen=True, slots=True)
class OodVerdict:
    """The gate's answer for one spectrum. ``label`` is the model's label or ``unknown``;
    ``reason`` says why it is unknown (None when it is not)."""

    label: str
    coverage: float
    ood_score: float | None
    reason: str | None

    @property
    def unknown(self) -> bool:
        return self.reason is not None

    def as_fields(self) -> dict[str, Any]:
        """The class message's extra header fields (docs/wire.md)."""
        return {"coverage": round(self.coverage, 4),
                "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
                "unknown_reason": self.reason}


class OodGate:
    """Judges each classified spectrum; one per bundle, stateless after construction (thread-safe).

    Parameters
    ----------
    spec : the model's feature spec (its window, m/z).
    stats : the bundle's OodStats, or None (coverage only).
    min_coverage : fraction 0..1 of the window below which the label is ``unknown``.
    max_score : ood_score above which the label is ``unknown`` (ignored without stats).
    """

    def __init__(self, spec: FeatureSpec, stats: OodStats | None = None, *,
                 min_coverage: float = DEFAULT_MIN_COVERAGE, max_score: float = DEFAULT_MAX_SCORE):
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"`min_coverage` must be a fraction 0..1 of the model's m/z window, got {min_coverage!r}")
        if not max_score > 0:
            raise ValueError(f"`max_score` must be > 0 (1.0 = edge of the training data), got {max_score!r}")
        self.spec, self.stats = spec, stats
        self.min_coverage, self.max_score = float(min_coverage), float(max_score)

    @classmethod
    def from_bundle(cls, bundle, *, min_coverage: float | None = None, max_score: float | None = None) -> "OodGate":
        """The gate of a loaded ModelBundle: its ``ood`` statistics (checked against their SHA-256)
        and thresholds, unless given here. OodError names the file when the statistics are bad."""
        entry = bundle.meta.get("ood")
        stats = None
        if entry is not None:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise OodError(f"{bundle.json_path}: 'ood' must be an object with a 'path'")
            path = (bundle.path / entry["path"]).resolve()
            if bundle.path not in path.parents or not path.is_file():
                raise OodError(f"{path}: OOD statistics missing (listed in {bundle.json_path.name} as ood.path)")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if entry.get("sha256") not in (None, digest):
                raise OodError(f"{path}: SHA-256 {digest[:16]}... does not match {bundle.json_path.name} ood.sha256")
            stats = OodStats.load(path, bundle.feature_spec.bins)
            min_coverage = entry.get("min_coverage", DEFAULT_MIN_COVERAGE) if min_coverage is None else min_coverage
            max_score = entry.get("max_score", DEFAULT_MAX_SCORE) if max_score is None else max_score
        return cls(bundle.feature_spec, stats,
                   min_coverage=DEFAULT_MIN_COVERAGE if min_coverage is None else min_coverage,
                   max_score=DEFAULT_MAX_SCORE if max_score is None else max_score)

    def judge(self, label: str, features: np.ndarray, mz_first: float, mz_last: float) -> OodVerdict:
        """Verdict for one spectrum: its model ``label``, feature vector (bins,) and m/z range."""
        cov = coverage(mz_first, mz_last, self.spec)
        score = None if self.stats is None else float(self.stats.score(features)[0])
        return self._verdict(label, cov, score)

    def judge_batch(self, labels: list[str], features: np.ndarray, covs: np.ndarray) -> list[OodVerdict]:
        """Verdicts for many spectra at once: ``features`` (n, bins), ``covs`` (n,) coverage fractions."""
        scores = None if self.stats is None else self.stats.score(features)
        return [self._verdict(lab, float(c), None if scores is None else float(scores[i]))
                for i, (lab, c) in enumerate(zip(labels, covs))]

    def _verdict(self, label: str, cov: float, score: float | None) -> OodVerdict:
        reason = None
        if cov < self.min_coverage:
            reason = (f"spectrum covers {100 * cov:.1f} % of the model's m/z window {self.spec.mz_min:g}..{self.spec.mz_max:g} "
                      f"(minimum {100 * self.min_coverage:.0f} %)")
        elif score is not None and score > self.max_score:
            reason = f"unlike the training spectra (ood_score {score:.2f} > {self.max_score:g})"
        return OodVerdict(UNKNOWN if reason else label, cov, score, reason)
