"""A simulated USB streaming device: one behaviour, two front ends.

The behaviour (:class:`UsbDeviceBehaviour`) is the device as the host sees it: descriptors,
strings, vendor requests that start and stop streaming, a bulk IN endpoint that streams a
"tape" of bytes (device frames, built by the caller with ``instrument.frames``), and a
schedule of misbehaviour (go quiet for a while, vanish mid-stream, come back at a new
address). Two front ends serve the same behaviour:

* :class:`SimulatedBackend`, a pyusb ``IBackend``: ``usb.core.find(backend=...)`` finds the
  device in-process. Fast, and it tests our code (the USB source, the benchmark), but not
  libusb: nothing below pyusb's backend interface is real.
* ``tests/usb/umockdev_testbed.py``, run with Debian's python3 (which has ``gi``), serves the
  usbdevfs ioctls of a umockdev test bed, so that real libusb in another process talks to it
  through the kernel interface it uses on a real device. That script loads this file by path.

So this module uses only the standard library (Debian's python3 has no numpy) and imports
pyusb lazily, for the backend only.

    spec = UsbDeviceSpec(unplug_after=1 << 20)
    backend = SimulatedBackend(spec, tape)
    dev = usb.core.find(idVendor=spec.vid, idProduct=spec.pid, backend=backend)
"""
from __future__ import annotations

import ctypes
import errno
import json
import struct
import threading
import time
from dataclasses import asdict, dataclass, fields

# Vendor requests (bmRequestType 0x40: host-to-device, vendor, device) the device understands.
VENDOR_OUT = 0x40
REQUEST_START = 0x01     # start streaming
REQUEST_STOP = 0x02      # stop streaming

# Standard requests answered on endpoint 0.
_GET_STATUS, _CLEAR_FEATURE, _SET_FEATURE, _GET_DESCRIPTOR = 0, 1, 3, 6
_GET_CONFIGURATION, _SET_CONFIGURATION, _GET_INTERFACE, _SET_INTERFACE = 8, 9, 10, 11
_DT_DEVICE, _DT_CONFIG, _DT_STRING = 1, 2, 3
LANGID_EN_US = 0x0409

SPEED_HIGH = 3           # libusb_speed: LIBUSB_SPEED_HIGH (480 Mbit/s)


class DeviceGone(Exception):
    """The simulated device has been unplugged."""


class Stall(Exception):
    """The device answered a control request with STALL (request not supported)."""


@dataclass
class UsbDeviceSpec:
    """What the simulated device is and how it misbehaves (bytes, s; JSON round-trips).

    unplug_after: bytes delivered on the bulk IN endpoint before the device vanishes (once;
        0 = never). It comes back ``replug_after_s`` later on the same port, at address + 1 as
        a kernel gives it (or at the same address with ``new_address_on_replug=False``), having
        produced ``lost_while_away`` tape bytes meanwhile (never delivered).
    pause_after, pause_s: after ``pause_after`` bytes (once; 0 = never) the device sends nothing
        for ``pause_s`` s, so reads time out.
    require_start: stream only after the vendor request START (0x40, 0x01); STOP (0x40, 0x02)
        ends it. A re-plugged device has forgotten it was started.
    kernel_driver: a kernel driver holds the interface until detached.
    permission_denied: opening the device fails with EACCES (pyusb backend only: the umockdev
        test bed runs as root, which no file mode stops).
    sysfs_strings: the umockdev test bed puts manufacturer/product/serial in /sys too (as the
        kernel does); without them, readers must ask the device (string descriptors).
    loop: when the tape ends, start it again; else send nothing more (reads time out).
    """

    vid: int = 0x1234
    pid: int = 0x5678
    manufacturer: str = "ionstream"
    product: str = "simulated acquisition bridge"
    serial: str = "SIM0001"
    bus: int = 1
    address: int = 2
    port: int = 1
    interface: int = 0
    ep_in: int = 0x81
    ep_out: int = 0x02
    max_packet: int = 512
    kernel_driver: bool = False
    require_start: bool = False
    loop: bool = True
    unplug_after: int = 0
    replug_after_s: float = 0.3
    new_address_on_replug: bool = True
    lost_while_away: int = 0
    pause_after: int = 0
    pause_s: float = 0.0
    permission_denied: bool = False
    sysfs_strings: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> UsbDeviceSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    # ---- descriptors (USB 2.0 chapter 9) ----------------------------------------------
    def device_descriptor(self) -> bytes:
        return struct.pack("<BBHBBBBHHHBBBB", 18, _DT_DEVICE, 0x0200, 0xFF, 0, 0, 64,
                           self.vid, self.pid, 0x0100, 1, 2, 3 if self.serial else 0, 1)

    def config_descriptor(self) -> bytes:
        body = (struct.pack("<BBBBBBBBB", 9, 4, self.interface, 0, 2, 0xFF, 0, 0, 0)
                + struct.pack("<BBBBHB", 7, 5, self.ep_in, 2, self.max_packet, 0)
                + struct.pack("<BBBBHB", 7, 5, self.ep_out, 2, self.max_packet, 0))
        return struct.pack("<BBHBBBBB", 9, _DT_CONFIG, 9 + len(body), 1, 1, 0, 0x80, 50) + body

    def strings(self) -> dict[int, str]:
        return {1: self.manufacturer, 2: self.product, 3: self.serial}

    @property
    def sysfs_name(self) -> str:
        """The kernel's name for the device (bus-port), as in /sys/bus/usb/devices."""
        return f"{self.bus}-{self.port}"


