"""Labelled simulated runs: captures whose every scan belongs to one class.

Stand-ins for a lab's recorded runs in tests, docs and figures. Each scan is an independent
:func:`instrument.spectrum_model.random_spectrum` of the run's class (a dominant compound of the
class with nuisance variation) on the given instrument model, encoded as a TOF SCAN frame and
written with :class:`instrument.capture.CaptureWriter`, exactly as ``ionstream record`` stores a
device's frames. A run also has its own instrument drift: its frames carry a calibration off by
``miscalibration_ppm`` (the pipeline's m/z axis is that far from the truth) and its pedestal
and baseline drift are the run's own.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from instrument.frames import Calibration, encode_scan
from instrument.spectrum_model import InstrumentModel, default_calibration, random_spectrum


def lab_instrument(n_samples: int = 16384, mz_min: float = 100.0, mz_max: float = 2050.0,
                   resolving_power: float = 3000.0) -> InstrumentModel:
    """A non-default instrument model: another sampling, m/z range and resolving power than the
    simulator's default (65536 samples, m/z 95..2100, R = 5500 at m/z 1000)."""
    return InstrumentModel(n_samples=n_samples, calibration=default_calibration(n_samples, mz_min, mz_max),
                           resolving_power=resolving_power)


def _miscalibrated(cal: Calibration, ppm: float) -> Calibration:
    # sqrt(m/z) is the polynomial; scaling all its coefficients by f scales m/z by f**2.
    f = (1.0 + ppm * 1e-6) ** 0.5
    return dataclasses.replace(cal, c0=cal.c0 * f, c1=cal.c1 * f, c2=cal.c2 * f)


def write_class_run(path: str | Path, class_index: int, *, n_scans: int, seed: int,
                    model: InstrumentModel | None = None, miscalibration_ppm: float = 0.0,
                    scan_rate_hz: float = 10.0, first_scan: int = 1, compress: bool = False) -> Path:
    """Write a capture of ``n_scans`` scans of simulator class ``class_index`` (0..4, see
    instrument.spectrum_model.CLASS_LABELS); scans numbered from ``first_scan``, ``1/scan_rate_hz``
    s apart. Deterministic for ``seed``. Returns ``path``."""
    from instrument.capture import CaptureWriter

    model = model or lab_instrument()
    rng = np.random.default_rng([seed, class_index, 0x1AB])
    # The run's own drift: its baseline and pedestal differ from other runs'.
    model = dataclasses.replace(model, pedestal=model.pedestal + float(rng.uniform(-40, 40)),
                                drift_amplitude=model.drift_amplitude * float(rng.uniform(0.5, 2.0)))
    cal = _miscalibrated(model.calibration, miscalibration_ppm)
    period_ns = int(round(1e9 / scan_rate_hz))
    desc = {"source": {"url": "sim://labelled", "class_index": class_index, "seed": seed,
                       "miscalibration_ppm": miscalibration_ppm, "n_samples": model.n_samples},
            "mode": "record"}
    with CaptureWriter(path, desc, fsync_interval_s=None, compress=compress) as w:
        for k in range(n_scans):
            intensity, _truth = random_spectrum(class_index, rng, model=model)
            t = k * period_ns
            w.append(encode_scan(intensity, sequence=k, scan_number=first_scan + k, device_time_ns=t,
                                 calibration=cal), host_time_ns=t)
    return Path(path)
