"""`ionstream devices`: list serial ports and USB devices, with the source URL for each."""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

HELP = "list serial ports and USB devices, with the source URL to use for each"
DESCRIPTION = (
    "List serial ports (pyserial) and USB devices (pyusb + libusb: VID:PID, manufacturer, "
    "product, serial number, bus/address/port, bulk IN endpoints) and suggest the "
    "source.url for each. Strings of a USB device that cannot be opened come from /sys; "
    "'no permission' means the udev rule in docs/operations.md is missing. USB hubs are "
    "left out unless --all."
)
log = logging.getLogger("ionstream.devices")
BY_ID = "/dev/serial/by-id"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object {serial: [...], usb: [...], libusb: ...}")
    parser.add_argument("--all", action="store_true", help="include USB hubs")


def serial_ports() -> list[dict[str, Any]]:
    """Serial ports with a stable path (/dev/serial/by-id) where udev made one."""
    from serial.tools import list_ports

    by_id: dict[str, str] = {}
    if os.path.isdir(BY_ID):
        for name in sorted(os.listdir(BY_ID)):
            link = os.path.join(BY_ID, name)
            by_id.setdefault(os.path.realpath(link), link)
    ports = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        stable = by_id.get(os.path.realpath(port.device))
        ports.append({
            "device": port.device,
            "stable_path": stable,
            "description": port.description,
            "vid_pid": f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else None,
            "manufacturer": port.manufacturer,
            "product": port.product,
            "serial": port.serial_number,
            "location": port.location,
            "suggested_url": f"serial://{stable or port.device}?baud=921600",
        })
    return ports


def usb_devices(include_hubs: bool = False, backend: Any = None) -> tuple[list[dict[str, Any]], str]:
    """USB devices as dicts, and which libusb listed them (or why none could)."""
    from instrument.usbdev import NoLibusb, libusb_backend, list_devices

    description = "simulated backend" if backend is not None else ""
    try:
        if backend is None:
            backend, description = libusb_backend()
        infos = list_devices(backend)
    except NoLibusb as exc:
        return [], f"unavailable: {exc}"
    return [i.as_dict() for i in infos if include_hubs or not i.is_hub], description


def main(args: argparse.Namespace) -> int:
    ports = serial_ports()
    usb, libusb = usb_devices(include_hubs=args.all)
    if args.json:
        print(json.dumps({"serial": ports, "usb": usb, "libusb": libusb}))
        return 0
    print("Serial ports")
    if not ports:
        print("  none")
    for p in ports:
        extra = ", ".join(x for x in (p["vid_pid"], p["manufacturer"], p["product"],
                                      p["serial"] and f"serial {p['serial']}") if x)
        print(f"  {p['device']}  {p['description']}" + (f"  ({extra})" if extra else ""))
        if p["stable_path"]:
            print(f"      stable path: {p['stable_path']}")
        print(f"      source.url:  {p['suggested_url']}")
    print(f"USB devices ({libusb})")
    if not usb:
        print("  none" + ("" if args.all else " (hubs not shown; --all)"))
    for d in usb:
        names = " ".join(x for x in (d["manufacturer"], d["product"]) if x) or "?"
        serial = f"serial {d['serial']}" if d["serial"] else "no serial number"
        print(f"  {d['vid_pid']}  {names}  {serial}  (bus {d['bus']} address {d['address']}"
              + (f" port {d['ports']}" if d["ports"] else "") + ")")
        if d["strings_error"]:
            print(f"      strings: {d['strings_error']}"
                  + ("; install the udev rule in docs/operations.md" if "permission" in d["strings_error"] else ""))
        print(f"      bulk IN:     {', '.join(d['bulk_in']) or 'none'}")
        if d["bulk_in"]:
            print(f"      source.url:  {d['suggested_url']}")
    return 0
