"""Live ion images: the daemon's image builder for the `image` topic (docs/wire.md).

The sequencer hands every scan, in order, with its pixel position (read from the ring slot's
frame: :func:`instrument.imaging.position_of`) and the TIC and XIC values the DSP already
computed (counts, baseline removed); :class:`LiveImages` puts them in place and says when an
`image` message is due::

    images = LiveImages(["tic", "xic:760.5-760.7"])
    if images.update(position, scan.tic, scan.xic, now_s):
        header, buffers = images.message()
        publisher.publish("image", {**times, **header}, buffers)

Message (topic ``image``): header fields ``raster`` (width, height, pixel_size_x_um,
pixel_size_y_um), ``z``, ``region``, ``names`` (one per image: ``tic`` then each XIC window),
``filled`` (pixels with a value), ``pixels`` (width x height), ``last`` ([x, y] of the newest
pixel), ``complete`` (every pixel has a value); one buffer ``images``: float32, shape
(len(names), height, width), row 0 at the top, NaN where no scan has landed yet.

When it is due: when a row of the raster is finished, when the raster is complete, and
otherwise at most every ``interval_s`` (host time) while pixels keep coming -- a 256 x 256
raster of 3 images is 786 kB, so the wire sees a few such messages per second at most. A scan
of another raster (size, pixel size, plane or region) starts new images.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from instrument.imaging import PixelPosition, Raster

DEFAULT_INTERVAL_S = 0.5


class LiveImages:
    """Ion images filled pixel by pixel, in scan order. Owned by one thread (the sequencer)."""

    def __init__(self, names: list[str], interval_s: float = DEFAULT_INTERVAL_S):
        if not names:
            raise ValueError("LiveImages needs at least one image name (e.g. 'tic')")
        self.names = list(names)
        self.interval_s = float(interval_s)
        self.raster: Raster | None = None
        self.z = self.region = 0
        self._images = np.zeros((len(self.names), 0, 0), np.float32)
        self._filled = np.zeros((0, 0), bool)
        self._count = 0
        self._last: tuple[int, int] = (-1, -1)
        self._last_sent_s: float | None = None

    @property
    def filled(self) -> int:
        return self._count

    def _start(self, pos: PixelPosition) -> None:
        r = pos.raster
        self.raster, self.z, self.region = r, pos.z, pos.region
        self._images = np.full((len(self.names), r.height, r.width), np.nan, np.float32)
        self._filled = np.zeros((r.height, r.width), bool)
        self._count = 0
        self._last = (-1, -1)

    def update(self, pos: PixelPosition | None, tic: float, xic, now_s: float) -> bool:
        """Put one scan's values (``tic``, then ``xic``: one per window, counts) at ``pos``;
        ``now_s``: host time, s (monotonic). True when an `image` message is due now. A scan
        without a position (None) changes nothing."""
        if pos is None:
            return False
        if (pos.raster != self.raster or pos.z != self.z or pos.region != self.region):
            self._start(pos)
        values = self._images[:, pos.y, pos.x]
        values[0] = tic
        values[1:] = np.asarray(xic, np.float32)[: len(self.names) - 1]
        if not self._filled[pos.y, pos.x]:
            self._filled[pos.y, pos.x] = True
            self._count += 1
        row_done = self._last[1] >= 0 and pos.y != self._last[1]
        self._last = (pos.x, pos.y)
        if self._count == self.raster.pixels or row_done:
            return True
        return self._last_sent_s is None or now_s - self._last_sent_s >= self.interval_s

    def message(self, now_s: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(header fields, {"images": array}) of the images as they are now. The array is a copy:
        the publisher may hold it while the builder goes on."""
        r = self.raster
        if r is None:
            raise ValueError("no pixel has arrived yet: nothing to publish")
        if now_s is not None:
            self._last_sent_s = now_s
        header = {"raster": {"width": r.width, "height": r.height, "pixel_size_x_um": r.pixel_size_x_um,
                             "pixel_size_y_um": r.pixel_size_y_um},
                  "z": self.z, "region": self.region, "names": self.names, "filled": self._count,
                  "pixels": r.pixels, "last": list(self._last), "complete": self._count == r.pixels}
        return header, {"images": self._images.copy()}
