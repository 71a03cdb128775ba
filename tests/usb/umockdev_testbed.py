#!/usr/bin/python3
"""A umockdev test bed serving the simulated USB device to real libusb in another process.

Run with Debian's python3 (it has ``gi``; needs the packages umockdev, gir1.2-umockdev-1.0,
python3-gi):

    /usr/bin/python3 tests/usb/umockdev_testbed.py PATH/TO/instrument/usbsim.py SPEC.json TAPE.bin

It prints ``root <dir>`` once the device is plugged in, then one line per event
(``event unplug``, ``event replug <address>``, ``event start``, ...), and exits when its
stdin closes. A process started with ``LD_PRELOAD=libumockdev-preload.so.0 UMOCKDEV_DIR=<dir>``
then sees the device in /sys and /dev, and every usbdevfs ioctl libusb makes on it lands in
``on_ioctl`` below. The device's behaviour (descriptors, strings, vendor requests, what it
streams, when it goes quiet or vanishes) is ``instrument/usbsim.py``, loaded by path, the same
one the in-process pyusb backend serves, so both test layers see one device.

What is real here: umockdev's preload library and ioctl channel, and on the other side libusb
and pyusb exactly as they run against a kernel. What is emulated: the kernel's usbdevfs (this
handler answers its ioctls) and the device behind it. Unplug: URBs in flight complete with
ESHUTDOWN and every later ioctl fails with ENODEV, as the kernel reports them, and the device
leaves /sys; replug: it is added to /sys again (at the next address unless the spec says
otherwise). umockdev announces both with uevents in libudev's format only (netlink group 2);
libusb's own netlink monitor (the pip build has no libudev) listens to the kernel's group 1, so
libusb keeps its first device list: the tests replug at the same address, which it re-opens.

Layout of ``struct usbdevfs_urb`` and of umockdev's ``UMockdevIoctlData`` below are for
x86-64 and umockdev 0.17 (checked at start-up against ``client_addr``).
"""
import ctypes
import errno
import importlib.util
import os
import struct
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev


def _ioc(direction, nr, size):
    return (direction << 30) | (size << 16) | (ord("U") << 8) | nr


# usbdevfs requests (linux/usbdevice_fs.h), x86-64 sizes
SETINTERFACE, SETCONFIGURATION = _ioc(2, 4, 8), _ioc(2, 5, 4)
GETDRIVER = _ioc(1, 8, 260)
SUBMITURB, DISCARDURB = _ioc(2, 10, 56), _ioc(0, 11, 0)
REAPURB, REAPURBNDELAY = _ioc(1, 12, 8), _ioc(1, 13, 8)
CLAIMINTERFACE, RELEASEINTERFACE = _ioc(2, 15, 4), _ioc(2, 16, 4)
IOCTL = _ioc(3, 18, 16)
RESET, CLEAR_HALT = _ioc(0, 20, 0), _ioc(2, 21, 4)
DISCONNECT, CONNECT = _ioc(0, 22, 0), _ioc(0, 23, 0)
GET_CAPABILITIES = _ioc(2, 26, 4)
RESETEP = _ioc(2, 3, 4)
CAPS = 0x01 | 0x02 | 0x04 | 0x10   # ZERO_PACKET, BULK_CONTINUATION, NO_PACKET_SIZE_LIM, REAP_AFTER_DISCONNECT

URB_TYPE_CONTROL, URB_TYPE_BULK = 2, 3
URB_SIZE, URB_STATUS, URB_BUFFER, URB_BUFLEN, URB_ACTUAL = 56, 4, 16, 24, 28

# UMockdevIoctlData: GObject (24 bytes), then guint8 *data, gint data_length1, gulong client_addr.
# PyGObject returns .data cut at the first NUL byte, so the resolved copy is used through ctypes.
_DATA, _LENGTH, _CLIENT = 24, 32, 40


def _raw(d):
    base = hash(d)  # PyGObject hashes a GObject by its C address
    return ctypes.c_void_p.from_address(base + _DATA).value, ctypes.c_int.from_address(base + _LENGTH).value


def _read(d):
    p, n = _raw(d)
    return ctypes.string_at(p, n)


def _write(d, offset, data):
    p, n = _raw(d)
    assert offset + len(data) <= n, (offset, len(data), n)
    ctypes.memmove(p + offset, data, len(data))


def _check_layout(d):
    if ctypes.c_ulong.from_address(hash(d) + _CLIENT).value != d.client_addr:
        sys.exit("umockdev_testbed: UMockdevIoctlData layout differs from umockdev 0.17 on x86-64")


def _say(line):
    print(line, flush=True)


