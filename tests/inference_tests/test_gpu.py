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


# ----------------------------------------------------------------------------------------
# The torch backend on the GPU (inference/torch_backend.py)
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_cuda(cuda):
    from inference.torch_backend import torch_cuda_available

    ok, why = torch_cuda_available()
    if not ok:
        pytest.skip(why)
    import torch

    return torch


@pytest.fixture(scope="module")
def bundle():
    from inference.bundle import load_bundle

    return load_bundle()


def fresh_features(bundle, n, seed):
    from ionstream.benchmarks.infer import _features

    return _features(bundle, n, seed)


def test_torch_agrees_with_onnxruntime_on_10000_fresh_spectra(torch_cuda, bundle):
    """The goal: same top-1 on >= 99.9 % of 10,000 fresh spectra, max |dp| <= 1e-3 (FP32, CUDA graphs)."""
    from inference.backend import open_backend

    X, y = fresh_features(bundle, 10_000, seed=777001)
    with open_backend(bundle, "onnxruntime", max_batch=500) as ort_be:
        ref = np.concatenate([ort_be.predict(X[i:i + 500]) for i in range(0, len(X), 500)])
    sizes = [1, 3, 64, 200, 500]          # bucket sizes and sizes between buckets

    def work():
        with open_backend(bundle, "torch", max_batch=512, device="cuda") as be:
            info = be.describe()
            out, i, k = [], 0, 0
            while i < len(X):
                n = sizes[k % len(sizes)]
                out.append(be.predict(X[i:i + n]))
                i, k = i + n, k + 1
            return info, np.concatenate(out)

    info, got = in_thread(work)
    assert info["backend"] == "torch" and info["device"] == "cuda:0" and info["precision"] == "fp32"
    assert info["cuda_graphs"] is True
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    diff = float(np.abs(got - ref).max())
    print(f"torch cuda vs onnxruntime cpu on {len(X)} spectra: top-1 agreement {agree:.5f}, max |dp| {diff:.2e}")
    assert agree >= 0.999 and diff <= 1e-3, (agree, diff)
    assert float((got.argmax(1) == y).mean()) >= 0.97


def test_torch_runs_on_pinned_slots_and_pycuda_streams_in_place(torch_cuda, bundle, cuda):
    from inference.backend import open_backend

    def work():
        with open_backend(bundle, "torch", max_batch=32, device="cuda", contexts_per_gpu=3) as be:
            found = []
            for slot in be.slots:
                found.append((isinstance(slot.host_in.base, cuda.HostPointer),
                              slot.x.data_ptr() == int(slot.dev_in), slot.y.data_ptr() == int(slot.dev_out),
                              slot.torch_stream.cuda_stream == int(slot.stream.handle)))
            x = np.random.default_rng(5).random((7, bundle.feature_spec.bins), dtype=np.float32)
            p = be.predict(x)
            # the network wrote the slot's pycuda output buffer: its pinned copy holds the result
            used = be.slots[0]
            return found, p, used.host_out[:7].copy(), be.max_in_flight

    found, p, host_out, in_flight = in_thread(work)
    assert found == [(True, True, True, True)] * 3
    assert in_flight == 3
    assert np.array_equal(p, host_out)


def test_torch_graphs_match_eager(torch_cuda, bundle):
    from inference.backend import open_backend

    X = fresh_features(bundle, 300, seed=777002)[0]

    def work():
        res = {}
        for graphs in (True, False):
            with open_backend(bundle, "torch", max_batch=128, device="cuda", cuda_graphs=graphs) as be:
                res[graphs] = [be.predict(X[:n]) for n in (1, 2, 5, 64, 100, 128)]
                res[graphs, "buckets"] = sorted(be.slots[0].graphs)
        return res

    res = in_thread(work)
    assert res[True, "buckets"] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert res[False, "buckets"] == []
    for a, b in zip(res[True], res[False]):
        assert np.allclose(a, b, atol=1e-6), np.abs(a - b).max()


def test_torch_fp16_top1_loss_within_half_a_point(torch_cuda, bundle):
    from inference.backend import open_backend

    X, y = fresh_features(bundle, 4000, seed=777003)

    def work():
        out = {}
        for precision in ("fp32", "fp16"):
            with open_backend(bundle, "torch", precision=precision, max_batch=500, device="cuda") as be:
                out[precision] = np.concatenate([be.predict(X[i:i + 500]) for i in range(0, len(X), 500)])
                out[precision, "info"] = be.describe()
        return out

    out = in_thread(work)
    assert out["fp16", "info"]["precision"] == "fp16"
    top1 = {p: float((out[p].argmax(1) == y).mean()) for p in ("fp32", "fp16")}
    loss = 100 * (top1["fp32"] - top1["fp16"])
    print(f"fp16 top-1 {top1['fp16']:.4f} vs fp32 {top1['fp32']:.4f}: loss {loss:.2f} points, "
          f"max |dp| {np.abs(out['fp16'] - out['fp32']).max():.2e}")
    assert loss <= 0.5
    assert out["fp16"].dtype == np.float32


