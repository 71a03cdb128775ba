"""What every command shares: the socket options (one name per socket), config loading, errors.

Socket options, the same in every command:

- ``--control ENDPOINT``: the daemon's control socket (``publish.control``): ``run``, ``status``,
  ``record start/stop``;
- ``--endpoint ENDPOINT``: the daemon's PUB socket (``publish.endpoint``): ``run``, ``listen``,
  ``view``;
- ``--curve-key FILE`` / ``--curve-server-key FILE``: CURVE for the clients that connect;
- ``-c FILE``: a configuration file whose ``[publish]`` endpoints the clients connect to.

The endpoint defaults are ``PublishConfig``'s, the daemon's own. Old spellings
(``status --endpoint``, ``record --control-endpoint``) still work and print a one-line
deprecation warning.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from ionstream.config import Config, ConfigError, PublishConfig, apply_overrides, load
from ionstream.daemon.signals import SignalHandler  # noqa: F401  (re-exported for the commands)

EXIT_USAGE = 2
DEFAULT_PUB_ENDPOINT: str = PublishConfig().endpoint
DEFAULT_CONTROL_ENDPOINT: str = PublishConfig().control


class _DeprecatedOption(argparse.Action):
    """An old option name: stores into the new option's dest and warns once on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kw: Any):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ionstream: {option_string} is deprecated here; use {self.new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``), with a deprecation warning."""
    parser.add_argument(old, dest=dest, action=_DeprecatedOption, new=new, metavar="ENDPOINT",
                        help=argparse.SUPPRESS)


def add_config_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=help or "TOML configuration (see `ionstream config --example`)")


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--curve-key", metavar="FILE", help="this client's CURVE .key_secret file")
    parser.add_argument("--curve-server-key", metavar="FILE", help="the daemon's CURVE public .key file")


def add_control_arguments(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """``--control ENDPOINT``, the CURVE options and (``config``) ``-c FILE`` for a control client."""
    parser.add_argument("--control", metavar="ENDPOINT",
                        help=f"the daemon's control endpoint, publish.control (default: from -c FILE, "
                             f"else {DEFAULT_CONTROL_ENDPOINT})")
    add_curve_arguments(parser)
    if config:
        add_config_argument(parser, "read the endpoints from this configuration's [publish] section")


def add_pub_arguments(parser: argparse.ArgumentParser) -> None:
    """``--endpoint ENDPOINT``, the CURVE options and ``-c FILE`` for a subscriber."""
    parser.add_argument("--endpoint", metavar="ENDPOINT",
                        help=f"the daemon's PUB endpoint, publish.endpoint (default: from -c FILE, "
                             f"else {DEFAULT_PUB_ENDPOINT})")
    add_curve_arguments(parser)
    add_config_argument(parser, "read the endpoints from this configuration's [publish] section")


def _endpoint(args: argparse.Namespace, flag: str, key: str, default: str) -> str:
    value = getattr(args, flag, None)
    if value:
        return value
    if getattr(args, "config", None):
        return getattr(load_config(args, offline=True).publish, key) or default
    return default


def control_endpoint(args: argparse.Namespace) -> str:
    """``--control``, else the ``-c`` file's publish.control, else the default. ConfigError on a bad file."""
    return _endpoint(args, "control", "control", DEFAULT_CONTROL_ENDPOINT)


def pub_endpoint(args: argparse.Namespace) -> str:
    """``--endpoint``, else the ``-c`` file's publish.endpoint, else the default."""
    return _endpoint(args, "endpoint", "endpoint", DEFAULT_PUB_ENDPOINT)


def client_curve(args: argparse.Namespace):
    """A CurveClient from ``--curve-key``/``--curve-server-key`` (None without them); SecurityError."""
    from ionstream.client.keys import client_from_args

    return client_from_args(getattr(args, "curve_key", None), getattr(args, "curve_server_key", None))


def request_control(args: argparse.Namespace, command: dict[str, Any], log: logging.Logger, *,
                    timeout: float | None = None) -> dict[str, Any] | int:
    """Send one control command to the daemon that ``args`` names (endpoint, CURVE key files).

    Returns the daemon's reply, or an exit status after logging one sentence that says why there is
    none: 2 for a bad configuration, key file or endpoint; 1 when no daemon answers or it refuses
    our key. ``timeout`` (s) is the client's reply timeout (its default when None).
    """
    from ionstream.client.control import ControlClient, ControlError
    from ionstream.client.keys import SecurityError

    try:
        endpoint = control_endpoint(args)
        curve = client_curve(args)
    except ConfigError as exc:
        return report_config_error(log, exc)
    except SecurityError as exc:
        log.error("%s", exc)
        return 2
    options = {} if timeout is None else {"timeout": timeout}
    try:
        with ControlClient(endpoint, curve=curve, **options) as client:
            return client.request(command)
    except ControlError as exc:  # no daemon there, or it refused our key: say so, no traceback
        log.error("%s", exc)
        return 1
    except Exception as exc:  # a malformed endpoint (zmq.ZMQError): one sentence, no traceback
        log.error("cannot reach %s: %s", endpoint, error_sentence(exc))
        return 2


def load_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None, *,
                offline: bool = False) -> Config:
    """The ``-c`` file (defaults without one) with command-line ``overrides``; ConfigError if invalid.

    ``offline``: for tools that only read [dsp]/[inference]/[publish] (export, peaks, plot,
    reprocess, clients): the [source] section is left out, so a lab's serial port need not exist
    where archives are analysed.
    """
    path = getattr(args, "config", None)
    if offline and path is not None:
        config = _load_without_source(path)
    else:
        config = load(path)
    return apply_overrides(config, overrides) if overrides else config