class Bed:
    def __init__(self, usbsim, spec, tape):
        self.usbsim = usbsim
        self.spec = spec
        self.device = usbsim.UsbDeviceBehaviour(spec, tape)
        self.testbed = UMockdev.Testbed.new()
        self.sysfs = None
        self.node = None
        self.flying = []       # IoctlData of submitted URBs, oldest first
        self.cancelled = []    # discarded URBs, to be reaped with -ENOENT
        self.handlers = []     # keep the handler objects alive
        self.layout_checked = False
        self._events_seen = 0
        self.plug()

    # ---- plugging ----------------------------------------------------------------------
    def plug(self):
        spec, address = self.spec, self.device.address
        node = f"bus/usb/{spec.bus:03d}/{address:03d}"
        handler = UMockdev.IoctlBase()
        handler.connect("handle-ioctl", self.on_ioctl)
        self.handlers.append(handler)
        if self.node != "/dev/" + node:                  # a new address: a new node, its own handler
            self.node = "/dev/" + node
            self.testbed.attach_ioctl(self.node, handler)   # before the device appears
        descriptors = (spec.device_descriptor() + spec.config_descriptor()).hex()
        path = f"/devices/pci0000:00/0000:00:14.0/usb{spec.bus}/{spec.sysfs_name}"
        added = self.testbed.add_from_string(
            f"P: {path}\n"
            f"N: {node}\n"
            "E: SUBSYSTEM=usb\nE: DRIVER=usb\nE: DEVTYPE=usb_device\n"
            f"E: BUSNUM={spec.bus:03d}\nE: DEVNUM={address:03d}\nE: DEVNAME=/dev/{node}\n"
            f"E: PRODUCT={spec.vid:x}/{spec.pid:x}/100\n"
            f"A: idVendor={spec.vid:04x}\\n\nA: idProduct={spec.pid:04x}\\n\n"
            f"A: busnum={spec.bus}\\n\nA: devnum={address}\\n\nA: devpath={spec.port}\\n\n"
            "A: speed=480\\n\nA: bConfigurationValue=1\\n\nA: bNumConfigurations=1\\n\n"
            + (f"A: manufacturer={spec.manufacturer}\\n\nA: product={spec.product}\\n\n"
               if spec.sysfs_strings else "")
            + (f"A: serial={spec.serial}\\n\n" if spec.serial and spec.sysfs_strings else "")
            + f"H: descriptors={descriptors}\n")
        if not added:
            sys.exit("umockdev_testbed: could not add the device to the test bed")
        self.sysfs = "/sys" + path

    def unplug_now(self):
        """The device has vanished: leave /sys (its ioctls already fail with ENODEV), come back later."""
        if self.sysfs is None:
            return False
        # No "remove" uevent: umockdev sends uevents in udev's format (netlink group 2), which
        # libusb's own netlink monitor (kernel group 1, the pip build has no libudev) ignores.
        self.testbed.remove_device(self.sysfs)
        self.sysfs = None
        _say("event unplug")
        GLib.timeout_add(int(self.spec.replug_after_s * 1000), self.replug)
        return False

    def replug(self):
        self.device.replug()
        self.flying.clear()
        self.cancelled.clear()
        self.plug()
        _say(f"event replug {self.device.address}")
        return False

    def report_events(self):
        events = self.device.events
        while self._events_seen < len(events):
            event = events[self._events_seen]
            self._events_seen += 1
            if event == "unplug":
                GLib.timeout_add(0, self.unplug_now)   # leave /sys once this ioctl is answered
            elif event != "replug":
                _say(f"event {event}")

    # ---- usbdevfs --------------------------------------------------------------------
    def on_ioctl(self, _handler, client):
        try:
            handled = self._ioctl(client)
        except Exception as exc:  # never let an exception escape into GLib: fail the ioctl
            print(f"umockdev_testbed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            client.complete(-1, errno.EIO)
            handled = True
        self.report_events()
        return handled

    def _ioctl(self, client):
        req, arg = client.get_request(), client.get_arg()
        device = self.device
        if req == GET_CAPABILITIES:
            _write(arg.resolve(0, 4), 0, struct.pack("<I", CAPS))
            client.complete(0, 0)
        elif req in (CLAIMINTERFACE, SETINTERFACE, SETCONFIGURATION, CLEAR_HALT, RESET, RESETEP):
            if not device.present:
                client.complete(-1, errno.ENODEV)
            elif req == CLAIMINTERFACE and device.kernel_driver:
                client.complete(-1, errno.EBUSY)
            else:
                client.complete(0, 0)
        elif req == RELEASEINTERFACE:
            client.complete(0, 0) if device.present else client.complete(-1, errno.ENODEV)
        elif req == GETDRIVER:                       # struct usbdevfs_getdriver {u32 interface; char driver[256]}
            if device.kernel_driver:
                _write(arg.resolve(0, 260), 4, b"ionsim\0")
                client.complete(0, 0)
            else:
                client.complete(-1, errno.ENODATA)
        elif req == IOCTL:                           # struct usbdevfs_ioctl {int ifno; int ioctl_code; void *data}
            code = struct.unpack_from("<ii", _read(arg.resolve(0, 16)))[1]
            if code == DISCONNECT and device.kernel_driver:
                device.detach_driver()
                client.complete(0, 0)
            elif code == DISCONNECT:
                client.complete(-1, errno.ENODATA)
            elif code == CONNECT:
                device.attach_driver()
                client.complete(1, 0)                # the kernel returns 1: a driver was bound
            else:
                return False
        elif req == SUBMITURB:
            if not device.present:
                client.complete(-1, errno.ENODEV)
                return True
            urb = arg.resolve(0, URB_SIZE)
            if not self.layout_checked:
                _check_layout(urb)
                self.layout_checked = True
            self.flying.append(urb)
            client.complete(0, 0)
        elif req in (REAPURB, REAPURBNDELAY):
            urb = self._reap()
            if urb is None:
                client.complete(-1, errno.EAGAIN if device.present else errno.ENODEV)
            else:
                arg.resolve(0, 8).set_ptr(0, urb)   # hand the finished URB back to libusb
                client.complete(0, 0)
        elif req == DISCARDURB:
            target = struct.unpack("<Q", _read(arg)[:8])[0]   # the ioctl argument is the URB pointer
            for urb in self.flying:
                if urb.client_addr == target:
                    self.flying.remove(urb)
                    self.cancelled.append(urb)
                    client.complete(0, 0)
                    break
            else:
                client.complete(-1, errno.EINVAL)
        else:
            print(f"umockdev_testbed: unhandled ioctl 0x{req:08x}", file=sys.stderr, flush=True)
            return False
        return True

    def _finish(self, urb, status, actual):
        head = bytearray(_read(urb)[:URB_SIZE])
        struct.pack_into("<i", head, URB_STATUS, status)
        struct.pack_into("<i", head, URB_ACTUAL, actual)
        _write(urb, 0, bytes(head))
        return urb

    def _reap(self):
        """The next URB that is complete, or None (nothing ready yet)."""
        if self.cancelled:
            return self._finish(self.cancelled.pop(0), -errno.ENOENT, 0)
        device = self.device
        for urb in self.flying:
            head = _read(urb)
            kind, endpoint = head[0], head[1]
            length = struct.unpack_from("<i", head, URB_BUFLEN)[0]
            if not device.present:
                self.flying.remove(urb)
                return self._finish(urb, -errno.ESHUTDOWN, 0)
            if kind == URB_TYPE_CONTROL:
                self.flying.remove(urb)
                return self._control(urb, length)
            if kind == URB_TYPE_BULK and endpoint & 0x80:
                buf = urb.resolve(URB_BUFFER, length)
                try:
                    n = device.fill(_raw(buf)[0], length)
                except self.usbsim.DeviceGone:
                    self.flying.remove(urb)
                    return self._finish(urb, -errno.ESHUTDOWN, 0)
                if not n:
                    continue                     # nothing ready: stays in flight
                self.flying.remove(urb)
                return self._finish(urb, 0, n)
            if kind == URB_TYPE_BULK:            # OUT: accept everything
                self.flying.remove(urb)
                return self._finish(urb, 0, length)
        return None

    def _control(self, urb, length):
        buf = urb.resolve(URB_BUFFER, length)
        data = _read(buf)
        bm, breq, wvalue, windex, wlength = struct.unpack_from("<BBHHH", data)
        try:
            answer = self.device.control(bm, breq, wvalue, windex, wlength, data[8:8 + wlength])
        except self.usbsim.Stall:
            return self._finish(urb, -errno.EPIPE, 0)
        except self.usbsim.DeviceGone:
            return self._finish(urb, -errno.ESHUTDOWN, 0)
        if bm & 0x80:
            _write(buf, 8, answer)
            return self._finish(urb, 0, len(answer))
        return self._finish(urb, 0, wlength)


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    usbsim_path, spec_path, tape_path = argv[1:]
    module_spec = importlib.util.spec_from_file_location("usbsim", usbsim_path)
    usbsim = importlib.util.module_from_spec(module_spec)
    sys.modules["usbsim"] = usbsim   # dataclasses look their module up there
    module_spec.loader.exec_module(usbsim)
    with open(spec_path) as f:
        spec = usbsim.UsbDeviceSpec.from_json(f.read())
    with open(tape_path, "rb") as f:
        tape = f.read()
    bed = Bed(usbsim, spec, tape)
    loop = GLib.MainLoop()

    def on_stdin(fd, _condition):
        line = os.read(fd, 4096)
        if not line:
            loop.quit()
            return False
        for command in line.decode().split():
            if command == "unplug":
                bed.device.unplug()
                bed.report_events()
            elif command == "quit":
                loop.quit()
        return True

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
    _say(f"root {bed.testbed.get_root_dir()}")
    loop.run()


if __name__ == "__main__":
    main(sys.argv)
