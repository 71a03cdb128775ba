"""``usb://VID:PID?serial=SN`` — device frames from a USB bulk IN endpoint, through pyusb and libusb.

Which device (the part after ``usb://``):

==============================  ===============================================================
``usb://1234:5678``             the device with that vendor:product ID (hex); it must be the only one
``usb://1234:5678?serial=SN``   ... with that serial number (what `ionstream devices` suggests)
``usb://bus=1,port=1.4``        the device on that physical port (survives a re-plug into it)
``usb://bus=1,address=5``       the device at that bus address (the kernel gives a new address on
                                every re-plug: the source then finds it again by the VID:PID and
                                serial number it read at the first open)
==============================  ===============================================================

Options: ``serial``; ``interface`` (default 0) and ``alt`` (alternate setting, default 0);
``ep`` (bulk IN endpoint address, default the interface's first bulk IN endpoint);
``timeout_ms`` (read timeout, default 100: a read that times out returns 0 bytes, "no data
yet"); ``read_size`` (bytes per USB transfer, default 65536, rounded up to a multiple of the
endpoint's wMaxPacketSize); ``start_ctrl`` / ``stop_ctrl`` (a vendor control request without
data, ``bmRequestType,bRequest,wValue,wIndex``, e.g. ``0x40,0x01,0,0``, sent after the
interface is claimed / before it is released, for devices that stream only when told to);
``detach`` (1, default: detach a kernel driver holding the interface, and re-attach it on close;
0: leave it, and fail to open).

libusb comes from the ``libusb-package`` wheel, else the system's; the log says which
(``instrument.usbdev.libusb_backend``). Reads go into one preallocated ``array`` per open
device (pyusb reads into an ``array.array`` in place; it allocates for anything else), then
are copied into the acquisition thread's buffer: no allocation per read.

Errors, as the acquisition thread expects them (instrument/sources/base.py):
``open()`` raises SourceUnavailable when the device is absent, ambiguous, busy, or not
permitted (the message gives the udev rule); ``readinto()`` returns 0 on a timeout and raises
SourceDisconnected on ENODEV/EPIPE/EIO and every other USB error; the thread then closes,
waits and calls ``open()`` again, which finds the same device anew.
"""
from __future__ import annotations

import array
import errno
import functools
import logging
from dataclasses import dataclass
from typing import Any

import usb.core
import usb.util

from instrument.sources.base import (
    Source,
    SourceConfigError,
    SourceDisconnected,
    SourceUnavailable,
    SourceURL,
)
from instrument.usbdev import (
    NoLibusb,
    libusb_backend,
    permission_hint,
    read_strings,
    uses_sysfs,
)

log = logging.getLogger("ionstream.usb")

OPTIONS = {"serial", "interface", "alt", "ep", "timeout_ms", "read_size", "start_ctrl", "stop_ctrl", "detach"}
DEFAULT_READ_SIZE = 65536


def create(url: SourceURL, backend: Any = None) -> UsbSource:
    """The USB source for ``url``; ``backend`` (a pyusb backend) replaces libusb, for tests."""
    url.check_options(OPTIONS)
    return UsbSource(url, backend=backend)


@dataclass(frozen=True)
class Selector:
    """Which device a URL names. Any field left None matches everything."""

    vid: int | None = None
    pid: int | None = None
    serial: str | None = None
    bus: int | None = None
    address: int | None = None
    ports: tuple[int, ...] | None = None

    def matches(self, dev: Any) -> bool:
        """The checks that need no I/O (everything but the serial number)."""
        return ((self.vid is None or dev.idVendor == self.vid)
                and (self.pid is None or dev.idProduct == self.pid)
                and (self.bus is None or dev.bus == self.bus)
                and (self.address is None or dev.address == self.address)
                and (self.ports is None or tuple(dev.port_numbers or ()) == self.ports))

    def __str__(self) -> str:
        parts = []
        if self.vid is not None:
            parts.append(f"{self.vid:04x}:{self.pid:04x}")
        if self.serial:
            parts.append(f"serial {self.serial}")
        if self.bus is not None:
            parts.append(f"bus {self.bus}")
        if self.address is not None:
            parts.append(f"address {self.address}")
        if self.ports is not None:
            parts.append(f"port {'.'.join(map(str, self.ports))}")
        return " ".join(parts)


