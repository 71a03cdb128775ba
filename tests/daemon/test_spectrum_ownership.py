"""Who owns the memory a zero-copy message points at (issue 14 item 1).

The `spectrum` topic of an explicit-axis capture (what `ionstream import` makes of an mzML file)
through the real pipeline: a replay, a 4-slot ring, DSP, the publisher and a real ZeroMQ
subscriber that reads nothing until the replay has ended. Every message it then receives must
carry its own frame's m/z axis, although the ring has been rewritten many times meanwhile.
And the publisher's guard: an array sent without ``release`` that views someone else's
writable memory is copied, never sent zero-copy.
"""

import numpy as np
import pytest
import zmq

from instrument.capture import CaptureWriter
from instrument.frames import encode_scan
from ionstream import Subscriber
from ionstream.config import Config
from ionstream.daemon.buffers import BufferPool, owns_its_memory
from ionstream.daemon.publisher import Publisher
from support import free_port, wait_until

N_SAMPLES = 16384   # a 128 KiB m/z axis: above the 64 KiB zero-copy threshold
N_FRAMES = 300      # ~58 MB of spectra: far more than the kernel's socket buffers hold
T0 = 1_700_000_000_000_000_000


def _axis(scan: int) -> np.ndarray:
    return np.linspace(100.0 + scan, 1000.0 + scan, N_SAMPLES)


def _capture(path) -> None:
    """Explicit-axis frames as ionstream.offline.mzml_import.import_mzml writes them: float32 samples on an
    own float64 m/z axis, each frame's axis different."""
    x = np.linspace(0.0, 1.0, N_SAMPLES)
    with CaptureWriter(path, {"source": {"url": "test://explicit", "kind": "test"}}) as w:
        for scan in range(N_FRAMES):
            samples = (100 + 5000 * np.exp(-0.5 * ((x - 0.3) / 0.002) ** 2)).astype(np.float32)
            w.append(encode_scan(samples, sequence=scan, scan_number=scan, device_time_ns=scan * 10**6,
                                 mz_axis=_axis(scan)), T0 + scan)


def _config(capture, endpoint: str) -> Config:
    config = Config()
    config.source.url = f"replay://{capture}?speed=max"
    config.ring.slots = 4
    config.ring.max_samples = N_SAMPLES
    config.ring.slot_bytes = 1 << 18  # an explicit-axis float32 frame: 12 bytes a sample
    config.dsp.workers = 1
    config.inference.backend = "none"
    config.publish.endpoint = endpoint
    config.publish.control = ""
    config.publish.spectrum = True
    config.publish.hwm = 2 * N_FRAMES  # ZeroMQ keeps every message for the stuck subscriber
    config.publish.queue = 2 * N_FRAMES
    return config


def test_explicit_axis_spectra_keep_their_axis_behind_a_stuck_subscriber(tmp_path):
    from ionstream.daemon.pipeline import Pipeline

    capture = tmp_path / "imported.isc"
    _capture(capture)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pipeline = Pipeline(_config(capture, endpoint))
    pipeline.start(acquire=False)
    try:
        with Subscriber(endpoint, topics=["spectrum"], timeout=30.0) as sub:
            sub.socket.setsockopt(zmq.RCVHWM, 2 * N_FRAMES)
            assert wait_until(lambda: (sub.socket.poll(5),
                                       pipeline.publisher.wait_for_subscribers(1, "spectrum", 0.005))[1], timeout=60.0)
            pipeline.start_acquisition()
            # Stuck: nothing is read until every scan has been processed and published, so the
            # ring (4 slots) has been rewritten ~75 times while the messages wait in ZeroMQ.
            assert wait_until(pipeline.finished, timeout=60.0)
            assert wait_until(lambda: pipeline.publisher.stats()["pub_queue_depth"] == 0, timeout=60.0)
            received = [sub.recv() for _ in range(N_FRAMES)]
    finally:
        pipeline.stop(drain_timeout_s=5.0)
    assert [m.scan for m in received] == list(range(N_FRAMES))
    for message in received:
        np.testing.assert_array_equal(message["mz"], _axis(message.scan),
                                      err_msg=f"scan {message.scan}: its m/z axis was overwritten")
    pool = pipeline.spectrum_pool
    assert pool.in_use == 0 and pool.companion(np.float64).in_use == 0  # every buffer came back


class TestOwnsItsMemory:
    def test_fresh_and_read_only_memory_is_owned(self):
        fresh = np.zeros(10)
        frozen = np.zeros(10)
        frozen.flags.writeable = False
        assert owns_its_memory(fresh) and owns_its_memory(frozen) and owns_its_memory(frozen[2:5])
        assert owns_its_memory(np.frombuffer(b"\0" * 80, np.float64))

    def test_views_of_writable_memory_are_not(self):
        slot = np.zeros(1024, np.uint8)
        assert not owns_its_memory(slot[16:528].view("<f8"))
        assert not owns_its_memory(np.frombuffer(bytearray(80), np.float64))
        view = np.zeros(10)[2:]
        view.flags.writeable = False  # read-only here, but its owner can still write it
        assert not owns_its_memory(view)


def test_publisher_copies_a_view_sent_without_release():
    """A ring slot's bytes published without release: what the subscriber gets is what was
    there at publish() time, even though the slot is rewritten before ZeroMQ sends it."""
    slot = np.zeros(1 << 18, np.uint8)
    mz_view = slot[80:80 + 8 * N_SAMPLES].view("<f8")
    intensity = np.ones(N_SAMPLES, np.float32)  # owned: goes zero-copy
    with Publisher("tcp://127.0.0.1:*", source="test://") as pub:
        with Subscriber(pub.endpoint, topics=["spectrum"], timeout=10.0) as sub:
            assert wait_until(lambda: (sub.socket.poll(5), pub.wait_for_subscribers(1, "spectrum", 0.005))[1], timeout=60.0)
            for scan in range(20):
                mz_view[:] = _axis(scan)
                assert pub.publish("spectrum", {"scan": scan}, [mz_view, intensity])
            mz_view[:] = -1.0  # the producer reuses the slot at once
            received = [sub.recv() for _ in range(20)]
        stats = pub.stats()
    for message in received:
        np.testing.assert_array_equal(message["mz"], _axis(message.scan))
    assert stats["pub_guard_copies"] == 20
    assert stats["pub_zero_copy_arrays"] == 20  # the owned intensity array still went zero-copy


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pool_companion_is_shared_and_reused_last_in_first_out(dtype):
    pool = BufferPool(64, np.float32, count=3)
    companion = pool.companion(dtype)
    assert companion is pool.companion(dtype) and companion.dtype == np.dtype(dtype)
    assert companion.shape == pool.shape and companion.count == pool.count
    a, release_a = pool.acquire()
    release_a()
    b, release_b = pool.acquire()
    assert b is a  # the buffer just returned: the others are never touched
    release_b()
