"""The live image builder (ionstream/daemon/images.py) on real frames, real DSP and the real wire codec."""
import numpy as np
import pytest

from instrument.frames import FrameDecoder, FrameType
from instrument.imaging import PixelPosition, Raster, position_of
from instrument.simulator import SimConfig, Simulator
from ionstream.client import wire
from ionstream.daemon.images import LiveImages
from ionstream.processing import ScanWork

N = 1024


def test_images_fill_pixel_by_pixel_with_the_dsp_values_and_travel_on_the_wire():
    sim = Simulator(SimConfig(n_samples=N, imaging="16x16", seed=2, status_interval_s=0))
    work = ScanWork(dsp_params={"smoothing": "savgol", "min_snr": 3.0}, xic_windows=[(400.0, 700.0)])
    images = LiveImages(["tic", "xic:400-700"], interval_s=1e9)  # due only at row ends and at the end
    dec = FrameDecoder()
    expected = np.full((2, 16, 16), np.nan, np.float32)
    due = []
    for k in range(256):
        frame, _ = next(sim)
        for f in dec.feed(frame):
            assert f.header.frame_type == FrameType.SCAN
            pos = position_of(f.raw, f.header.header_size)
            scan = work.process(f.header, f.samples(), f.mz_axis())
            expected[:, pos.y, pos.x] = [scan.tic, scan.xic[0]]
            if images.update(pos, scan.tic, scan.xic, now_s=float(k)):
                header, buffers = images.message(now_s=float(k))
                due.append((k, header["filled"], header["complete"]))
    # the first pixel (nothing sent yet), then each finished row, then the complete raster
    assert due[0] == (0, 1, False)
    assert [d[1] for d in due[1:-1]] == [16 * r + 1 for r in range(1, 16)]
    assert due[-1] == (255, 256, True)
    frames = wire.encode("image", header, buffers)
    msg = wire.decode(frames)
    got = msg.arrays["images"]
    assert got.shape == (2, 16, 16) and np.array_equal(got, expected)
    assert msg.header["raster"]["width"] == 16 and msg.header["names"] == ["tic", "xic:400-700"]


def test_unscanned_pixels_are_nan_and_a_new_raster_starts_afresh():
    images = LiveImages(["tic"])
    r = Raster(4, 3, 5.0, 5.0)
    assert images.update(PixelPosition(1, 1, r), 10.0, [], now_s=0.0)
    header, buf = images.message(now_s=0.0)
    assert header["filled"] == 1 and np.isnan(buf["images"]).sum() == 11 and buf["images"][0, 1, 1] == 10.0
    assert not images.update(PixelPosition(2, 1, r), 5.0, [], now_s=0.1)  # same row, interval not over
    assert images.update(PixelPosition(3, 1, r), 5.0, [], now_s=0.6)      # interval over
    images.update(PixelPosition(0, 0, Raster(8, 8)), 1.0, [], now_s=0.7)
    header, buf = images.message()
    assert header["filled"] == 1 and buf["images"].shape == (1, 8, 8)
    assert not images.update(None, 1.0, [], now_s=5.0)  # an ordinary scan changes nothing


def test_raises_before_any_pixel():
    with pytest.raises(ValueError, match="no pixel has arrived"):
        LiveImages(["tic"]).message()
