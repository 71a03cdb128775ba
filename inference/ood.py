"""Inputs the model was not made for: m/z coverage and an out-of-distribution score.

A class message is only worth its label when the spectrum looks like what the model learnt.
Two measures, both cheap per scan (a few microseconds of NumPy):

``coverage``  the fraction (0..1) of the model's feature window ``[mz_min, mz_max)`` (m/z) that
              the spectrum's m/z range covers. A narrow-window scan (say m/z 400..430 against a
              90..2110 window: 1.5 %) leaves most feature bins empty, and the network answers
              with confidence about a picture it never saw.
``ood_score`` distance of the feature vector from the training features, in three parts
              (:class:`OodStats`): the norm of its part outside the principal subspace of the
              training features (``k`` components); its distance from their mean inside that
              subspace in units of the training spread; the Mahalanobis distance of four summary
              figures (:func:`profile`). Each is divided by its 99.5th percentile over the
              training spectra and the score is the largest: 1.0 is the edge of the training
              data. (Feature vectors are binned by m/z, so another instrument's sampling or
              resolving power alone does not move the score: that is the features' design.)

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
from inference.bundle import BundleError

UNKNOWN = "unknown"
DEFAULT_MIN_COVERAGE = 0.5
"""Coverage (fraction of the feature window) below which a label is ``unknown``."""
DEFAULT_MAX_SCORE = 1.5
"""ood_score above which a label is ``unknown`` (1.0 = the training data's 99.5th percentile)."""
REFERENCE_PERCENTILE = 99.5


class OodError(BundleError):
    """A bundle's OOD statistics that cannot be used (names the file and the problem); a
    BundleError, so whoever loads bundles reports it the same way."""


def coverage(mz_first: float, mz_last: float, spec: FeatureSpec) -> float:
    """Fraction (0..1) of ``spec``'s window ``[mz_min, mz_max)`` inside ``[mz_first, mz_last]`` (m/z)."""
    lo, hi = max(mz_first, spec.mz_min), min(mz_last, spec.mz_max)
    return max(0.0, hi - lo) / (spec.mz_max - spec.mz_min)


PROFILE_SIZE = 4


def profile(X: np.ndarray) -> np.ndarray:
    """Four summary figures of each feature vector (n, bins) -> (n, 4): log of its sum, the fraction of
    bins above 0.05 (of the base peak's 1), and the centre and spread (fractions of the window) of its
    intensity along m/z. They catch what the subspace distances can miss: a nearly empty vector,
    intensity crowded into one end of the window, a flat one."""
    X = np.atleast_2d(np.asarray(X, np.float64))
    total = X.sum(axis=1)
    pos = (np.arange(X.shape[1]) + 0.5) / X.shape[1]
    w = X / np.maximum(total, 1e-12)[:, None]
    centre = w @ pos
    spread = np.sqrt(np.maximum(w @ (pos * pos) - centre * centre, 0.0))
    return np.stack([np.log(total + 1e-3), (X > 0.05).mean(axis=1), centre, spread], axis=1)


@dataclass(frozen=True)
class OodStats:
    """Principal subspace of training features: ``mean`` (bins,), ``components`` (k, bins)
    orthonormal rows, ``scale`` (k,) the training spread along each (feature units), and the
    REFERENCE_PERCENTILE over the training features of the two distances (:meth:`distances`):
    ``reference`` (residual) and ``reference_inside`` (within the subspace)."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    reference: float
    reference_inside: float
    profile_mean: np.ndarray       # (4,) mean of :func:`profile` over the training features
    profile_icov: np.ndarray       # (4, 4) inverse covariance (ridge-regularised)
    reference_profile: float

    @classmethod
    def fit(cls, X: np.ndarray, k: int = 32, *, max_rows: int = 4000, seed: int = 0) -> "OodStats":
        """Fit on training features ``X`` (n, bins); at most ``max_rows`` rows (a fixed-seed sample) go
        into the SVD; the reference percentiles are taken over all rows."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or len(X) < 2:
            raise ValueError(f"need at least 2 feature vectors to fit OOD statistics, got shape {X.shape}")
        rng = np.random.default_rng(seed)
        sample = X if len(X) <= max_rows else X[np.sort(rng.choice(len(X), max_rows, replace=False))]
        mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        k = max(1, min(k, len(sample) - 1, X.shape[1]))
        _, sv, vt = np.linalg.svd((sample - mean).astype(np.float64), full_matrices=False)
        scale = np.maximum(sv[:k] / np.sqrt(len(sample) - 1), 1e-6).astype(np.float32)
        P = profile(X)
        p_mean = P.mean(axis=0)
        cov = np.cov(P, rowvar=False) + 1e-6 * np.eye(P.shape[1])
        icov = np.linalg.inv(cov + 1e-3 * np.diag(np.diag(cov)))
        stats = cls(mean, vt[:k].astype(np.float32), scale, 1.0, 1.0, p_mean, icov, 1.0)
        refs = [max(float(np.percentile(d, REFERENCE_PERCENTILE)), 1e-6) for d in stats.distances(X)]
        return cls(mean, stats.components, scale, refs[0], refs[1], p_mean, icov, refs[2])

    def distances(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row of X (n, bins) or (bins,): the norm of its part outside the subspace (feature units),
        its distance from the mean inside it in units of the training spread (RMS over components),
        and the Mahalanobis distance of its :func:`profile` from the training profiles."""
        X = np.atleast_2d(np.asarray(X, np.float32))
        r = X - self.mean
        proj = r @ self.components.T
        resid = np.sqrt(np.maximum(np.einsum("ij,ij->i", r, r) - np.einsum("ij,ij->i", proj, proj), 0.0))
        inside = np.sqrt(np.mean((proj / self.scale) ** 2, axis=1))
        d = profile(X) - self.profile_mean
        prof = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.profile_icov, d), 0.0))
        return resid, inside, prof

    def score(self, X: np.ndarray) -> np.ndarray:
        """ood_score of each row: the largest of the three distances, each over its training reference
        (1.0 = the training data's REFERENCE_PERCENTILE)."""
        resid, inside, prof = self.distances(X)
        return np.maximum.reduce([resid / self.reference, inside / self.reference_inside,
                                  prof / self.reference_profile])

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # np.savez on a file object: no '.npz' appended
            np.savez(f, mean=self.mean, components=self.components, scale=self.scale,
                     reference=np.float64(self.reference), reference_inside=np.float64(self.reference_inside),
                     profile_mean=self.profile_mean, profile_icov=self.profile_icov,
                     reference_profile=np.float64(self.reference_profile))

    @classmethod
    def load(cls, path: str | Path, bins: int) -> "OodStats":
        try:
            with np.load(path, allow_pickle=False) as d:
                mean, comps, scale = d["mean"], d["components"], d["scale"]
                ref, ref_in = float(d["reference"]), float(d["reference_inside"])
                p_mean, p_icov, ref_p = d["profile_mean"], d["profile_icov"], float(d["reference_profile"])
        except (OSError, KeyError, ValueError) as exc:
            raise OodError(f"{path}: not readable OOD statistics ({exc})") from None
        if (mean.shape != (bins,) or comps.ndim != 2 or comps.shape[1] != bins or scale.shape != (comps.shape[0],)
                or p_mean.shape != (PROFILE_SIZE,) or p_icov.shape != (PROFILE_SIZE, PROFILE_SIZE)
                or not ref > 0 or not ref_in > 0 or not ref_p > 0):
            raise OodError(f"{path}: OOD statistics for {mean.shape} features with components {comps.shape} "
                           f"do not fit the model's {bins} bins")
        return cls(mean.astype(np.float32), comps.astype(np.float32), scale.astype(np.float32), ref, ref_in,
                   p_mean.astype(np.float64), p_icov.astype(np.float64), ref_p)


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
