"""Byte sources: sim://, serial://, tcp://, replay://, usb:// (see instrument.sources.open_source)."""