def parse_selector(url: SourceURL) -> Selector:
    """The device a ``usb://`` URL names; SourceConfigError says what forms are accepted."""
    text = url.netloc
    expected = ("expected usb://VID:PID[?serial=SN], usb://bus=B,port=P[.Q...] or "
                "usb://bus=B,address=A (IDs in hex, as `ionstream devices` shows them)")
    serial = url.options.get("serial") or None
    if "=" in text:
        fields: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in ("bus", "address", "port") or key in fields:
                raise SourceConfigError(f"source {url.text!r}: bad device selector {item!r}; {expected}")
            fields[key] = value
        try:
            bus = int(fields["bus"])
            address = int(fields["address"]) if "address" in fields else None
            ports = tuple(int(p) for p in fields["port"].split(".")) if "port" in fields else None
        except (KeyError, ValueError):
            raise SourceConfigError(f"source {url.text!r}: {expected}") from None
        if (address is None) == (ports is None):
            raise SourceConfigError(f"source {url.text!r}: give bus= with exactly one of address= or port=")
        return Selector(bus=bus, address=address, ports=ports, serial=serial)
    vid_text, sep, pid_text = text.partition(":")
    try:
        vid, pid = int(vid_text, 16), int(pid_text, 16)
    except ValueError:
        raise SourceConfigError(f"source {url.text!r}: {expected}") from None
    if not sep or not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
        raise SourceConfigError(f"source {url.text!r}: {expected}")
    return Selector(vid=vid, pid=pid, serial=serial)


def _parse_ctrl(url: SourceURL, name: str) -> tuple[int, int, int, int] | None:
    raw = url.options.get(name)
    if not raw:
        return None
    try:
        values = tuple(int(v, 0) for v in raw.split(","))
    except ValueError:
        values = ()
    if (len(values) != 4 or not (0 <= values[0] <= 0xFF and 0 <= values[1] <= 0xFF)
            or not all(0 <= v <= 0xFFFF for v in values[2:])):
        raise SourceConfigError(f"source {url.text!r}: {name}={raw!r}: expected bmRequestType,bRequest,wValue,wIndex "
                                "(numbers, e.g. 0x40,0x01,0,0)")
    if values[0] & 0x80:
        raise SourceConfigError(f"source {url.text!r}: {name}: bmRequestType 0x{values[0]:02x} is a device-to-host "
                                "request; only host-to-device requests without data are supported")
    return values  # type: ignore[return-value]


