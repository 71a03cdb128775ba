"""Daemon configuration: a TOML file validated against the dataclass schema below.

The schema is the documentation: each field's ``doc`` becomes a comment in
``ionstream config --example``, and every error names the key (``dsp.workers``), what
was found and what is expected, before anything starts.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ionstream.cores import default_dsp_workers


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
    slot_bytes: int = _f(0, "bytes per slot; 0 = the largest frame the protocol allows for max_samples "
                         "samples (1024-byte header, explicit m/z axis, float64 samples)", min=0)
    max_samples: int = _f(65536, "largest scan (samples) the ring must hold", min=1)
    policy: str = _f("auto", "when the ring is full: drop-oldest (acquisition never waits), block "
                     "(acquisition waits for DSP; a live device may overrun), or auto: block for "
                     "finite sources (replays: deterministic), drop-oldest for live devices",
                     choices=("auto", "drop-oldest", "block"))

    def resolved_slot_bytes(self) -> int:
        from instrument.ring import slot_bytes_for

        return self.slot_bytes or slot_bytes_for(self.max_samples)


@dataclass
class CaptureConfig:
    dir: str = _f("captures", "where `record start NAME` and --record put relative capture paths")
    record: str = _f("", "record every frame to this capture file from the start (empty: don't)")
    fsync_interval_s: float = _f(1.0, "seconds between fsyncs of an open capture (crash-safety window)",
                                 min=0.0)
    compress: bool = _f(False, "zstd-compress capture records")
    rotate_bytes: int = _f(0, "start a new capture part (run1.0001.isc, ...) before a part grows past this "
                           "many bytes; 0 = never", min=0)
    rotate_s: float = _f(0.0, "start a new capture part after this many seconds; 0 = never", min=0.0)
    min_free_bytes: int = _f(1 << 30, "stop recording (cleanly, acquisition goes on) when less than this many "
                             "bytes are free on the capture's filesystem; 0 = only when a write fails", min=0)


@dataclass
class DspConfig:
    workers: int = _f(0, "DSP workers; 0 = usable cores - 1 (CPU affinity and cgroup quota), at least 1, "
                      "at most 2 (thread workers stop scaling there; docs/operations.md)", min=0)
    smoothing: str = _f("savgol", "smoothing along m/z: savgol, gaussian or none",
                        choices=("savgol", "gaussian", "none"))
    min_snr: float = _f(3.0, "peaks below this signal-to-noise are not reported", min=0.0)
    preset: str = _f("", "peak-picking defaults for an instrument kind: tof, orbitrap or fticr "
                     "(docs/dsp.md); empty = tof; smoothing, if set to other than savgol, wins",
                     choices=("", "tof", "orbitrap", "fticr"))
    xic: list[list[float]] = _f([], "extracted-ion traces as [[mz_low, mz_high], ...] (m/z)")


@dataclass
class InferenceConfig:
    backend: str = _f("auto", "classifier backend: auto, onnxruntime, tensorrt, torch, or none",
                      choices=("auto", "onnxruntime", "tensorrt", "torch", "none"))
    model: str = _f("", "model bundle directory (model.onnx + model.json); empty = the shipped default")
    precision: str = _f("fp32", "tensorrt precision: fp32, fp16 or int8", choices=("fp32", "fp16", "int8"))
    max_batch: int = _f(32, "micro-batcher: largest batch (spectra)", min=1)
    max_delay_ms: float = _f(0.0, "micro-batcher: longest a spectrum waits for company in its batch (ms); "
                             "0 = run whatever is queued as soon as the backend is free (batches still "
                             "grow under load, while the backend is busy)", min=0.0)
    gpus: list[int] = _f([0], "GPU indices for tensorrt (one engine per GPU)", min=0)
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
        """Workers to start: ``dsp.workers``, or if 0 the default from the cores this process may
        use (:func:`ionstream.cores.default_dsp_workers`)."""
        return self.dsp.workers or default_dsp_workers()


SECTIONS: dict[str, type] = {
    "source": SourceConfig, "ring": RingConfig, "capture": CaptureConfig, "dsp": DspConfig,
    "inference": InferenceConfig, "publish": PublishConfig, "status": StatusConfig, "log": LogConfig,
}


# ---- loading and validation ---------------------------------------------------------------
# The schema is the dataclasses above: each field's annotation gives its type (int, float, str,
# bool, list[T], T | None), its metadata the rules (choices, min, max; for a list, they apply to
# every element). A hand-written checker rather than a schema library (msgspec, pydantic): it
# reports every problem at once, in TOML spelling, and keeps the field docs that make
# `config --example`; the rules are ~60 lines.

@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a section class (they are strings under `from __future__`)."""
    return typing.get_type_hints(cls)


