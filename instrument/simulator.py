"""The simulated instrument: device frames of a looping chromatographic run, with ground truth.

    sim = Simulator(SimConfig(seed=7))
    for frame, truth in sim:          # frame: bytes of one device frame (docs/protocol.md)
        ...                           # truth: ScanTruth for SCAN frames, None for STATUS frames

Spectra come from :class:`instrument.spectrum_model.ScanGenerator`. Everything on the wire
follows from the config: the same seed and settings give byte-identical frames. Time is the
simulated instrument's clock: scan ``k`` is taken at ``k / clock_rate_hz`` s after the run start
and carries that time (ns) as its device timestamp, whatever the wall clock does. Pacing output
to the wall clock is the consumer's business; :class:`Pacer` does it.

Imaging mode (``SimConfig(imaging="64x64")``): the instrument rasters a synthetic sample
(:mod:`instrument.imaging_sample`) row by row, one scan per pixel, each frame carrying its pixel
position (:mod:`instrument.imaging`); ``Simulator.sample`` holds the ground truth.
"""
from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from instrument import frames
from instrument.frames import HEADER_CRC_STRUCT, HEADER_SIZE, TRAILER_SIZE, FrameType, Polarity
from instrument.spectrum_model import InstrumentModel, ScanGenerator, ScanTruth, default_model

DTYPES = ("uint16", "int16", "float32")
_POLARITY = {"positive": Polarity.POSITIVE, "negative": Polarity.NEGATIVE, "unknown": Polarity.UNKNOWN}


@dataclass
class SimConfig:
    """Settings of the simulated instrument (units in the names: Hz, s, ns).

    scan_rate_hz: scans per second to emit; 0 = as fast as possible (paced by :class:`Pacer`).
    clock_rate_hz: scans per second of the *simulated* clock (scan times, device timestamps and
        elution); default ``scan_rate_hz``, or 20 when that is 0.
    n_samples: samples per scan.  seed: run seed (compounds, elution, noise).
    dtype: sample dtype on the wire: uint16, int16 or float32.
    cycle_s: length of the chromatographic run, s; it loops.
    status_interval_s: a STATUS frame every this many s of device time (0 = none).
    ms_level, polarity: carried in every scan header ("positive" | "negative" | "unknown").
    n_compounds: compounds in the run.  start_time_ns: device clock at scan 0.
    imaging: "" (an LC-MS run) or "WxH": imaging mode, a synthetic sample (tissue regions and
        cells, instrument/imaging_sample.py) rastered row by row, W x H pixels of
        ``pixel_size_um`` um, one scan per pixel with its position in the frame header (the
        raster repeats after W x H scans); n_compounds and cycle_s are then not used.
    """

    scan_rate_hz: float = 20.0
    n_samples: int = 65536
    seed: int = 1
    dtype: str = "uint16"
    cycle_s: float = 60.0
    status_interval_s: float = 1.0
    ms_level: int = 1
    polarity: str = "positive"
    n_compounds: int = 32
    clock_rate_hz: float | None = None
    start_time_ns: int = 0
    imaging: str = ""
    pixel_size_um: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.imaging:
            try:
                self.raster_size
            except ValueError as exc:
                problems.append(str(exc))
        if self.pixel_size_um <= 0:
            problems.append(f"pixel_size_um must be > 0, got {self.pixel_size_um!r}")
        if self.scan_rate_hz < 0:
            problems.append(f"scan_rate_hz must be >= 0, got {self.scan_rate_hz!r}")
        if self.clock_rate_hz is not None and self.clock_rate_hz <= 0:
            problems.append(f"clock_rate_hz must be > 0, got {self.clock_rate_hz!r}")
        if self.n_samples < 16:
            problems.append(f"n_samples must be >= 16, got {self.n_samples!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.cycle_s <= 0:
            problems.append(f"cycle_s must be > 0, got {self.cycle_s!r}")
        if self.status_interval_s < 0:
            problems.append(f"status_interval_s must be >= 0, got {self.status_interval_s!r}")
        if self.polarity not in _POLARITY:
            problems.append(f"polarity must be one of {', '.join(_POLARITY)}, got {self.polarity!r}")
        if not 0 < self.ms_level < 256:
            problems.append(f"ms_level must be 1..255, got {self.ms_level!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def sim_rate_hz(self) -> float:
        """Scan rate of the simulated clock."""
        if self.clock_rate_hz is not None:
            return self.clock_rate_hz
        return self.scan_rate_hz if self.scan_rate_hz > 0 else 20.0

    @property
    def raster_size(self) -> tuple[int, int] | None:
        """(width, height) in pixels of imaging mode, or None. ValueError for a malformed ``imaging``."""
        if not self.imaging:
            return None
        w, sep, h = self.imaging.lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) >= 16 and int(h) >= 16):
            raise ValueError(f"imaging must be WIDTHxHEIGHT in pixels (each >= 16), e.g. 64x64; got {self.imaging!r}")
        return int(w), int(h)

    def as_dict(self) -> dict:
        return asdict(self)