class UsbSource(Source):
    """Bulk IN reads from one USB device. Not thread-safe: the acquisition thread owns it."""

    def __init__(self, url: SourceURL, backend: Any = None):
        super().__init__(url)
        self.selector = parse_selector(url)
        self.interface = url.option("interface", 0, int)
        self.alt = url.option("alt", 0, int)
        ep = url.options.get("ep")
        try:
            self.ep = int(ep, 0) if ep else None
        except ValueError:
            raise SourceConfigError(f"source {url.text!r}: ep={ep!r} is not an endpoint address (e.g. 0x81)") from None
        if self.ep is not None and not (self.ep & 0x80 and 0 < self.ep & 0x7F < 16):
            raise SourceConfigError(f"source {url.text!r}: ep=0x{self.ep:02x} is not an IN endpoint (0x81..0x8f)")
        self.timeout_ms = url.option("timeout_ms", 100, int)
        self.read_size = url.option("read_size", DEFAULT_READ_SIZE, int)
        if self.timeout_ms <= 0 or self.read_size <= 0:
            raise SourceConfigError(f"source {url.text!r}: timeout_ms and read_size must be positive")
        self.start_ctrl = _parse_ctrl(url, "start_ctrl")
        self.stop_ctrl = _parse_ctrl(url, "stop_ctrl")
        self.detach = bool(url.option("detach", 1, int))
        self._backend = backend
        self._libusb = "simulated backend" if backend is not None else ""
        self._dev: Any = None
        self._transfer = None          # dev.read bound to (endpoint, buffer, timeout)
        self._ep_address = 0
        self.max_packet = 0
        self._buffer: array.array | None = None   # one per transfer size, kept across re-opens
        self._view: memoryview | None = None
        self._pending = 0              # bytes of the last transfer not yet handed out (tiny caller buffers)
        self._pending_at = 0
        self._detached = False
        self._started = False          # start_ctrl was sent: send stop_ctrl on close
        self._stalled = False
        self._identity: Selector | None = None     # the device found at the first open
        self._where = ""
        self.device_info: dict[str, Any] = {}

    # ---- finding the device ----------------------------------------------------------
    def _wanted(self) -> Selector:
        """What to look for: the URL's selector, then (after a first open) the device it found."""
        sel, ident = self.selector, self._identity
        if ident is None:
            return sel
        # A re-plugged device has a new address: look for the same VID:PID and serial number,
        # and keep a port selection, which stays valid.
        return Selector(vid=ident.vid, pid=ident.pid, serial=ident.serial or sel.serial,
                        bus=sel.bus if sel.ports is not None else None, ports=sel.ports)

    def _find(self, backend: Any) -> tuple[Any, dict[str, str | None]]:
        wanted = self._wanted()
        try:
            candidates = list(usb.core.find(find_all=True, backend=backend, custom_match=wanted.matches))
        except usb.core.USBError as exc:
            raise SourceUnavailable(f"cannot list USB devices: {exc}") from None
        if not candidates:
            raise SourceUnavailable(f"no USB device {wanted} is attached (unplugged? `ionstream devices` "
                                    "lists what is)")
        sysfs = uses_sysfs(backend)
        found = []
        unreadable = []
        for dev in candidates:
            strings, error = read_strings(dev, sysfs=sysfs)
            if wanted.serial and strings["serial"] is None and dev.iSerialNumber:
                unreadable.append((dev, error))
                continue
            if wanted.serial and strings["serial"] != wanted.serial:
                continue
            found.append((dev, strings))
        if not found and unreadable:
            dev, error = unreadable[0]
            if error == "no permission to open it":
                raise SourceUnavailable(
                    f"permission denied reading the serial number of USB device {dev.idVendor:04x}:{dev.idProduct:04x} "
                    f"(bus {dev.bus} address {dev.address}); "
                    + permission_hint(dev.idVendor, dev.idProduct))
            raise SourceUnavailable(f"cannot read the serial number of USB device {dev.idVendor:04x}:"
                                    f"{dev.idProduct:04x} (bus {dev.bus} address {dev.address}): {error}")
        if not found:
            seen = ", ".join(repr(read_strings(d, sysfs=sysfs)[0]["serial"]) for d in candidates)
            raise SourceUnavailable(f"no USB device {wanted} is attached (serial numbers seen: {seen})")
        if len(found) > 1 and self._identity is not None and self._identity.ports is not None:
            same_port = [f for f in found if tuple(f[0].port_numbers or ()) == self._identity.ports]
            found = same_port or found
        if len(found) > 1:
            listing = "; ".join(f"bus {d.bus} address {d.address} serial {s['serial']!r}" for d, s in found)
            raise SourceUnavailable(f"{len(found)} USB devices match {wanted} ({listing}); choose one with "
                                    "?serial=SN or usb://bus=B,port=P (`ionstream devices` suggests URLs)")
        return found[0]

    # ---- Source ------------------------------------------------------------------------
    def open(self) -> None:
        self.close()
        backend = self._backend
        if backend is None:
            try:
                backend, self._libusb = libusb_backend()
            except NoLibusb as exc:
                raise SourceUnavailable(str(exc)) from None
        dev, strings = self._find(backend)
        try:
            self._setup(dev)
        except usb.core.USBError as exc:
            self._release(dev)
            raise SourceUnavailable(self._open_error(dev, exc)) from None
        except SourceUnavailable:
            self._release(dev)
            raise
        self._dev = dev
        self._transfer = functools.partial(dev.read, self._ep_address, self._buffer, self.timeout_ms)
        self._where = f"USB device {dev.idVendor:04x}:{dev.idProduct:04x} at bus {dev.bus} address {dev.address}"
        self._pending = 0
        if self._identity is None:
            self._identity = Selector(vid=dev.idVendor, pid=dev.idProduct, serial=strings["serial"],
                                      bus=dev.bus, ports=tuple(dev.port_numbers or ()) or None)
        self.device_info = {
            "vid": f"{dev.idVendor:04x}", "pid": f"{dev.idProduct:04x}", "serial": strings["serial"],
            "manufacturer": strings["manufacturer"], "product": strings["product"], "bus": dev.bus,
            "address": dev.address, "port": ".".join(map(str, dev.port_numbers or ())),
        }
        log.debug("%s: opened %s:%s serial %r at bus %s address %s: interface %d, endpoint 0x%02x, "
                  "%d-byte packets, %d-byte transfers, %s", self.url.text, self.device_info["vid"],
                  self.device_info["pid"], strings["serial"], dev.bus, dev.address, self.interface,
                  self._ep_address, self.max_packet, len(self._buffer), self._libusb)

    def _setup(self, dev: Any) -> None:
        """Detach a kernel driver, configure, claim, find the endpoint, size the buffer, start."""
        self._detached = self._started = False
        if self.detach:
            try:
                if dev.is_kernel_driver_active(self.interface):
                    dev.detach_kernel_driver(self.interface)
                    self._detached = True
            except NotImplementedError:   # not on this OS (libusb detaches only on Linux)
                pass
        try:
            config = dev.get_active_configuration()
        except usb.core.USBError as exc:
            if exc.errno is not None:     # a real error; None is pyusb's "Configuration not set"
                raise
            dev.set_configuration()
            config = dev.get_active_configuration()
        try:
            intf = config[(self.interface, self.alt)]
        except (KeyError, IndexError):
            have = sorted({(i.bInterfaceNumber, i.bAlternateSetting) for i in config})
            raise SourceUnavailable(f"the device has no interface {self.interface} alternate setting {self.alt} "
                                    f"(it has {have}); set ?interface= / ?alt=") from None
        if self.alt:
            dev.set_interface_altsetting(self.interface, self.alt)
        usb.util.claim_interface(dev, self.interface)
        ep = self._endpoint(intf)
        self._ep_address = ep.bEndpointAddress
        self.max_packet = ep.wMaxPacketSize & 0x7FF or 64
        size = -(-self.read_size // self.max_packet) * self.max_packet
        if self._buffer is None or len(self._buffer) != size:
            self._buffer = array.array("B", bytes(size))
            self._view = memoryview(self._buffer)
        if self._stalled:
            dev.clear_halt(self._ep_address)
            self._stalled = False
        if self.start_ctrl:
            dev.ctrl_transfer(*self.start_ctrl, None, 1000)
            self._started = True

    def _endpoint(self, intf: Any) -> Any:
        ins = [ep for ep in intf
               if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
               and usb.util.endpoint_type(ep.bmAttributes) in (usb.util.ENDPOINT_TYPE_BULK,
                                                               usb.util.ENDPOINT_TYPE_INTR)]
        have = ", ".join(f"0x{ep.bEndpointAddress:02x}" for ep in ins) or "none"
        if self.ep is None:
            bulk = [ep for ep in ins if usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK]
            if not bulk:
                raise SourceUnavailable(f"interface {self.interface} has no bulk IN endpoint (IN endpoints: {have})")
            return bulk[0]
        for ep in ins:
            if ep.bEndpointAddress == self.ep:
                return ep
        raise SourceUnavailable(f"interface {self.interface} has no bulk/interrupt IN endpoint 0x{self.ep:02x} "
                                f"(it has: {have}); set ?ep=")

    def _open_error(self, dev: Any, exc: Exception) -> str:
        where = f"USB device {dev.idVendor:04x}:{dev.idProduct:04x} at bus {dev.bus} address {dev.address}"
        code = getattr(exc, "errno", None)
        if code == errno.EACCES:
            return f"permission denied opening {where}; " + permission_hint(dev.idVendor, dev.idProduct)
        if code == errno.EBUSY:
            hint = "" if self.detach else " (a kernel driver may hold it: drop detach=0)"
            return f"{where}: interface {self.interface} is claimed by another program or driver{hint}"
        if code == errno.ENODEV:
            return f"{where} went away while being opened"
        return f"cannot open {where}: {exc}"

    def readinto(self, buf: memoryview) -> int:
        view = self._view
        if self._pending:
            n = min(self._pending, len(buf))
            buf[:n] = view[self._pending_at:self._pending_at + n]
            self._pending -= n
            self._pending_at += n
            return n
        transfer = self._transfer
        if transfer is None:
            raise SourceDisconnected("the USB device is not open")
        try:
            n = transfer()                # into self._buffer, in place
        except usb.core.USBError as exc:
            return self._read_error(exc)
        if n <= len(buf):
            buf[:n] = view if n == len(view) else view[:n]
            return n
        taken = len(buf)
        buf[:] = view[:taken]
        self._pending, self._pending_at = n - taken, taken
        return taken

    def read_view(self) -> memoryview:
        """Zero-copy variant of readinto(): the next transfer as a view of the source's own buffer.

        Empty on a timeout. The view is valid until the next read_view()/readinto()/close();
        errors as readinto(). (The acquisition thread calls readinto(); this is for a caller
        that can decode straight from the source's buffer, saving one copy per transfer.)
        """
        view = self._view
        if self._pending:
            start, self._pending_at = self._pending_at, self._pending_at + self._pending
            self._pending = 0
            return view[start:self._pending_at]
        transfer = self._transfer
        if transfer is None:
            raise SourceDisconnected("the USB device is not open")
        try:
            n = transfer()
        except usb.core.USBError as exc:
            return view[:self._read_error(exc)]
        return view if n == len(view) else view[:n]

    def _read_error(self, exc: usb.core.USBError) -> int:
        if isinstance(exc, usb.core.USBTimeoutError):
            return 0
        if exc.errno == errno.EINTR:
            return 0
        if exc.errno == errno.EPIPE:
            self._stalled = True      # cleared on the next open
        raise SourceDisconnected(f"{self._where}: {exc} (errno {exc.errno})") from None

    def close(self) -> None:
        dev, self._dev, self._transfer = self._dev, None, None
        self._pending = 0
        if dev is not None:
            self._release(dev)

    def _release(self, dev: Any) -> None:
        """Undo open() as far as the device still allows (it may be gone): never raises USB errors."""
        steps = []
        if self._started and self.stop_ctrl:
            steps.append(lambda: dev.ctrl_transfer(*self.stop_ctrl, None, 1000))
        steps.append(lambda: usb.util.release_interface(dev, self.interface))
        if self._detached:
            steps.append(lambda: dev.attach_kernel_driver(self.interface))
        for step in steps:
            try:
                step()
            except (usb.core.USBError, NotImplementedError, ValueError) as exc:
                log.debug("%s: cleanup step failed: %s", self.url.text, exc)
        self._detached = self._started = False
        try:
            usb.util.dispose_resources(dev)
        except usb.core.USBError:
            pass

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "selector": str(self.selector), "interface": self.interface,
               "timeout_ms": self.timeout_ms, "libusb": self._libusb}
        if self.max_packet:
            out.update(endpoint=f"0x{self._ep_address:02x}", max_packet=self.max_packet,
                       read_size=len(self._buffer) if self._buffer is not None else self.read_size)
        out.update(self.device_info)
        return out