class UsbDeviceBehaviour:
    """The device's state machine. Thread-safe: pyusb and the test may call from two threads."""

    def __init__(self, spec: UsbDeviceSpec, tape: bytes | bytearray | memoryview):
        if not len(tape):
            raise ValueError("tape is empty: the device needs bytes to stream")
        self.spec = spec
        self.tape = bytearray(tape)   # never resized: its address is fixed
        self.tape_address = ctypes.addressof((ctypes.c_char * len(self.tape)).from_buffer(self.tape))
        self.address = spec.address
        self.present = True
        self.streaming = not spec.require_start
        self.kernel_driver = spec.kernel_driver
        self.position = 0          # next tape offset to send
        self.delivered = 0         # bytes sent on the bulk IN endpoint, all sessions
        self.unplugs = 0
        self.replugs = 0
        self.vendor_requests: list[tuple[int, int, int, int]] = []
        self.events: list[str] = []   # what happened, in order (for tests and logs)
        self._gone_at = 0.0
        self._pause_until: float | None = None
        self._paused = False
        self._lock = threading.Lock()

    # ---- endpoint 0 ----------------------------------------------------------------
    def control(self, bmRequestType: int, bRequest: int, wValue: int, wIndex: int,
                wLength: int, data: bytes = b"") -> bytes:
        """Answer a control request: the IN data (at most wLength bytes), b"" for OUT; raises Stall."""
        spec = self.spec
        with self._lock:
            if not self.present:
                raise DeviceGone()
            if bmRequestType == 0x80 and bRequest == _GET_DESCRIPTOR:
                kind, index = wValue >> 8, wValue & 0xFF
                if kind == _DT_DEVICE:
                    return spec.device_descriptor()[:wLength]
                if kind == _DT_CONFIG and index == 0:
                    return spec.config_descriptor()[:wLength]
                if kind == _DT_STRING:
                    if index == 0:
                        return struct.pack("<BBH", 4, _DT_STRING, LANGID_EN_US)[:wLength]
                    text = spec.strings().get(index)
                    if text:
                        encoded = text.encode("utf-16-le")
                        return (bytes([2 + len(encoded), _DT_STRING]) + encoded)[:wLength]
                raise Stall()
            if bmRequestType == 0x80 and bRequest == _GET_STATUS:
                return b"\x00\x00"[:wLength]
            if bmRequestType == 0x80 and bRequest == _GET_CONFIGURATION:
                return b"\x01"[:wLength]
            if (bmRequestType, bRequest) in ((0x00, _SET_CONFIGURATION), (0x01, _SET_INTERFACE),
                                             (0x02, _CLEAR_FEATURE)):
                return b""
            if bmRequestType & 0xE0 == 0x40 and bRequest in (REQUEST_START, REQUEST_STOP):   # vendor, OUT
                self.vendor_requests.append((bmRequestType, bRequest, wValue, wIndex))
                self.streaming = bRequest == REQUEST_START
                self.events.append("start" if self.streaming else "stop")
                return b""
            raise Stall()

    # ---- bulk IN ---------------------------------------------------------------------
    def bulk_in(self, max_bytes: int) -> tuple[int, int]:
        """Up to ``max_bytes`` the device has ready now, as (tape offset, length).

        Length 0 when nothing is ready (the host's read times out). Raises DeviceGone once the
        device has vanished; the transfer that reaches the unplug point ends there (short).
        """
        spec = self.spec
        with self._lock:
            if not self.present:
                raise DeviceGone()
            if spec.unplug_after and not self.unplugs and self.delivered >= spec.unplug_after:
                self._unplug()
                raise DeviceGone()
            if not self.streaming:
                return 0, 0
            if spec.pause_after and not self._paused and self.delivered >= spec.pause_after:
                now = time.monotonic()
                if self._pause_until is None:
                    self._pause_until = now + spec.pause_s
                    self.events.append("pause")
                if now < self._pause_until:
                    return 0, 0
                self._paused = True
                self.events.append("resume")
            limit = max_bytes
            if spec.unplug_after and not self.unplugs:
                limit = min(limit, spec.unplug_after - self.delivered)
            if spec.pause_after and not self._paused and self.delivered < spec.pause_after:
                limit = min(limit, spec.pause_after - self.delivered)
            if self.position >= len(self.tape):
                if not spec.loop:
                    return 0, 0
                self.position = 0
            offset = self.position
            n = min(limit, len(self.tape) - offset)
            self.position += n
            self.delivered += n
            return offset, n

    def fill(self, address: int, length: int) -> int:
        """Copy what the device has ready (up to ``length`` bytes) to raw memory at ``address``.

        Returns the bytes copied; 0 when nothing is ready. Raises DeviceGone only when the
        device vanished before sending anything in this transfer.
        """
        filled = 0
        try:
            while filled < length:
                offset, n = self.bulk_in(length - filled)
                if not n:
                    break
                ctypes.memmove(address + filled, self.tape_address + offset, n)
                filled += n
        except DeviceGone:
            if not filled:
                raise
        return filled

    def quiet_for(self) -> float:
        """Seconds until data may be ready again when bulk_in returned nothing (inf: only a request helps)."""
        with self._lock:
            if self._pause_until is not None and not self._paused:
                return max(0.0, self._pause_until - time.monotonic())
            return float("inf")

    # ---- plugging --------------------------------------------------------------------
    def unplug(self) -> None:
        """Pull the plug now (tests); the device comes back after spec.replug_after_s."""
        with self._lock:
            if self.present:
                self._unplug()

    def _unplug(self) -> None:
        self.present = False
        self.unplugs += 1
        self._gone_at = time.monotonic()
        self.events.append("unplug")

    def replug_due(self) -> bool:
        with self._lock:
            return not self.present and time.monotonic() - self._gone_at >= self.spec.replug_after_s

    def replug(self) -> None:
        """The device is back (at the next address, as a rule), not streaming until started (if it must be)."""
        with self._lock:
            if self.present:
                return
            self.present = True
            self.replugs += 1
            if self.spec.new_address_on_replug:
                self.address += 1
            self.streaming = not self.spec.require_start
            self.kernel_driver = self.spec.kernel_driver
            self.position += self.spec.lost_while_away
            if self.spec.loop and len(self.tape):
                self.position %= len(self.tape)
            self.events.append("replug")

    def detach_driver(self) -> None:
        with self._lock:
            self.kernel_driver = False
            self.events.append("driver-detached")

    def attach_driver(self) -> None:
        with self._lock:
            self.kernel_driver = True
            self.events.append("driver-attached")


