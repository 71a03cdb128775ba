"""Hold-out split by run (a file, or the labels table's ``run`` column), never by scan.

Neighbouring scans of one run are nearly the same spectrum; a split by scan would score the
model on near-copies of its training data. Runs are held out per class: each class with at
least two runs gives ``val_fraction`` of them (at least one), and keeps at least one for training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.training.data import Dataset


@dataclass(frozen=True)
class Split:
    """Boolean masks over the dataset's rows and the run indices on each side; ``warnings`` lists
    classes that could not be held out (a single run)."""

    train: np.ndarray
    val: np.ndarray
    train_runs: tuple[int, ...]
    val_runs: tuple[int, ...]
    warnings: tuple[str, ...]


def split_by_run(ds: Dataset, val_fraction: float = 0.25, seed: int = 0) -> Split:
    """Choose held-out runs (deterministic for ``seed``); see the module docstring."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}")
    n_classes = len(ds.labels)
    present = np.zeros((len(ds.runs), n_classes), bool)
    present[ds.run, ds.y] = True
    runs_per_class = present.sum(axis=0)
    target = np.where(runs_per_class >= 2, np.maximum(1, np.round(val_fraction * runs_per_class)), 0)
    if val_fraction == 0.0:
        target[:] = 0
    target = np.minimum(target, runs_per_class - 1)
    order = np.random.default_rng(seed).permutation(len(ds.runs))
    val_count = np.zeros(n_classes, int)
    train_left = runs_per_class.copy()
    val_runs = []
    for r in order.tolist():
        cls = np.flatnonzero(present[r])
        if cls.size and np.all(val_count[cls] < target[cls]) and np.all(train_left[cls] > 1):
            val_runs.append(r)
            val_count[cls] += 1
            train_left[cls] -= 1
    val_runs.sort()
    val = np.isin(ds.run, val_runs)
    warnings = tuple(f"class {ds.labels[c]!r} has {runs_per_class[c]} run(s): none held out, so the report "
                     f"cannot score it; record at least two runs per class"
                     for c in range(n_classes) if val_count[c] == 0 and val_fraction > 0)
    train_runs = tuple(r for r in range(len(ds.runs)) if r not in val_runs and present[r].any())
    return Split(~val, val, train_runs, tuple(val_runs), warnings)
