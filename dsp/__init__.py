"""Signal processing: calibration, baseline, smoothing, peak picking, centroids, traces, features."""

from dsp.processor import pick_centroids  # noqa: E402,F401  (stable public API: one profile spectrum -> centroids)