class Simulator:
    """Iterator of ``(frame_bytes, truth)``: SCAN frames with their :class:`ScanTruth`, and a
    STATUS frame (truth None) every ``status_interval_s`` of device time.

    Sequence numbers count every frame (SCAN and STATUS) from 0; scan numbers count scans from 0.
    ``next_into(buffer)`` writes the next frame into a caller's buffer instead (no allocation).
    """

    def __init__(self, config: SimConfig | None = None, model: InstrumentModel | None = None):
        self.config = config = config or SimConfig()
        if model is None and config.imaging:
            from instrument.imaging_sample import imaging_model

            model = imaging_model(config.n_samples)
        self.model = model or default_model(config.n_samples)
        if self.model.n_samples != config.n_samples:
            raise ValueError(f"model has {self.model.n_samples} samples, config {config.n_samples}")
        self.sample = None
        self.raster = None
        if config.imaging:
            from instrument.imaging import Raster
            from instrument.imaging_sample import SampleConfig, make_sample

            width, height = config.raster_size
            self.sample = make_sample(SampleConfig(width=width, height=height, pixel_size_um=config.pixel_size_um,
                                                   seed=config.seed), model=self.model, dtype=np.dtype(config.dtype))
            self.generator = self.sample.generator
            self.raster = Raster(width, height, config.pixel_size_um, config.pixel_size_um)
        else:
            self.generator = ScanGenerator(self.model, seed=config.seed, cycle_s=config.cycle_s,
                                           n_compounds=config.n_compounds, dtype=np.dtype(config.dtype))
        self.calibration = self.model.calibration
        self.sample_type = frames.sample_type_of(np.dtype(config.dtype))
        self.polarity = _POLARITY[config.polarity]
        self.header_size = HEADER_SIZE + len(self._header_extension(0))
        self.scan_frame_size = self.header_size + config.n_samples * np.dtype(config.dtype).itemsize + TRAILER_SIZE
        self._period_ns = 1e9 / config.sim_rate_hz
        self._samples = np.empty(config.n_samples, np.dtype(config.dtype))
        self.sequence = 0      # of the next frame
        self.scan_number = 0   # of the next scan
        self._next_status_ns = 0.0 if config.status_interval_s > 0 else math.inf

    # --- clock -----------------------------------------------------------------------------
    def scan_time_s(self, scan_number: int) -> float:
        """Run time (s since scan 0) of scan ``scan_number`` on the simulated clock."""
        return scan_number / self.config.sim_rate_hz

    def device_time_ns(self, scan_number: int) -> int:
        """Device clock (ns) of scan ``scan_number``."""
        return self.config.start_time_ns + int(round(scan_number * self._period_ns))

    def pixel_of(self, scan_number: int) -> tuple[int, int] | None:
        """(x, y) of scan ``scan_number`` in imaging mode (row by row, left to right), else None."""
        if self.raster is None:
            return None
        i = scan_number % self.raster.pixels
        return i % self.raster.width, i // self.raster.width

    def _header_extension(self, scan_number: int) -> bytes:
        if self.raster is None:
            return b""
        from instrument.imaging import PixelPosition, encode_pixel

        x, y = self.pixel_of(scan_number)
        return encode_pixel(PixelPosition(x, y, self.raster))

    def _render(self, k: int, out: np.ndarray) -> tuple[np.ndarray, ScanTruth]:
        if self.sample is None:
            return self.generator.generate(k, self.scan_time_s(k), out=out)
        x, y = self.pixel_of(k)
        w = self.sample.heights(x, y)
        w *= np.float32(self.generator.spray(k))
        return self.generator.render(k, self.scan_time_s(k), w, out)

    def _status_due(self) -> bool:
        return self.scan_number * self._period_ns >= self._next_status_ns

    # --- frames ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[bytes, ScanTruth | None]]:
        return self

    def __next__(self) -> tuple[bytes, ScanTruth | None]:
        if self._status_due():
            return self._status_frame(), None
        k = self.scan_number
        samples, truth = self._render(k, self._samples)
        frame = frames.encode_scan(
            samples, sequence=self.sequence, scan_number=k, device_time_ns=self.device_time_ns(k),
            ms_level=self.config.ms_level, polarity=self.polarity, calibration=self.calibration,
            header_extension=self._header_extension(k))
        self.sequence += 1
        self.scan_number += 1
        return frame, truth

    def next_into(self, buffer) -> tuple[int, ScanTruth | None]:
        """Write the next frame into ``buffer`` (a writable bytes-like object of at least
        ``scan_frame_size`` bytes); returns ``(n_bytes, truth)``. Same bytes as ``next()``."""
        if self._status_due():
            frame = self._status_frame()
            memoryview(buffer)[: len(frame)] = frame
            return len(frame), None
        view = memoryview(buffer).cast("B")
        if len(view) < self.scan_frame_size:
            raise ValueError(f"buffer has {len(view)} bytes, a scan frame needs {self.scan_frame_size}")
        k = self.scan_number
        hsize = self.header_size
        n_payload = self.scan_frame_size - hsize - TRAILER_SIZE
        payload = view[hsize: hsize + n_payload]
        out = np.frombuffer(payload, dtype=self._samples.dtype.newbyteorder("<"), count=self.config.n_samples)
        _, truth = self._render(k, out)
        view[:hsize] = frames.pack_header(
            frame_type=FrameType.SCAN, sequence=self.sequence, scan_number=k,
            device_time_ns=self.device_time_ns(k), ms_level=self.config.ms_level, polarity=self.polarity,
            sample_type=self.sample_type, n_samples=self.config.n_samples, payload_size=n_payload,
            calibration=self.calibration, extension=self._header_extension(k))
        HEADER_CRC_STRUCT.pack_into(view, hsize + n_payload, zlib.crc32(payload))
        self.sequence += 1
        self.scan_number += 1
        return self.scan_frame_size, truth

    def _status_frame(self) -> bytes:
        t_ns = self.scan_number * self._period_ns
        self._next_status_ns = t_ns + self.config.status_interval_s * 1e9
        # A slow, deterministic wobble so that the values look measured.
        t_s = t_ns / 1e9
        frame = frames.encode_status(
            sequence=self.sequence, device_time_ns=self.config.start_time_ns + int(round(t_ns)),
            state=frames.InstrumentState.ACQUIRING, temperature_c=24.5 + 0.3 * math.sin(t_s / 97.0),
            pressure_mbar=2.1e-7 * (1.0 + 0.05 * math.sin(t_s / 41.0)), uptime_ms=int(t_ns // 1e6),
            scan_number=max(self.scan_number - 1, 0))
        self.sequence += 1
        return frame


class Pacer:
    """Paces a loop to ``rate_hz`` on the wall clock (0 = no pacing).

    ``wait()`` sleeps until the next tick is due. Ticks are on a fixed schedule (no drift from
    sleep jitter); when the caller falls more than ``max_lag_s`` behind, the schedule restarts
    from now instead of bursting to catch up, and ``slips`` counts it.
    """

    def __init__(self, rate_hz: float, max_lag_s: float = 1.0, clock=time.monotonic, sleep=time.sleep):
        self.rate_hz = float(rate_hz)
        self.max_lag_s = max_lag_s
        self._clock, self._sleep = clock, sleep
        self.ticks = 0
        self.slips = 0
        self._t0: float | None = None

    def delay(self) -> float:
        """Seconds until the next tick is due (<= 0: due now); restarts the schedule after a stall.

        For callers that must not block for long (a source's ``readinto`` returns within
        ~0.1 s): sleep a part of the delay, ask again, and call :meth:`tick` once it is <= 0.
        """
        if self.rate_hz <= 0:
            return 0.0
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self.ticks / self.rate_hz
        if now - due > self.max_lag_s:
            self.slips += 1
            self._t0, self.ticks, due = now, 0, now
        return due - now

    def tick(self) -> None:
        """Count one tick as done (the next one is due 1/rate_hz s later on the schedule)."""
        self.ticks += 1

    def wait(self, stop=None) -> None:
        """Sleep until the next tick (``stop``: an optional threading.Event that cuts the wait short)."""
        if self.rate_hz <= 0:
            return
        delay = self.delay()
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                self._sleep(delay)
        self.tick()
