"""``sim://?rate=20&samples=65536&seed=1`` — the built-in simulated instrument, in-process.

Options: rate (scans/s, 0 = as fast as possible; default 20), samples (per scan, default
65536), seed (default 1), dtype (uint16 | float32), count (stop after N scans; default
endless), repeat (default 0). Imaging mode (docs/imaging.md): imaging=WxH (raster a synthetic
sample, one scan per pixel; count defaults to W x H), pixel (pixel size, um; default 10),
truth=FILE (write the sample's ground truth, a .npz, when the source opens). It emits exactly the bytes `ionstream simulate` would, so
everything downstream is exercised as with a real device.

``repeat=K`` renders the first K scans, then sends their spectra again in turn with fresh
sequence numbers, scan numbers and device times (and no more status frames). Rendering a
64k-point spectrum costs more CPU than processing it; a real instrument does that work on its
own hardware, so benchmarks of the pipeline at full speed use ``repeat`` to leave the host's
cores to the pipeline.

Pacing: scan frames follow a fixed deadline schedule (scan k is due k/rate s after the first),
kept by the simulator's :class:`~instrument.simulator.Pacer`, the same one `ionstream simulate`
uses, so ``rate=20`` gives 20.0 scans/s whatever the sleep jitter. STATUS frames are sent when
due, unpaced (they are not scans). After a stall of more than 1 s the schedule restarts from
now instead of bursting to catch up (``Pacer.slips`` counts it).
"""
from __future__ import annotations

import time
from typing import Any

from instrument.sources.base import EndOfSource, Source, SourceConfigError, SourceURL

OPTIONS = {"rate", "samples", "seed", "dtype", "count", "repeat", "imaging", "pixel", "truth"}


def _raster_pixels(url: SourceURL, imaging: str) -> int:
    from instrument.simulator import SimConfig

    try:
        width, height = SimConfig(imaging=imaging).raster_size
    except ValueError as exc:
        raise SourceConfigError(f"source {url.text!r}: {exc}") from None
    return width * height


def create(url: SourceURL) -> "SimSource":
    url.check_options(OPTIONS)
    return SimSource(url)


class SimSource(Source):
    def __init__(self, url: SourceURL):
        super().__init__(url)
        self.rate_hz = url.option("rate", 20.0, float)
        self.n_samples = url.option("samples", 65536, int)
        self.seed = url.option("seed", 1, int)
        self.dtype = url.option("dtype", "uint16", str)
        self.count = url.option("count", 0, int)
        self.repeat = url.option("repeat", 0, int)
        self.imaging = url.option("imaging", "", str)
        self.pixel_size_um = url.option("pixel", 10.0, float)
        self.truth_path = url.option("truth", "", str)
        self._check(url)
        if self.imaging and not self.count:  # one pass over the raster
            self.count = _raster_pixels(url, self.imaging)
        self._stored: list[bytearray] = []   # the first `repeat` scan frames
        self.finite = self.count > 0
        self._frames = None
        self._simulator = None
        self._pending = memoryview(b"")
        self._next: tuple[bytes | bytearray, bool] | None = None  # rendered, waiting for its deadline
        self._pacer = None
        self._emitted = 0   # frames (the next frame's sequence number)
        self._scans = 0     # scan frames, for count

    def _check(self, url: SourceURL) -> None:
        """The values SimConfig would refuse at open(), refused here so `config check` finds them."""
        from instrument.simulator import DTYPES

        problems = []
        if not self.rate_hz >= 0:
            problems.append(f"rate={url.options['rate']} must be >= 0 (scans/s; 0 = as fast as possible)")
        if self.n_samples < 16:
            problems.append(f"samples={self.n_samples} must be >= 16")
        if self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype} must be one of {', '.join(DTYPES)}")
        if self.count < 0 or self.repeat < 0:
            problems.append("count and repeat must be >= 0")
        if problems:
            raise SourceConfigError(f"source {url.text!r}: " + "; ".join(problems))

    def open(self) -> None:
        from instrument.simulator import Pacer, SimConfig, Simulator

        if self._frames is None:  # a re-open continues the same run
            config = SimConfig(scan_rate_hz=self.rate_hz, n_samples=self.n_samples, seed=self.seed,
                               dtype=self.dtype, imaging=self.imaging, pixel_size_um=self.pixel_size_um)
            self._simulator = Simulator(config)
            if self.truth_path and self._simulator.sample is not None:
                self._simulator.sample.save_truth(self.truth_path)
            self._frames = iter(self._simulator)
            self._pacer = Pacer(self.rate_hz, clock=time.monotonic, sleep=time.sleep)

    def readinto(self, buf: memoryview) -> int:
        if not self._pending:
            if self._next is None:
                if self.count and self._scans >= self.count:
                    raise EndOfSource()
                self._next = self._next_frame()
            frame, is_scan = self._next
            if is_scan:
                delay = self._pacer.delay()
                if delay > 0:  # wait in slices of <= 0.1 s: readinto must return that often
                    time.sleep(min(delay, 0.1))
                    if delay > 0.1:
                        return 0
                self._pacer.tick()
            self._next = None
            self._pending = memoryview(frame)
            self._emitted += 1
            self._scans += is_scan
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _next_frame(self) -> tuple[bytes | bytearray, bool]:
        if self.repeat and len(self._stored) >= self.repeat:
            from instrument.frames import restamp

            frame = self._stored[self._scans % self.repeat]
            restamp(frame, sequence=self._emitted, scan_number=self._scans,
                    device_time_ns=self._simulator.device_time_ns(self._scans))
            return frame, True
        frame, truth = next(self._frames)
        if self.repeat and truth is not None:
            self._stored.append(bytearray(frame))
        return frame, truth is not None

    def close(self) -> None:
        pass  # nothing to release; keeping the generator lets a re-open continue the run

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "rate_hz": self.rate_hz, "samples": self.n_samples, "seed": self.seed,
             "dtype": self.dtype}
        if self.imaging:
            d.update(imaging=self.imaging, pixel_size_um=self.pixel_size_um)
        return d
