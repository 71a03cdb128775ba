"""Micro-batcher: Triton dynamic-batching semantics, order, bounded queue, stats, lifecycle.

The semantics tests use a small NumPy backend whose output encodes its input (so order and
content can be checked exactly) and whose latency is controlled; the integration test runs the
shipped model on ONNX Runtime.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference.backend import Backend, BackendError, Pending
from inference.batcher import MicroBatcher
from inference.bundle import load_bundle
from support import wait_until

F = 8


class EchoBackend(Backend):
    """probs = softmax-free echo: output row i = input row i[:C]; records batch sizes and threads."""

    name = "echo"

    def __init__(self, delay_s=0.0, fail_on=None, in_flight=1):
        super().__init__()
        self.input_name, self.output_name, self.n_features, self.n_classes = "features", "probs", F, F
        self.delay_s, self.fail_on = delay_s, fail_on
        self.max_in_flight = in_flight
        self.sizes, self.threads = [], set()
        self.closed_in = None

    def submit(self, batch):
        batch = self.check_batch(batch)
        self.threads.add(threading.get_ident())
        self.sizes.append(len(batch))
        if self.fail_on is not None and np.any(batch[:, 0] == self.fail_on):
            raise RuntimeError("boom")
        if self.delay_s:
            time.sleep(self.delay_s)
        return Pending(batch.copy())

    def close(self):
        self.closed_in = threading.get_ident()
        super().close()


def vec(i):
    v = np.zeros(F, np.float32)
    v[0] = i
    return v


def collect(**kw):
    results, backend = [], kw.pop("backend", None) or EchoBackend()
    b = MicroBatcher(lambda: backend, n_features=F, on_result=results.append, **kw)
    return b, backend, results


class TestMicroBatcher:
    def test_order_and_content(self):
        b, be, res = collect(max_batch=8, max_delay_ms=1.0)
        with b:
            for i in range(1000):
                assert b.submit(i, vec(i))
        assert [r.key for r in res] == list(range(1000))
        assert all(r.probs[0] == r.key and r.index == (0 if r.key == 0 else 0) for r in res)
        assert b.stats()["completed"] == 1000 and b.stats()["dropped"] == 0

    def test_full_batch_goes_at_once(self):
        # max_delay 10 min: a full batch that waited for it would never arrive within the 60 s deadline
        b, be, res = collect(max_batch=4, max_delay_ms=600_000)
        with b:
            for i in range(4):
                b.submit(i, vec(i))
            assert wait_until(lambda: len(res) == 4, timeout=60)
        assert be.sizes == [4]

    def test_partial_batch_waits_max_delay(self):
        b, be, res = collect(max_batch=64, max_delay_ms=50.0)
        with b:
            t0 = time.perf_counter()
            for i in range(3):
                b.submit(i, vec(i))
            while len(res) < 3:
                time.sleep(0.001)
            waited = time.perf_counter() - t0
        assert be.sizes == [3]
        assert waited >= 0.045   # it waited for max_delay (no upper bound: how late is the host's business)
        d = [r.queue_delay_ns / 1e6 for r in res]
        assert d[0] >= 49.0

    def test_zero_delay_sends_what_is_queued(self):
        b, be, res = collect(max_batch=64, max_delay_ms=0.0, backend=EchoBackend(delay_s=0.02))
        with b:
            for i in range(50):
                b.submit(i, vec(i))
                time.sleep(0.002)
        # no waiting for company: the first batch leaves at once (small), later ones take what
        # queued while the backend was busy (bigger than 1), none waits for max_batch
        assert sum(be.sizes) == 50 and be.sizes[0] < 10 and max(be.sizes) > 1 and len(be.sizes) > 2

    def test_backend_owned_by_batcher_thread(self):
        made_in = []

        def factory():
            made_in.append(threading.get_ident())
            return be

        be = EchoBackend()
        b = MicroBatcher(factory, n_features=F, max_batch=4, max_delay_ms=0.5, on_result=lambda r: None)
        b.start()
        b.submit(0, vec(0))
        b.stop()
        assert made_in[0] != threading.get_ident()
        assert be.threads == {made_in[0]} and be.closed_in == made_in[0] and be.closed

    def test_start_raises_factory_error(self):
        def factory():
            raise BackendError("no backend for you")

        b = MicroBatcher(factory, n_features=F)
        with pytest.raises(BackendError, match="no backend for you"):
            b.start()
        assert not b.alive

    def test_bounded_queue_drops_and_counts(self):
        gate, entered = threading.Event(), threading.Event()

        class Slow(EchoBackend):
            def submit(self, batch):
                entered.set()
                gate.wait(5)
                return super().submit(batch)

        b, be, res = collect(max_batch=4, max_delay_ms=0.0, queue_size=8, backend=Slow())
        b.start()
        for i in range(4):
            assert b.submit(i, vec(i), timeout=0)
        assert entered.wait(5)                       # the backend holds one batch; 8 slots remain
        accepted = [b.submit(i, vec(i), timeout=0) for i in range(4, 40)]
        assert accepted.count(True) <= 8
        t0 = time.perf_counter()
        assert b.submit(99, vec(99), timeout=0.05) is False          # waited, then dropped
        assert time.perf_counter() - t0 >= 0.04
        gate.set()
        b.stop()
        st = b.stats()
        assert st["dropped"] == accepted.count(False) + 1
        assert [r.key for r in res] == [0, 1, 2, 3] + [i + 4 for i, ok in enumerate(accepted) if ok]
        assert st["completed"] == len(res) == 4 + accepted.count(True)

    def test_blocking_submit_waits_for_room(self):
        b, be, res = collect(max_batch=4, max_delay_ms=0.0, queue_size=4, backend=EchoBackend(delay_s=0.005))
        with b:
            for i in range(200):
                assert b.submit(i, vec(i))            # timeout=None: waits, never drops
        assert [r.key for r in res] == list(range(200))

    def test_failed_batch_is_delivered_as_errors(self):
        b, be, res = collect(max_batch=4, max_delay_ms=20.0, backend=EchoBackend(fail_on=5))
        with b:
            for i in range(12):
                b.submit(i, vec(i))
        assert [r.key for r in res] == list(range(12))
        bad = [r for r in res if r.error]
        assert [r.key for r in bad] == [4, 5, 6, 7] and all(r.index == -1 and "boom" in r.error for r in bad)
        assert b.stats()["errors"] == 4 and b.stats()["completed"] == 8

    def test_callback_exception_does_not_stop_it(self):
        seen = []

        def cb(r):
            seen.append(r.key)
            if r.key == 3:
                raise ValueError("subscriber bug")

        b = MicroBatcher(lambda: EchoBackend(), n_features=F, max_batch=2, max_delay_ms=0.1, on_result=cb)
        with b:
            for i in range(10):
                b.submit(i, vec(i))
        assert seen == list(range(10))

    def test_results_queue_without_callback(self):
        b = MicroBatcher(lambda: EchoBackend(), n_features=F, max_batch=4, max_delay_ms=0.1, labels="abcdefgh")
        with b:
            b.submit("x", vec(3))
        r = b.results.get(timeout=1)
        assert r.key == "x" and r.index == 0 and r.label == "a" and r.batch_size == 1

    def test_stop_without_drain_drops_queued(self):
        gate = threading.Event()

        class Slow(EchoBackend):
            def submit(self, batch):
                gate.wait(5)
                return super().submit(batch)

        b, be, res = collect(max_batch=2, max_delay_ms=0.0, backend=Slow())
        b.start()
        for i in range(10):
            b.submit(i, vec(i))
        time.sleep(0.05)
        threading.Timer(0.05, gate.set).start()
        assert b.stop(drain=False)
        assert b.stats()["dropped"] + len(res) == 10 and len(res) < 10
        assert b.submit(100, vec(1)) is False

    def test_in_flight_pipelining_keeps_order(self):
        class Deferred(Pending):
            __slots__ = ("fn",)

            def __init__(self, fn):
                super().__init__(None)
                self.fn = fn

            def wait(self):
                return self.fn()

        class Async(EchoBackend):
            def __init__(self):
                super().__init__(in_flight=3)
                self.outstanding = 0
                self.max_outstanding = 0

            def submit(self, batch):
                data = batch.copy()
                self.sizes.append(len(data))
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)

                def done():
                    self.outstanding -= 1
                    return data
                return Deferred(done)

        be = Async()
        b, _, res = collect(max_batch=4, max_delay_ms=0.0, backend=be)
        with b:
            for i in range(400):
                b.submit(i, vec(i))
        assert [r.key for r in res] == list(range(400))
        assert [int(r.probs[0]) for r in res] == list(range(400))
        assert 1 <= be.max_outstanding <= 3

    def test_reload_swaps_backend_between_batches(self):
        b, be, res = collect(max_batch=4, max_delay_ms=0.5)
        new = EchoBackend()
        with b:
            for i in range(20):
                b.submit(i, vec(i))
            b.reload(lambda: new)
            for i in range(20, 40):
                b.submit(i, vec(i))
        assert [r.key for r in res] == list(range(40))
        assert be.closed and new.closed and sum(new.sizes) >= 20

    def test_reload_failure_keeps_old_backend(self):
        b, be, res = collect(max_batch=4, max_delay_ms=0.5)

        def bad():
            raise BackendError("bad bundle")

        with b:
            with pytest.raises(BackendError, match="bad bundle"):
                b.reload(bad)
            b.submit(1, vec(1))
        assert [r.key for r in res] == [1] and not be.threads.isdisjoint({be.closed_in})

    def test_stats(self):
        b, be, res = collect(max_batch=8, max_delay_ms=2.0)
        with b:
            for i in range(100):
                b.submit(i, vec(i))
        st = b.stats()
        assert sum(k * v for k, v in st["batch_hist"].items()) == 100
        assert st["batches"] == sum(st["batch_hist"].values())
        assert 0 <= st["queue_delay_ms_p50"] <= st["queue_delay_ms_p99"] <= st["queue_delay_ms_max"]
        assert st["backend"] == {"backend": "echo"}

    def test_arguments(self):
        with pytest.raises(ValueError, match="max_batch"):
            MicroBatcher(EchoBackend, n_features=F, max_batch=0)
        with pytest.raises(ValueError, match="max_delay_ms"):
            MicroBatcher(EchoBackend, n_features=F, max_delay_ms=-1)
        b = MicroBatcher(EchoBackend, n_features=F)
        with pytest.raises(ValueError, match=r"`features` must have shape \(8,\)"):
            b.submit(0, np.zeros(9, np.float32))


def test_with_onnxruntime_backend():
    from inference.backend import open_backend

    bundle = load_bundle()
    rng = np.random.default_rng(0)
    X = rng.random((64, bundle.feature_spec.bins), dtype=np.float32)
    with open_backend(bundle, "onnxruntime", max_batch=64) as be:
        want = be.predict(X)
    res = []
    b = MicroBatcher(lambda: open_backend(bundle, "onnxruntime", max_batch=16), n_features=bundle.feature_spec.bins,
                     labels=bundle.labels, max_batch=16, max_delay_ms=2.0, on_result=res.append)
    with b:
        for i in range(64):
            b.submit(i, X[i])
    assert [r.key for r in res] == list(range(64))
    got = np.stack([r.probs for r in res])
    assert np.allclose(got, want, atol=1e-6)
    assert [r.label for r in res] == [bundle.labels[k] for k in want.argmax(1)]
    assert all(abs(r.confidence - want[i].max()) < 1e-6 for i, r in enumerate(res))
