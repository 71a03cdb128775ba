"""Baseline and noise of a profile spectrum: robust block statistics, interpolated per sample.

Algorithm (kernel: ``cext.baseline``, shared with the scan kernel):

1. Split the spectrum into blocks of ``block`` samples (default 512; the last block takes the
   remainder). In each block take every ``stride``-th sample (default 4).
2. Median and MAD of those samples; drop the samples more than 3 sigma (1.4826 MAD) from the median
   (peak samples); median and MAD again. The block's baseline is that median, its noise sigma
   1.4826 times that MAD. Peaks therefore only move a block's estimate when they cover much of it.
3. Across blocks, a running median of 5 blocks for both (a block full of peaks is outvoted).
4. Noise has a floor: ``noise_floor``, or where that is 0 the smallest positive block noise (for
   noise-suppressed data such as reduced Orbitrap profiles, whose blocks are mostly exact zeros).
5. Per sample, both are linear between block centres (centres rounded down to 64-sample
   boundaries) and flat beyond the first and last centre.

Units are those of the input (counts). The baseline tracks slow drift and chemical continuum (scale
of several blocks); structure narrower than about 3 blocks is treated as peaks. ``stride`` trades
precision for speed: each block's median uses ``block / stride`` samples (128 by default, a 0.11
sigma standard error before the running median).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cext.baseline import block_statistics, lines

__all__ = ["BaselineEstimate", "estimate_baseline", "DEFAULT_BLOCK", "DEFAULT_STRIDE"]

DEFAULT_BLOCK = 512
DEFAULT_STRIDE = 4


class BaselineEstimate(NamedTuple):
    """Per-sample baseline and noise sigma (float32, counts), and the per-block values behind them."""

    baseline: np.ndarray
    noise: np.ndarray
    centres: np.ndarray         # block centres, samples (float64)
    block_baseline: np.ndarray  # after the running median (float64, counts)
    block_noise: np.ndarray     # after the running median and floor (float64, counts)


def estimate_baseline(x, *, block: int = DEFAULT_BLOCK, stride: int = DEFAULT_STRIDE,
                      noise_floor: float = 0.0) -> BaselineEstimate:
    """Baseline and noise sigma of a 1-D profile spectrum (see the module docstring).

    Parameters
    ----------
    x : array_like, 1-D
        Intensities (counts); computed in float32.
    block : int
        Block length in samples (>= 128).
    stride : int
        Use every ``stride``-th sample of a block (>= 1).
    noise_floor : float
        Lowest noise sigma returned (counts); 0 = the smallest positive block noise.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"x must be 1-D, got {a.ndim} dimensions")
    if noise_floor < 0:
        raise ValueError(f"noise_floor must be >= 0 (counts), got {noise_floor!r}")
    centres, base, sig, _, _ = block_statistics(a, int(block), int(stride), float(noise_floor))
    n = a.size
    return BaselineEstimate(lines(centres, base, n, False), 1.0 / lines(centres, sig, n, True),
                            centres, base, sig)
