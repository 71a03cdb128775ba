"""USB helpers shared by the USB source and ``ionstream devices``: the libusb backend, device
selection, what a device says about itself, and the udev rule that grants access.

    backend = libusb_backend()          # libusb from pip (libusb-package), else the system's
    for info in list_devices(backend):  # DeviceInfo: VID:PID, bus/address/port, strings
        print(info.vid_pid, info.suggested_url)
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("ionstream.usb")

UDEV_RULE_FILE = "/etc/udev/rules.d/70-ionstream.rules"
SYSFS_USB = "/sys/bus/usb/devices"

_backend_cache: tuple[Any, str] | None = None


class NoLibusb(RuntimeError):
    """No libusb could be loaded (neither libusb-package's nor a system one)."""


def libusb_backend() -> tuple[Any, str]:
    """pyusb's libusb-1.0 backend and a description of which library it loaded.

    Prefers the libusb that the ``libusb-package`` wheel ships (no system package needed),
    falls back to a system libusb-1.0, and logs which one it used (once per process).
    Raises NoLibusb when neither loads.
    """
    global _backend_cache
    if _backend_cache is not None:
        return _backend_cache
    import usb.backend.libusb1

    backend, where = None, ""
    try:
        import libusb_package

        backend = libusb_package.get_libusb1_backend()
        if backend is not None:
            where = f"libusb-package {getattr(libusb_package, '__version__', '?')} ({backend.lib._name})"
    except ImportError:
        pass
    if backend is None:
        backend = usb.backend.libusb1.get_backend()
        if backend is not None:
            where = f"system libusb ({backend.lib._name})"
    if backend is None:
        raise NoLibusb("no libusb-1.0 found: `pip install libusb-package` (an ionstream dependency) "
                       "or install the system package (Debian: libusb-1.0-0)")
    version = _libusb_version(backend)
    description = f"libusb {version} from {where}" if version else f"libusb from {where}"
    log.info("USB: using %s", description)
    _backend_cache = (backend, description)
    return _backend_cache


def _libusb_version(backend: Any) -> str:
    import ctypes

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint16), ("minor", ctypes.c_uint16), ("micro", ctypes.c_uint16),
                    ("nano", ctypes.c_uint16), ("rc", ctypes.c_char_p), ("describe", ctypes.c_char_p)]

    try:
        get_version = backend.lib.libusb_get_version
        get_version.restype = ctypes.POINTER(Version)
        v = get_version().contents
        return f"{v.major}.{v.minor}.{v.micro}"
    except (AttributeError, ValueError, OSError):
        return ""


def udev_rule(vid: int | None = None, pid: int | None = None) -> str:
    """The udev rule line that gives the ``ionstream`` group read/write access to the device."""
    vid_text = f"{vid:04x}" if vid is not None else "VVVV"
    pid_text = f"{pid:04x}" if pid is not None else "PPPP"
    return (f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vid_text}", ATTR{{idProduct}}=="{pid_text}", '
            'GROUP="ionstream", MODE="0660"')


def permission_hint(vid: int | None, pid: int | None) -> str:
    return (f"install the udev rule from docs/operations.md (\"USB bulk devices\") as {UDEV_RULE_FILE}:\n"
            f"    {udev_rule(vid, pid)}\n"
            "then `udevadm control --reload && udevadm trigger`, add the daemon's user to the "
            "'ionstream' group and re-plug the device")


# ---- what a device says about itself --------------------------------------------------------