def _load_without_source(path: str) -> Config:
    import tomllib
    from pathlib import Path

    from ionstream.config import from_dict

    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    doc.pop("source", None)
    return from_dict(doc, str(path))


def report_config_error(log: logging.Logger, exc: ConfigError, hint: str | None = None) -> int:
    """Log each problem on its own line (and ``hint``); the usage exit status, 2."""
    for problem in exc.problems:
        log.error("%s", problem)
    if hint:
        log.error("%s", hint)
    return EXIT_USAGE


def apply_log_config(args: argparse.Namespace, config: Config) -> None:
    """Apply the file's [log] section; ``-v``/``-q``/``--log-format`` on the command line win."""
    from ionstream.logs import setup_logging

    if getattr(args, "verbose", 0) or getattr(args, "quiet", False):
        level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    else:
        level = getattr(logging, config.log.level.upper())
    fmt = getattr(args, "log_format", None) or config.log.format
    setup_logging(level, None if fmt == "auto" else fmt)


_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


def error_sentence(exc: BaseException | str) -> str:
    """One clean sentence for an error a client reports: no ``[Errno 2]``, no Python repr.

    ``exc``: an exception, or an error text from elsewhere (a daemon's reply) to clean up.
    """
    if isinstance(exc, str):
        text = _ERRNO_PREFIX.sub("", exc)
        # "No such file or directory: '/x/y.isc'" -> "/x/y.isc: No such file or directory"
        match = re.fullmatch(r"(.+?): '(.*)'", text)
        return f"{match.group(2)}: {match.group(1)}" if match else text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    try:
        import zmq

        if isinstance(exc, zmq.ZMQError):
            if exc.errno == zmq.EINVAL:
                return "not a valid endpoint (expected tcp://HOST:PORT or ipc://PATH)"
            return re.sub(r"\s*\(addr=.*\)$", "", exc.strerror)
    except ImportError:  # pragma: no cover - pyzmq is a core dependency
        pass
    return error_sentence(str(exc))


# ---- run and record: the daemon-side commands ---------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds from '10s', '5m', '1h', '250ms' or a plain number of seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        number, suffix = text, "s"
    try:
        value = float(number) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 10s, 5m, 1h)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return value


def add_acquisition_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `record` (each overrides the config file's key)."""
    add_config_argument(parser)
    parser.add_argument("-s", "--source", metavar="URL", help="source URL (overrides source.url), e.g. "
                        "sim://, serial:///dev/ttyUSB0?baud=921600, replay://capture.isc?speed=max")
    parser.add_argument("--duration", type=parse_duration, metavar="TIME",
                        help="stop after TIME (e.g. 10s, 5m), counted from start-up (a wait for "
                             "subscribers included)")
    parser.add_argument("--log-format", choices=("plain", "kv", "json"),
                        help="log line format (overrides log.format; default: plain on a terminal, kv otherwise)")
    parser.add_argument("--no-status-line", action="store_true", help="no live status line on a terminal")
