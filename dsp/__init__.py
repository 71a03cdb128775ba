"""Signal processing: calibration, baseline, smoothing, peak picking, centroids, traces, features."""