@dataclass
class DeviceInfo:
    """One USB device as enumerated (no I/O beyond reading its strings)."""

    vid: int
    pid: int
    bus: int | None
    address: int | None
    ports: tuple[int, ...] = ()
    device_class: int = 0
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    strings_error: str | None = None      # why the strings could not be read (e.g. permission)
    bulk_in: list[int] = field(default_factory=list)   # bulk IN endpoint addresses of configuration 1
    suggested_url: str = ""

    @property
    def vid_pid(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"

    @property
    def port_path(self) -> str:
        return ".".join(str(p) for p in self.ports)

    @property
    def is_hub(self) -> bool:
        return self.device_class == 9

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vid_pid"] = self.vid_pid
        d["ports"] = self.port_path
        d["bulk_in"] = [f"0x{ep:02x}" for ep in self.bulk_in]
        return d


def _sysfs_strings(bus: int | None, ports: tuple[int, ...]) -> dict[str, str]:
    """manufacturer/product/serial from sysfs (Linux; needs no permission on the device node)."""
    if bus is None or not ports:
        return {}
    base = os.path.join(SYSFS_USB, f"{bus}-{'.'.join(str(p) for p in ports)}")
    out = {}
    for name in ("manufacturer", "product", "serial"):
        try:
            with open(os.path.join(base, name), encoding="utf-8", errors="replace") as f:
                out[name] = f.read().strip()
        except OSError:
            pass
    return out


def read_strings(dev: Any, *, sysfs: bool = True) -> tuple[dict[str, str | None], str | None]:
    """(manufacturer/product/serial, error) for a pyusb device.

    With ``sysfs`` (Linux, a real backend) reads /sys first, which needs no permission on the
    device node; then the string descriptors, which opens the device. The error says why the
    descriptors could not be read (no permission, unplugged, ...).
    """
    import usb.core
    import usb.util

    strings: dict[str, str | None] = {"manufacturer": None, "product": None, "serial": None}
    if sysfs:
        strings.update(_sysfs_strings(dev.bus, tuple(dev.port_numbers or ())))
    wanted = {"manufacturer": dev.iManufacturer, "product": dev.iProduct, "serial": dev.iSerialNumber}
    missing = {key: index for key, index in wanted.items() if index and strings[key] is None}
    if not missing:
        return strings, None
    error = None
    try:
        langids = usb.util.get_langids(dev)   # raises USBError (EACCES) where Device.langids would hide it
        if langids:
            for key, index in missing.items():
                strings[key] = usb.util.get_string(dev, index, langids[0])
    except usb.core.USBError as exc:
        error = _describe_usb_error(exc)
    except (ValueError, NotImplementedError, UnicodeDecodeError) as exc:
        error = str(exc)
    finally:
        _dispose(dev)
    return strings, error


def _dispose(dev: Any) -> None:
    import usb.core
    import usb.util

    try:
        usb.util.dispose_resources(dev)
    except usb.core.USBError:
        pass


def _describe_usb_error(exc: Exception) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.EACCES:
        return "no permission to open it"
    if code == errno.ENODEV:
        return "it was unplugged"
    if code == errno.EBUSY:
        return "another program has claimed it"
    return str(exc)


def bulk_in_endpoints(dev: Any) -> list[int]:
    """Bulk IN endpoint addresses of the device's first configuration (from cached descriptors)."""
    import usb.core
    import usb.util

    try:
        config = dev[0]
    except (IndexError, usb.core.USBError):  # no readable configuration
        return []
    found = []
    for intf in config:
        for ep in intf:
            if (usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
                    and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK):
                found.append(ep.bEndpointAddress)
    return found


def uses_sysfs(backend: Any) -> bool:
    """Whether /sys describes the backend's devices (not for a simulated backend, whose bus-port
    names may belong to a real device)."""
    return not getattr(backend, "simulated", False)


def describe_device(dev: Any, *, strings: bool = True, sysfs: bool = True) -> DeviceInfo:
    info = DeviceInfo(vid=dev.idVendor, pid=dev.idProduct, bus=dev.bus, address=dev.address,
                      ports=tuple(dev.port_numbers or ()), device_class=dev.bDeviceClass)
    if strings:
        values, info.strings_error = read_strings(dev, sysfs=sysfs)
        info.manufacturer, info.product, info.serial = values["manufacturer"], values["product"], values["serial"]
    info.bulk_in = bulk_in_endpoints(dev)
    return info


def list_devices(backend: Any = None, *, strings: bool = True) -> list[DeviceInfo]:
    """Every USB device the backend sees, with a suggested ``usb://`` URL for each."""
    import usb.core

    if backend is None:
        backend, _ = libusb_backend()
    sysfs = uses_sysfs(backend)
    infos = [describe_device(dev, strings=strings, sysfs=sysfs)
             for dev in usb.core.find(find_all=True, backend=backend)]
    for info in infos:
        info.suggested_url = suggest_url(info, infos)
    return infos


def suggest_url(info: DeviceInfo, all_devices: list[DeviceInfo]) -> str:
    """The shortest URL that picks ``info`` out of ``all_devices`` and survives a re-plug if it can."""
    query = ""
    if info.bulk_in and info.bulk_in[0] != 0x81:
        query = f"ep=0x{info.bulk_in[0]:02x}"
    if info.serial:   # unique, and it finds the device again wherever it is re-plugged
        return f"usb://{info.vid_pid}?serial={info.serial}" + ("&" + query if query else "")
    same = [d for d in all_devices if (d.vid, d.pid) == (info.vid, info.pid)]
    if len(same) == 1:
        return f"usb://{info.vid_pid}" + ("?" + query if query else "")
    if info.ports:   # identical devices without serial numbers: pick by physical port (survives re-plug)
        return f"usb://bus={info.bus},port={info.port_path}" + ("?" + query if query else "")
    return f"usb://bus={info.bus},address={info.address}" + ("?" + query if query else "")