def test_torch_streams_interleave_in_order_through_the_batcher(torch_cuda, bundle):
    """Several batches in flight on 3 streams; the batcher delivers every result in order, correct."""
    from inference.backend import open_backend
    from inference.batcher import MicroBatcher

    X = fresh_features(bundle, 600, seed=777004)[0]
    with open_backend(bundle, "onnxruntime", max_batch=600) as ref_be:
        ref = ref_be.predict(X)
    made = {}

    def factory():
        be = open_backend(bundle, "torch", max_batch=16, device="cuda", contexts_per_gpu=3)
        made["backend"] = be
        return be

    results = []
    b = MicroBatcher(factory, n_features=X.shape[1], max_batch=16, max_delay_ms=0.5, on_result=results.append)
    with b:
        assert made["backend"].max_in_flight == 3
        for i in range(len(X)):
            b.submit(i, X[i])
    assert made["backend"].closed
    assert [r.key for r in results] == list(range(len(X)))
    got = np.stack([r.probs for r in results])
    assert np.abs(got - ref).max() <= 1e-3
    assert b.stats()["errors"] == 0 and b.stats()["backend"]["device"] == "cuda:0"


def test_torch_recovers_after_errors(torch_cuda, bundle):
    """An oversized batch is refused with a clear error, a CUDA out-of-memory error raised in the same
    context is survived, and the backend goes on giving the right answers."""
    from inference.backend import open_backend

    X = fresh_features(bundle, 40, seed=777005)[0]

    def work():
        torch = torch_cuda
        with open_backend(bundle, "torch", max_batch=32, device="cuda") as be:
            before = be.predict(X[:32])
            with pytest.raises(ValueError, match="max_batch is 32"):
                be.predict(X[:40])
            with be.slots[0].ctx.active(), pytest.raises(torch.OutOfMemoryError):
                torch.empty(1 << 50, dtype=torch.uint8, device="cuda:0")   # a real CUDA allocation error
            after = [be.predict(X[:32]) for _ in range(len(be.slots) + 1)]   # every slot again
        return before, after

    before, after = in_thread(work)
    for a in after:
        assert np.array_equal(a, before)


def test_torch_gpu_features_feed_the_network(torch_cuda, bundle):
    """Raw spectra binned and normalised on the GPU straight into the network's input buffer."""
    from dsp.features import feature_batch
    from inference.backend import open_backend
    from instrument.spectrum_model import default_model, random_spectrum

    model = default_model()
    rng = np.random.default_rng(777006)
    Y = np.stack([random_spectrum(i % 5, rng)[0] for i in range(96)])          # uint16 counts
    feats = feature_batch(model.axis, Y, bundle.feature_spec).astype(np.float32)
    with open_backend(bundle, "onnxruntime", max_batch=96) as ref_be:
        ref = ref_be.predict(feats)

    def work():
        with open_backend(bundle, "torch", max_batch=32, device="cuda") as be:
            be.enable_featurizer(bundle.feature_spec, model.axis, dtype=np.uint16)
            pend = [be.submit_spectra(Y[i:i + 32]) for i in range(0, len(Y), 32)]
            return np.concatenate([p.wait() for p in pend])

    got = in_thread(work)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.98, agree
    assert np.abs(got - ref).max() < 0.05


def test_torch_multi_gpu_round_robin(torch_cuda, bundle, cuda):
    from inference.backend import open_backend

    if cuda.Device.count() < 2:
        pytest.skip(f"one GPU here ({cuda.Device.count()}); multi-GPU round-robin needs two")
    X = fresh_features(bundle, 8, seed=777007)[0]

    def work():
        with open_backend(bundle, "torch", max_batch=8, device="cuda", gpus=[0, 1], contexts_per_gpu=2) as be:
            order = [s.ctx.index for s in be.slots]
            res = [p.wait() for p in [be.submit(X) for _ in range(8)]]
            return order, res, be.describe()["device"]

    order, res, device = in_thread(work)
    assert order == [0, 1, 0, 1] and device == "cuda:0,cuda:1"
    assert all(np.allclose(r, res[0], atol=1e-6) for r in res)