# ---- front end 1: a pyusb backend ------------------------------------------------------
try:
    import usb.backend as _usb_backend
    import usb.core as _usb_core
    _IBackend = _usb_backend.IBackend
except ImportError:  # Debian's python3 running the umockdev test bed has no pyusb
    _usb_core = None
    _IBackend = object

_LIBUSB = {  # errno -> libusb error code, as pyusb's libusb1 backend reports them
    errno.EIO: -1, errno.EINVAL: -2, errno.EACCES: -3, errno.ENODEV: -4, errno.ENOENT: -5,
    errno.EBUSY: -6, errno.ETIMEDOUT: -7, errno.EOVERFLOW: -8, errno.EPIPE: -9,
}
_MESSAGES = {
    errno.EACCES: "Access denied (insufficient permissions)",
    errno.ENODEV: "No such device (it may have been disconnected)",
    errno.ETIMEDOUT: "Operation timed out",
    errno.EPIPE: "Pipe error",
    errno.EBUSY: "Resource busy",
}


def usb_error(code: int) -> Exception:
    """The exception pyusb's libusb1 backend raises for ``code`` (an errno)."""
    cls = _usb_core.USBTimeoutError if code == errno.ETIMEDOUT else _usb_core.USBError
    return cls(_MESSAGES.get(code, errno.errorcode.get(code, str(code))), _LIBUSB.get(code, -99), code)