def toml_repr(value: Any) -> str:
    """``value`` as TOML spells it (``true``, ``"text"``, ``[1, 2]``), for error messages."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + "}"
    return _toml_value(value)


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is list:
        return "a list"
    if typing.get_origin(t) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(t) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _check_type(key: str, value: Any, typ: Any, meta: typing.Mapping[str, Any], problems: list[str]) -> Any:
    """``value`` converted to ``typ`` (an int where a float is expected becomes a float), with
    the range and choice rules of ``meta`` applied to every scalar; None (and a problem
    appended) when it does not fit."""
    origin = typing.get_origin(typ)
    if origin in (types.UnionType, typing.Union):  # T | None: TOML has no null, so the value must be a T
        members = [a for a in typing.get_args(typ) if a is not type(None)]
        for member in members:
            trial: list[str] = []
            checked = _check_type(key, value, member, meta, trial)
            if not trial:
                return checked
        if len(members) == 1:
            problems.extend(trial)
        else:
            problems.append(f"{key}: expected {_type_name(typ)}, got {toml_repr(value)}")
        return None
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected {_type_name(typ)}, got {toml_repr(value)}")
            return None
        (element,) = typing.get_args(typ) or (Any,)
        before = len(problems)
        items = [_check_type(f"{key}[{i}]", v, element, meta, problems) for i, v in enumerate(value)]
        return items if len(problems) == before else None
    if typ is Any:
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        problems.append(f"{key}: expected {_type_name(typ)}, got {toml_repr(value)}")
        return None
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{key}: expected one of {', '.join(map(toml_repr, meta['choices']))}, "
                        f"got {toml_repr(value)}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{key}: must be >= {meta['min']}, got {toml_repr(value)}")
    if "max" in meta and value > meta["max"]:
        problems.append(f"{key}: must be <= {meta['max']}, got {toml_repr(value)}")
    return value


def _check_field(key: str, value: Any, cls: type, f: dataclasses.Field, problems: list[str]) -> Any:
    return _check_type(key, value, _field_types(cls)[f.name], f.metadata, problems)


def from_dict(doc: dict[str, Any], source: str = "configuration") -> Config:
    """A Config from a parsed TOML document; ConfigError lists every problem found."""
    problems: list[str] = []
    sections = {}
    for name, value in doc.items():
        if name not in SECTIONS:
            problems.append(f"{name}: unknown section; expected one of {', '.join(SECTIONS)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{name}: expected a [{name}] table, got {toml_repr(value)}")
            continue
        cls = SECTIONS[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, v in value.items():
            if key not in fields:
                problems.append(f"{name}.{key}: unknown key; expected one of {', '.join(fields)}")
                continue
            before = len(problems)
            checked = _check_field(f"{name}.{key}", v, cls, fields[key], problems)
            if len(problems) == before:
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
        before = len(problems)
        checked = _check_field(dotted, value, type(target), f, problems)
        if len(problems) == before:
            setattr(target, key, checked)
    problems += semantic_problems(config)
    if problems:
        raise ConfigError(problems, "command line")
    return config


def semantic_problems(config: Config) -> list[str]:
    """Everything start-up refuses that can be found without starting anything: impossible
    combinations, source URLs and their options, endpoints and bind rules.

    ``config check`` and the daemon both run this (through :func:`from_dict` and
    :func:`apply_overrides`), so a file that checks "ok" starts. Only what depends on the
    moment (a port in use: :func:`endpoint_problems`) is left to start-up.
    """
    from instrument.frames import FRAME_OVERHEAD

    problems = []
    ring = config.ring
    if ring.slot_bytes and ring.slot_bytes < FRAME_OVERHEAD + 2 * ring.max_samples:
        problems.append(
            f"ring.slot_bytes: {ring.slot_bytes} bytes cannot hold a {ring.max_samples}-sample scan "
            f"(needs at least {FRAME_OVERHEAD + 2 * ring.max_samples} for uint16, "
            f"{FRAME_OVERHEAD + 4 * ring.max_samples} for float32); raise it or set 0 for automatic")
    for i, window in enumerate(config.dsp.xic):  # element types are checked by the schema
        if len(window) != 2 or not window[0] < window[1]:
            problems.append(f"dsp.xic[{i}]: expected [mz_low, mz_high] with mz_low < mz_high, "
                            f"got {toml_repr(window)}")
    problems += _source_problems(config.source.url)
    problems += bind_problems(config.publish)
    return problems


def _source_problems(url: str) -> list[str]:
    """Build (not open) the source, as start-up does: scheme, options and their values."""
    from instrument.sources import SourceConfigError, open_source

    try:
        source = open_source(url)
    except SourceConfigError as exc:
        return [f"source.url: {exc}"]
    if source.url.scheme == "serial" and not os.path.exists(source.path):
        return [f"source.url: serial device {source.path} does not exist (adapter plugged in? "
                "`ionstream devices` lists ports)"]
    return []


def tcp_port_problem(endpoint: str, key: str, *, any_port: bool) -> str | None:
    """A problem with the port of a ``tcp://HOST:PORT`` endpoint, or None.

    Ports are 1..65535; ``any_port`` also allows ``*`` and 0 (bind: the system picks one).
    ZeroMQ itself binds a random port for 99999 instead of refusing it, hence this check.
    """
    if not endpoint.startswith("tcp://"):
        return None
    port = endpoint.rpartition(":")[2]
    if any_port and port in ("*", "0"):
        return None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return (f"{key}: {endpoint} has port {port or '(none)'}; "
                f"expected 1..65535{' (or * for any free port)' if any_port else ''}")
    return None


def bind_problems(publish: PublishConfig) -> list[str]:
    """The endpoints' form, ports and bind rules (loopback unless allow_remote or CURVE)."""
    from ionstream.daemon.security import EndpointError, check_bind_endpoint

    problems = []
    secret, clients = publish.curve_server_secret, publish.curve_clients_dir
    if bool(secret) != bool(clients):
        problems.append("publish: CURVE needs both curve_server_secret and curve_clients_dir "
                        "(or neither, for no encryption)")
    if secret and not os.path.isfile(secret):
        problems.append(f"publish.curve_server_secret: {secret} does not exist "
                        "(make one with `ionstream keys generate DIR --name server`)")
    if clients and not os.path.isdir(clients):
        problems.append(f"publish.curve_clients_dir: {clients} is not a directory "
                        "(make it and copy each client's .key file into it)")
    endpoints = {"publish.endpoint": publish.endpoint}
    if publish.control:
        endpoints["publish.control"] = publish.control
    for key, endpoint in endpoints.items():
        try:
            check_bind_endpoint(endpoint, allow_remote=publish.allow_remote, curve=bool(secret and clients),
                                key=key)
        except EndpointError as exc:
            problems.append(str(exc).replace("(allow_remote=True) ", ""))
            continue
        problem = tcp_port_problem(endpoint, key, any_port=True)
        if problem:
            problems.append(problem)
    if publish.control and publish.control == publish.endpoint:
        problems.append(f"publish.control: {publish.control} is also publish.endpoint; "
                        "give the control socket its own port")
    return problems


