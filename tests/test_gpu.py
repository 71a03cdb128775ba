"""pycuda machinery of the GPU backends, on a real GPU (``pytest -m gpu`` on the device machine).

What the TensorRT backend does with pycuda is exercised here without TensorRT (which cannot be
installed on these machines): thread-owned primary contexts, page-locked host buffers and device
buffers allocated once per slot, one CUDA stream per slot, async H2D/D2H copies with one
synchronisation per batch, round-robin over slots through the micro-batcher, and real GPU work:
dsp.features' binning and normalisation for a whole batch, checked against the NumPy code.
Skips (with the reason) where pycuda or a GPU is missing.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _pycuda_or_skip():
    from inference.gpu import GpuUnavailable, import_pycuda

    try:
        return import_pycuda()
    except GpuUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cuda():
    return _pycuda_or_skip()


@pytest.fixture(scope="module")
def spec():
    from dsp.features import FeatureSpec

    return FeatureSpec(90.0, 2110.0, 2048)


def tof_axis(n, lo=95.0, hi=2100.0):
    r = np.linspace(np.sqrt(lo), np.sqrt(hi), n)
    return r * r


def in_thread(fn):
    """Run fn() in a new thread (which owns any CUDA context it makes); return its result or raise."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    assert not t.is_alive(), "GPU worker thread hung"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_context_and_slot_round_trip_in_owner_thread(cuda):
    from inference.gpu import CudaContext, StreamSlot

    def work():
        ctx = CudaContext(0)
        with ctx.active():
            slot = StreamSlot(ctx, max_batch=64, n_in=1000, n_out=1000)
            assert isinstance(slot.host_in.base, cuda.HostPointer)       # page-locked
            assert isinstance(slot.host_out.base, cuda.HostPointer)
            x = np.random.default_rng(0).random((37, 1000), dtype=np.float32)
            n = slot.upload(x)
            cuda.memcpy_dtod_async(slot.dev_out, slot.dev_in, x.nbytes, slot.stream)
            slot.download(n)
            slot.stream.synchronize()
            got = slot.host_out[:n].copy()
            slot.free()
        info = ctx.describe()
        ctx.close()
        return x, got, info, threading.get_ident(), ctx.owner

    x, got, info, tid, owner = in_thread(work)
    assert np.array_equal(x, got)
    assert owner == tid != threading.get_ident()
    assert info["compute_capability"] and info["gpu_name"]


def test_device_featurizer_matches_numpy(cuda, spec):
    from dsp.features import feature_batch
    from inference.gpu import CudaContext, DeviceFeaturizer
    from instrument.spectrum_model import default_model, random_spectrum

    model = default_model()
    rng = np.random.default_rng(1)
    Y = np.stack([random_spectrum(i % 5, rng)[0] for i in range(24)])      # uint16 counts
    want = feature_batch(model.axis, Y, spec)

    def work():
        ctx = CudaContext(0)
        with ctx.active():
            f16 = DeviceFeaturizer(ctx, spec, model.axis, max_rows=32, dtype=np.uint16)
            a = f16(Y)
            f32 = DeviceFeaturizer(ctx, spec, model.axis, max_rows=32, dtype=np.float32, module=f16.module)
            b = f32(Y.astype(np.float32))
            f16.free()
            f32.free()
        ctx.close()
        return a, b

    a, b = in_thread(work)
    assert a.shape == want.shape == b.shape and a.dtype == np.float32
    assert np.abs(a - want).max() < 2e-3, np.abs(a - want).max()
    assert np.abs(b - want).max() < 2e-3
    assert (a.argmax(1) == want.argmax(1)).mean() > 0.95


@pytest.mark.parametrize("baseline, scale, transform", [("tophat", "max", "sqrt"), ("min", "sum", "none"),
                                                         ("none", "max", "none")])
def test_normalise_kernel_variants(cuda, baseline, scale, transform):
    from dsp.features import FeatureSpec, normalise
    from inference.gpu import GpuNormaliser

    spec = FeatureSpec(90.0, 2110.0, 1024, baseline=baseline, baseline_window=15, scale=scale, transform=transform)
    rng = np.random.default_rng(2)
    X = (rng.random((40, 1024)) * 50 + np.linspace(0, 30, 1024)).astype(np.float32)
    X[:, 500] += 900
    want = normalise(X.astype(np.float64), spec).astype(np.float32)

    def work():
        with GpuNormaliser(spec, streams_per_gpu=2, max_batch=64) as be:
            return be.predict(X)

    got = in_thread(work)
    assert np.allclose(got, want, atol=1e-5, rtol=1e-4), np.abs(got - want).max()


def test_stream_backend_through_batcher_round_robin(cuda, spec):
    """N streams, round-robin, in order, backend created and closed in the batcher's thread."""
    from dsp.features import normalise
    from inference.batcher import MicroBatcher
    from inference.gpu import GpuNormaliser

    rng = np.random.default_rng(3)
    X = (rng.random((600, spec.bins)) * 100).astype(np.float32)
    want = normalise(X.astype(np.float64), spec).astype(np.float32)
    made = {}

    def factory():
        be = GpuNormaliser(spec, streams_per_gpu=3, max_batch=16)
        made["backend"], made["thread"] = be, threading.get_ident()
        return be

    results = []
    b = MicroBatcher(factory, n_features=spec.bins, max_batch=16, max_delay_ms=1.0, on_result=results.append)
    with b:
        assert made["backend"].max_in_flight == 3
        for i in range(len(X)):
            b.submit(i, X[i])
    be = made["backend"]
    assert be.closed and made["thread"] != threading.get_ident()
    assert [r.key for r in results] == list(range(len(X)))
    got = np.stack([r.probs for r in results])
    assert np.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert b.stats()["errors"] == 0 and b.stats()["batches"] >= len(X) // 16


def test_multi_gpu_slots_interleave(cuda, spec):
    from inference.gpu import GpuNormaliser

    n = cuda.Device.count()
    if n < 2:
        pytest.skip(f"one GPU here ({n}); multi-GPU round-robin needs two")

    def work():
        with GpuNormaliser(spec, gpus=[0, 1], streams_per_gpu=2, max_batch=8) as be:
            order = [s.ctx.index for s in be.slots]
            X = np.random.default_rng(4).random((8, spec.bins)).astype(np.float32)
            outs = [be.submit(X) for _ in range(8)]
            res = [p.wait() for p in outs]
            return order, res

    order, res = in_thread(work)
    assert order == [0, 1, 0, 1]
    assert all(np.array_equal(r, res[0]) for r in res)


def test_bench_gpu_figures(cuda):
    from ionstream.benchmarks import gpu as bench

    class Args:
        mib = 32
        repeats = 5
        json = True
        spectra = 64

    res = bench.run(Args(), lambda msg: None)
    for key in ("h2d_GBps", "d2h_GBps", "pinned_h2d_ratio", "pinned_d2h_ratio"):
        assert res[key] > 0, key
    assert res["h2d_GBps"] > res["h2d_pageable_GBps"] * 0.8
