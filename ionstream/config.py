"""Daemon configuration: a TOML file validated against the dataclass schema below.

The schema is the documentation: each field's ``doc`` becomes a comment in
``ionstream config --example``, and every error names the key (``dsp.workers``), what
was found and what is expected, before anything starts.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` lists them as "key: message"."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class SourceConfig:
    url: str = _f("sim://", "where frames come from: sim://, serial:///dev/ttyUSB0?baud=921600, "
                  "tcp://HOST:PORT, replay://capture.isc?speed=max, usb://VID:PID")


@dataclass
class RingConfig:
    slots: int = _f(256, "frame slots preallocated in the ring buffer", min=2)
    slot_bytes: int = _f(0, "bytes per slot; 0 = enough for max_samples float32 samples", min=0)
    max_samples: int = _f(65536, "largest scan (samples) the ring must hold", min=1)
    policy: str = _f("auto", "when the ring is full: drop-oldest (acquisition never waits), block "
                     "(acquisition waits for DSP; a live device may overrun), or auto: block for "
                     "finite sources (replays: deterministic), drop-oldest for live devices",
                     choices=("auto", "drop-oldest", "block"))

    def resolved_slot_bytes(self) -> int:
        from instrument.frames import FRAME_OVERHEAD, HEADER_SIZE, MAX_HEADER_SIZE

        # room for a longer, compatible header too (an imaging scan's pixel position: docs/protocol.md)
        return self.slot_bytes or FRAME_OVERHEAD + 4 * self.max_samples + (MAX_HEADER_SIZE - HEADER_SIZE)


@dataclass
class CaptureConfig:
    dir: str = _f("captures", "where `record start NAME` and --record put relative capture paths")
    record: str = _f("", "record every frame to this capture file from the start (empty: don't)")
    fsync_interval_s: float = _f(1.0, "seconds between fsyncs of an open capture (crash-safety window)",
                                 min=0.0)
    compress: bool = _f(False, "zstd-compress capture records")


@dataclass
class DspConfig:
    workers: int = _f(0, "DSP worker threads; 0 = cores - 1 (at least 1)", min=0)
    smoothing: str = _f("savgol", "smoothing along m/z: savgol, gaussian or none",
                        choices=("savgol", "gaussian", "none"))
    min_snr: float = _f(3.0, "peaks below this signal-to-noise are not reported", min=0.0)
    xic: list = _f([], "extracted-ion traces as [[mz_low, mz_high], ...] (m/z)")


@dataclass
class InferenceConfig:
    backend: str = _f("auto", "classifier backend: auto, onnxruntime, tensorrt, or none",
                      choices=("auto", "onnxruntime", "tensorrt", "none"))
    model: str = _f("", "model bundle directory (model.onnx + model.json); empty = the shipped default")
    precision: str = _f("fp32", "tensorrt precision: fp32, fp16 or int8", choices=("fp32", "fp16", "int8"))
    max_batch: int = _f(32, "micro-batcher: largest batch (spectra)", min=1)
    max_delay_ms: float = _f(0.0, "micro-batcher: longest a spectrum waits for company in its batch (ms); "
                             "0 = run whatever is queued as soon as the backend is free (batches still "
                             "grow under load, while the backend is busy)", min=0.0)
    gpus: list = _f([0], "GPU indices for tensorrt (one engine per GPU)")
    contexts_per_gpu: int = _f(2, "tensorrt execution contexts (CUDA streams) per GPU", min=1)
    engine_cache: str = _f("", "directory of cached TensorRT engines; empty = ~/.cache/ionstream/engines")


@dataclass
class PublishConfig:
    endpoint: str = _f("tcp://127.0.0.1:5556", "ZeroMQ PUB endpoint for results")
    control: str = _f("tcp://127.0.0.1:5557", "ZeroMQ control endpoint (status, record, reload-model, "
                      "shutdown); empty = no control socket")
    spectrum: bool = _f(False, "also publish whole processed spectra on the 'spectrum' topic")
    allow_remote: bool = _f(False, "allow binding plain TCP beyond loopback (use CURVE when you do)")
    curve_server_secret: str = _f("", "CURVE: server secret key file (from `ionstream keys generate`)")
    curve_clients_dir: str = _f("", "CURVE: directory of authorised client public keys")
    queue: int = _f(1024, "messages buffered between pipeline and publisher before drops", min=1)
    hwm: int = _f(1000, "ZeroMQ send high-water mark per subscriber (messages)", min=1)
    wait_subscribers: int = _f(0, "before acquiring, wait for this many subscribers (so a replay for a "
                               "known client loses no message to ZeroMQ's slow joiner); 0 = start at once",
                               min=0)


@dataclass
class StatusConfig:
    interval_s: float = _f(1.0, "seconds between status messages and status-line updates", min=0.05)
    log_interval_s: float = _f(10.0, "seconds between status log lines when not on a terminal", min=0.1)
    prometheus_port: int = _f(0, "serve Prometheus metrics on 127.0.0.1:PORT; 0 = off", min=0, max=65535)
    stall_s: float = _f(5.0, "health: unhealthy after this many seconds without a frame from the source",
                        min=0.1)
    drop_window_s: float = _f(10.0, "health: unhealthy while scans were dropped within this many seconds",
                              min=0.1)
    ring_fill_max: float = _f(0.9, "health: unhealthy while the ring is fuller than this (0..1)", min=0.0, max=1.0)


@dataclass
class LogConfig:
    level: str = _f("info", "debug, info, warning or error", choices=("debug", "info", "warning", "error"))
    format: str = _f("auto", "auto (plain on a terminal, key=value otherwise), plain, kv or json",
                     choices=("auto", "plain", "kv", "json"))


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    ring: RingConfig = field(default_factory=RingConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    dsp: DspConfig = field(default_factory=DspConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def dsp_workers(self) -> int:
        return self.dsp.workers or max(1, (os.cpu_count() or 2) - 1)


SECTIONS: dict[str, type] = {
    "source": SourceConfig, "ring": RingConfig, "capture": CaptureConfig, "dsp": DspConfig,
    "inference": InferenceConfig, "publish": PublishConfig, "status": StatusConfig, "log": LogConfig,
}


# ---- loading and validation ---------------------------------------------------------------
def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list"}.get(t, str(t))


def _check_value(key: str, value: Any, f: dataclasses.Field, problems: list[str]) -> Any:
    # Field types are strings here (from __future__ import annotations).
    expected = {"int": int, "float": float, "str": str, "bool": bool, "list": list}[f.type]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        problems.append(f"{key}: expected {_type_name(expected)}, got {value!r}")
        return None
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{key}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{key}: must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        problems.append(f"{key}: must be <= {meta['max']}, got {value!r}")
    return value


def from_dict(doc: dict[str, Any], source: str = "configuration") -> Config:
    """A Config from a parsed TOML document; ConfigError lists every problem found."""
    problems: list[str] = []
    sections = {}
    for name, value in doc.items():
        if name not in SECTIONS:
            problems.append(f"{name}: unknown section; expected one of {', '.join(SECTIONS)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{name}: expected a [{name}] table, got {value!r}")
            continue
        cls = SECTIONS[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, v in value.items():
            if key not in fields:
                problems.append(f"{name}.{key}: unknown key; expected one of {', '.join(fields)}")
                continue
            checked = _check_value(f"{name}.{key}", v, fields[key], problems)
            if checked is not None:
                kwargs[key] = checked
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    problems += semantic_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def load(path: str | Path | None) -> Config:
    """Read and validate a TOML config file (None: defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return from_dict(doc, str(path))


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Apply dotted-key overrides (from command-line flags), validated like file values."""
    problems: list[str] = []
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        target = getattr(config, section)
        f = {f.name: f for f in dataclasses.fields(target)}[key]
        checked = _check_value(dotted, value, f, problems)
        if checked is not None:
            setattr(target, key, checked)
    problems += semantic_problems(config)
    if problems:
        raise ConfigError(problems, "command line")
    return config


def semantic_problems(config: Config) -> list[str]:
    """Impossible combinations, found without starting anything."""
    from instrument.frames import FRAME_OVERHEAD

    problems = []
    ring = config.ring
    if ring.slot_bytes and ring.slot_bytes < FRAME_OVERHEAD + 2 * ring.max_samples:
        problems.append(
            f"ring.slot_bytes: {ring.slot_bytes} bytes cannot hold a {ring.max_samples}-sample scan "
            f"(needs at least {FRAME_OVERHEAD + 2 * ring.max_samples} for uint16, "
            f"{FRAME_OVERHEAD + 4 * ring.max_samples} for float32); raise it or set 0 for automatic")
    for i, window in enumerate(config.dsp.xic):
        if (not isinstance(window, list) or len(window) != 2
                or not all(isinstance(x, (int, float)) for x in window) or not window[0] < window[1]):
            problems.append(f"dsp.xic[{i}]: expected [mz_low, mz_high] with mz_low < mz_high, got {window!r}")
    problems += _source_problems(config.source.url)
    return problems


def _source_problems(url: str) -> list[str]:
    from instrument.sources import SCHEMES, SourceConfigError, SourceURL

    try:
        parsed = SourceURL.parse(url)
    except SourceConfigError as exc:
        return [f"source.url: {exc}"]
    if parsed.scheme not in SCHEMES:
        return [f"source.url: unknown scheme {parsed.scheme!r}; expected one of {', '.join(SCHEMES)}"]
    if parsed.scheme == "serial" and not os.path.exists(parsed.path):
        return [f"source.url: serial device {parsed.path} does not exist (adapter plugged in? "
                "`ionstream devices` lists ports)"]
    if parsed.scheme == "replay":
        path = Path((parsed.netloc + parsed.path) if parsed.netloc else parsed.path)
        if not path.exists():
            return [f"source.url: capture file {path} does not exist"]
    return []


def endpoint_problems(config: Config) -> list[str]:
    """Ports already in use on the configured TCP endpoints (checked at start-up, not in `check`)."""
    problems = []
    for key in ("endpoint", "control"):
        endpoint = getattr(config.publish, key)
        if not endpoint.startswith("tcp://"):
            continue
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not port.isdigit() or port == "0":
            continue
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            try:
                s.bind((host.strip("[]").replace("*", "0.0.0.0"), int(port)))
            except OSError as exc:
                problems.append(f"publish.{key}: {endpoint} cannot be bound ({exc.strerror}); "
                                "another ionstream running? choose another port")
    return problems


# ---- the commented example ----------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def example_toml() -> str:
    """A complete, commented config file holding every default."""
    lines = ["# ionstream configuration (TOML). Every key is optional; shown with its default.",
             "# Check a file with: ionstream config check FILE", ""]
    defaults = Config()
    for section in SECTIONS:
        lines.append(f"[{section}]")
        obj = getattr(defaults, section)
        for f in dataclasses.fields(obj):
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)

