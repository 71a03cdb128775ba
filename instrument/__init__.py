"""Getting scans in: device frame codec, sources, acquisition thread, ring buffer, capture files, simulator."""