def endpoint_problems(config: Config) -> list[str]:
    """Ports already in use on the configured TCP endpoints (checked at start-up, not in `check`).

    The test bind sets SO_REUSEADDR, as libzmq does for its own listeners: a port whose only
    users are connections in TIME_WAIT (left for ~60 s by a daemon that stopped while a
    subscriber was connected) is free for ZeroMQ, so it is free here too; a port another
    process listens on is still refused.
    """
    problems = []
    for key in ("endpoint", "control"):
        endpoint = getattr(config.publish, key)
        if not endpoint.startswith("tcp://"):
            continue
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not port.isdigit() or port == "0":
            continue
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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



# ---- capture paths ------------------------------------------------------------------------
def resolve_capture_path(path: str | os.PathLike, capture_dir: str | os.PathLike) -> Path:
    """Where the daemon writes a capture it is asked for (``record start PATH``, ``--record``,
    ``capture.record``).

    One rule: a relative path, with or without directory parts, is relative to ``capture_dir``
    (``run1.isc`` -> ``captures/run1.isc``, ``2024-05/run1.isc`` -> ``captures/2024-05/run1.isc``,
    ``captures/run1.isc`` -> ``captures/captures/run1.isc``); an absolute path (``~`` expanded)
    is used as given. The control client and the daemon need not share a working directory, so
    the client's never matters. A relative ``capture_dir`` is relative to the daemon's working
    directory. Pure: creates nothing.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return Path(capture_dir).expanduser() / p