class _Desc:
    """A descriptor record: attribute access like pyusb's own backends give."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Handle:
    def __init__(self, device: UsbDeviceBehaviour):
        self.device = device
        self.session = device.replugs    # a handle dies with the plug-in it was opened in
        self.claimed: set[int] = set()


class SimulatedBackend(_IBackend):
    """A pyusb backend whose only devices are simulated ones: pure Python, in-process.

    ``find(..., backend=SimulatedBackend(spec, tape))`` sees the device while it is plugged
    in; an unplugged device disappears from enumeration and comes back ``replug_after_s``
    later (at the next address). ``more`` adds devices: ``[(spec2, tape2), ...]``. Every bulk
    read records the id of the array it reads into in ``read_buffers``, so a test can check
    that the caller reuses one buffer.
    """

    simulated = True   # instrument.usbdev does not read /sys for a simulated backend

    def __init__(self, spec: UsbDeviceSpec | None = None, tape: bytes = b"\0", *,
                 more: list[tuple[UsbDeviceSpec, bytes]] = (), record_buffers: bool = True):
        if _usb_core is None:
            raise ImportError("SimulatedBackend needs pyusb")
        self.spec = spec or UsbDeviceSpec()
        self.devices = [UsbDeviceBehaviour(self.spec, tape)] + [UsbDeviceBehaviour(s, t) for s, t in more]
        self.device = self.devices[0]
        self.record_buffers = record_buffers
        self.read_buffers: set[int] = set()
        self.reads = 0
        self.open_handles = 0
        self.claims: list[int] = []
        self.releases: list[int] = []

    # enumeration (a device id is the behaviour object; pyusb treats it as opaque) ---------
    def enumerate_devices(self):
        for device in self.devices:
            if device.replug_due():
                device.replug()
            if device.present:
                yield device

    def get_device_descriptor(self, dev):
        s = dev.spec
        return _Desc(bLength=18, bDescriptorType=_DT_DEVICE, bcdUSB=0x0200, bDeviceClass=0xFF,
                     bDeviceSubClass=0, bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=s.vid,
                     idProduct=s.pid, bcdDevice=0x0100, iManufacturer=1, iProduct=2,
                     iSerialNumber=3 if s.serial else 0, bNumConfigurations=1, address=dev.address,
                     bus=s.bus, port_number=s.port, port_numbers=(s.port,), speed=SPEED_HIGH)

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError(config)
        return _Desc(bLength=9, bDescriptorType=_DT_CONFIG, wTotalLength=len(dev.spec.config_descriptor()),
                     bNumInterfaces=1, bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80,
                     bMaxPower=50, extra_descriptors=[])

    def get_interface_descriptor(self, dev, intf, alt, config):
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError(intf)
        return _Desc(bLength=9, bDescriptorType=4, bInterfaceNumber=dev.spec.interface, bAlternateSetting=0,
                     bNumEndpoints=2, bInterfaceClass=0xFF, bInterfaceSubClass=0, bInterfaceProtocol=0,
                     iInterface=0, extra_descriptors=[])

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if (intf, alt, config) != (0, 0, 0) or ep not in (0, 1):
            raise IndexError(ep)
        address = (dev.spec.ep_in, dev.spec.ep_out)[ep]
        return _Desc(bLength=7, bDescriptorType=5, bEndpointAddress=address, bmAttributes=2,
                     wMaxPacketSize=dev.spec.max_packet, bInterval=0, bRefresh=0, bSynchAddress=0,
                     extra_descriptors=[])

    # handles ----------------------------------------------------------------------
    @staticmethod
    def _check(handle: _Handle) -> None:
        device = handle.device
        if not device.present or device.replugs != handle.session:
            raise usb_error(errno.ENODEV)

    def open_device(self, dev):
        if not dev.present:
            raise usb_error(errno.ENODEV)
        if dev.spec.permission_denied:
            raise usb_error(errno.EACCES)
        self.open_handles += 1
        return _Handle(dev)

    def close_device(self, dev_handle):
        self.open_handles -= 1

    def set_configuration(self, dev_handle, config_value):
        self._check(dev_handle)

    def get_configuration(self, dev_handle):
        self._check(dev_handle)
        return 1

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        self._check(dev_handle)

    def claim_interface(self, dev_handle, intf):
        self._check(dev_handle)
        if dev_handle.device.kernel_driver:
            raise usb_error(errno.EBUSY)
        dev_handle.claimed.add(intf)
        self.claims.append(intf)

    def release_interface(self, dev_handle, intf):
        dev_handle.claimed.discard(intf)
        self.releases.append(intf)
        self._check(dev_handle)

    def is_kernel_driver_active(self, dev_handle, intf):
        self._check(dev_handle)
        return dev_handle.device.kernel_driver

    def detach_kernel_driver(self, dev_handle, intf):
        self._check(dev_handle)
        dev_handle.device.detach_driver()

    def attach_kernel_driver(self, dev_handle, intf):
        self._check(dev_handle)
        dev_handle.device.attach_driver()

    def clear_halt(self, dev_handle, ep):
        self._check(dev_handle)

    def reset_device(self, dev_handle):
        self._check(dev_handle)

    # transfers --------------------------------------------------------------------
    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        self._check(dev_handle)
        address, length = data.buffer_info()
        length *= data.itemsize
        out = bytes(data) if not bmRequestType & 0x80 else b""
        try:
            answer = dev_handle.device.control(bmRequestType, bRequest, wValue, wIndex, length, out)
        except Stall:
            raise usb_error(errno.EPIPE) from None
        except DeviceGone:
            raise usb_error(errno.ENODEV) from None
        if bmRequestType & 0x80:
            ctypes.memmove(address, answer, len(answer))
            return len(answer)
        return length

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        if self.record_buffers:
            self.read_buffers.add(id(buff))
        self.reads += 1
        device = dev_handle.device
        if device.replugs != dev_handle.session:
            raise usb_error(errno.ENODEV)
        address, length = buff.buffer_info()
        length *= buff.itemsize
        deadline = time.monotonic() + (timeout / 1000.0 if timeout else 3600.0)
        while True:
            try:
                filled = device.fill(address, length)
            except DeviceGone:
                raise usb_error(errno.ENODEV) from None
            if filled:
                return filled
            # Nothing ready: block as libusb does, until data may come or the timeout passes.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise usb_error(errno.ETIMEDOUT)
            time.sleep(min(remaining, device.quiet_for()))

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        self._check(dev_handle)
        return len(data) * data.itemsize
