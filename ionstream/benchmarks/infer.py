"""`ionstream bench infer`: classifier throughput and latency, batched vs one spectrum per call.

All figures come from one run on one backend (default: the one ``auto`` picks; on a CPU machine
ONNX Runtime), on feature vectors of fresh simulator spectra:

1. naive loop: ``backend.predict`` on one spectrum per call, back to back (the baseline);
2. batch sweep: ``predict`` on batches of 1, 2, 4, ... max-batch (throughput, ms per batch);
3. micro-batcher: the daemon's path (``MicroBatcher``, max batch and max queue delay as
   configured), first at capacity under a closed-loop load of ``2 x max-batch`` outstanding
   spectra (what Triton's perf_analyzer calls concurrency): throughput; then at half that load
   with evenly spaced arrivals: the queue delay batching added to each spectrum (p50/p99/max);
4. precisions: FP16 and INT8 graphs of the bundle on the same backend (ONNX Runtime CPU here):
   top-1 on the fresh spectra against FP32, and their batch throughput against FP32's. The torch
   backend runs FP16 as half weights of its one program (no INT8);
5. torch on CUDA: CUDA graphs against eager execution (``cuda_graphs=False``), interleaved, at
   batch 1 and at max-batch.

``--sweep-to N`` extends the batch sweep past max-batch (a GPU's best batch is far larger than the
daemon's): batches go through the backend's own submit/wait path with as many in flight as it
has streams, and ``best_batch`` / ``best_batch_throughput_per_s`` report the fastest.

Figures (``--json``): batched_speedup (micro-batcher throughput at capacity / naive loop
throughput), throughput_per_s, naive_throughput_per_s, naive_cpu_ms_per_call (CPU of the calling
thread per one-spectrum call: what the backend costs the batcher's thread), p99_added_delay_ms, p50_added_delay_ms and
observed_max_delay_ms (at half load), max_delay_ms (the configured maximum), mean_batch, batch_speedup_max
(raw predict at max batch vs batch 1), fp32_top1, fp16_top1, int8_top1, fp16/int8 top1_loss_points,
fp16_speedup, int8_speedup (time per batch of max-batch vs FP32, best of interleaved rounds;
``*_speedup_batch1`` for single spectra), best_batch and best_batch_throughput_per_s (FP32 and,
where the backend has it, FP16), graphs_speedup and graphs_speedup_batch1 with
batch1_ms_graphs / batch1_ms_eager / batch1_ms_graphs_spin (the last waiting by spinning, not
sleeping) (torch on CUDA), and a ``detail`` dict.
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np

HELP = "classifier throughput/latency: micro-batched vs one spectrum per call, FP32/FP16/INT8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model bundle directory (default: the shipped one)")
    p.add_argument("--backend", default="onnxruntime", choices=("auto", "onnxruntime", "tensorrt", "torch"))
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--sweep-to", type=int, default=0, metavar="N",
                   help="batch sweep up to N spectra (default: max-batch); the best batch is reported")
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--spectra", type=int, default=1000, help="fresh simulator spectra (accuracy figures)")
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each timed phase (s)")
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")


def _features(bundle, n, seed):
    from dsp.features import FeatureExtractor
    from instrument.spectrum_model import CLASS_LABELS, default_model, random_spectrum

    rng = np.random.default_rng(seed)
    model = default_model()
    ex = FeatureExtractor(bundle.feature_spec)
    X = np.empty((n, bundle.feature_spec.bins), np.float32)
    y = np.empty(n, np.int64)
    for i in range(n):
        intensity, truth = random_spectrum(i % len(CLASS_LABELS), rng)
        ex(model.axis, intensity, out=X[i])
        y[i] = truth.label
    return X, y


def _timed(fn, seconds):
    """Call fn() repeatedly for about ``seconds``; returns (calls, elapsed s)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n, dt


def _naive(backend, X, seconds):
    i = [0]
    lat = []

    def one():
        k = i[0] % len(X)
        t = time.perf_counter_ns()
        backend.predict(X[k:k + 1])
        lat.append(time.perf_counter_ns() - t)
        i[0] += 1

    cpu0 = time.thread_time()
    n, dt = _timed(one, seconds)
    cpu_ms = (time.thread_time() - cpu0) / (n + 1) * 1e3
    lat = np.array(lat[1:]) / 1e6
    return n / dt, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), cpu_ms


def _sizes(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def _sweep(backend, X, max_batch, seconds):
    """Throughput per batch size through submit/wait, keeping ``backend.max_in_flight`` batches in flight."""
    out = {}
    sizes = _sizes(max_batch)
    depth = max(1, getattr(backend, "max_in_flight", 1))
    for b in sizes:
        batch = np.ascontiguousarray(np.resize(X, (b, X.shape[1])))   # repeats rows past len(X)
        inflight: list = []

        def step():
            inflight.append(backend.submit(batch))
            if len(inflight) >= depth:
                inflight.pop(0).wait()

        n, dt = _timed(step, seconds / len(sizes) * 2)
        while inflight:
            inflight.pop(0).wait()
        out[b] = {"throughput_per_s": n * b / dt, "ms_per_batch": dt / n * 1e3}
    return out


def _batcher(make_backend, X, max_batch, max_delay_ms, seconds, rate=None):
    """Through the MicroBatcher: closed loop (2 x max_batch outstanding) or, with ``rate``,
    open-loop arrivals at ``rate`` spectra/s (evenly spaced)."""
    from inference.batcher import MicroBatcher

    window = threading.Semaphore(2 * max_batch)
    done, closed_loop = [0], [False]

    def on_result(r):
        done[0] += 1
        if closed_loop[0]:
            window.release()

    b = MicroBatcher(make_backend, n_features=X.shape[1], max_batch=max_batch, max_delay_ms=max_delay_ms,
                     on_result=on_result, queue_size=max(64, 8 * max_batch))
    b.start()
    n = len(X)
    for i in range(4 * max_batch):                     # warm-up
        b.submit(i, X[i % n])
    while done[0] < 4 * max_batch:
        time.sleep(0.001)
    b.reset_stats()
    closed_loop[0] = rate is None
    start_done, i = done[0], 0
    t0 = time.perf_counter()
    if rate is None:
        while time.perf_counter() - t0 < seconds:
            window.acquire()
            b.submit(i, X[i % n])
            i += 1
    else:
        interval = 1.0 / rate
        while True:
            due = t0 + i * interval
            now = time.perf_counter()
            if now - t0 >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            b.submit(i, X[i % n])
            i += 1
    b.stop()
    dt = time.perf_counter() - t0
    st = b.stats()
    delays = b.queue_delays_ns() / 1e6
    return {"throughput_per_s": (done[0] - start_done) / dt, "p50_added_delay_ms": float(np.percentile(delays, 50)),
            "p99_added_delay_ms": float(np.percentile(delays, 99)), "observed_max_delay_ms": float(delays.max()),
            "mean_batch": st["mean_batch"], "batch_hist": st["batch_hist"], "dropped": st["dropped"]}


def run(args, progress) -> dict:
    from inference.backend import open_backend
    from inference.bundle import load_bundle

    bundle = load_bundle(args.model or None)
    opts = {"intra_op_threads": args.threads} if args.backend != "tensorrt" else {}
    progress(f"fresh spectra: {args.spectra} (seed {args.seed})")
    X, y = _features(bundle, args.spectra, args.seed)
    res: dict = {}
    detail: dict = {}
    sweep_to = max(args.sweep_to or args.max_batch, args.max_batch)
    backend = open_backend(bundle, args.backend, max_batch=max(sweep_to, 64), **opts)
    try:
        res["backend"] = backend.name
        detail["backend_info"] = backend.describe()
        progress(f"naive loop ({backend.name}, one spectrum per call)")
        naive, p50, p99, cpu_ms = _naive(backend, X, args.seconds)
        res["naive_throughput_per_s"] = naive
        res["naive_cpu_ms_per_call"] = cpu_ms   # the calling thread's CPU per one-spectrum call
        detail["naive_latency_ms_p50"], detail["naive_latency_ms_p99"] = p50, p99
        progress("batch sweep")
        sweep = _sweep(backend, X, sweep_to, args.seconds)
        detail["sweep"] = sweep
        res["batch_speedup_max"] = sweep[args.max_batch]["throughput_per_s"] / sweep[1]["throughput_per_s"]
        res["best_batch"] = max(sweep, key=lambda b: sweep[b]["throughput_per_s"])
        res["best_batch_throughput_per_s"] = sweep[res["best_batch"]]["throughput_per_s"]
        probs = np.concatenate([backend.predict(X[i:i + 64]) for i in range(0, len(X), 64)])
        res["fp32_top1"] = float((probs.argmax(1) == y).mean())
    finally:
        backend.close()

    make = (lambda: open_backend(bundle, args.backend, max_batch=args.max_batch, **opts))
    progress(f"micro-batcher at capacity (max batch {args.max_batch}, max delay {args.max_delay_ms} ms, "
             f"{2 * args.max_batch} outstanding)")
    cap = _batcher(make, X, args.max_batch, args.max_delay_ms, args.seconds * 1.5)
    res["throughput_per_s"] = cap["throughput_per_s"]
    res["batched_speedup"] = res["throughput_per_s"] / naive
    res["mean_batch"] = cap["mean_batch"]
    detail["capacity"] = cap
    rate = 0.5 * cap["throughput_per_s"]
    progress(f"micro-batcher at half load ({rate:.0f} spectra/s arriving evenly)")
    half = _batcher(make, X, args.max_batch, args.max_delay_ms, args.seconds * 1.5, rate=rate)
    res["max_delay_ms"] = args.max_delay_ms
    res.update({k: half[k] for k in ("p50_added_delay_ms", "p99_added_delay_ms", "observed_max_delay_ms")})
    res["half_load_mean_batch"] = half["mean_batch"]
    detail["half_load"] = half

    # Precisions: accuracy on the same spectra, and speed measured interleaved with FP32
    # (best of several short rounds each), so machine noise hits both alike.
    backends = {"fp32": open_backend(bundle, args.backend, max_batch=max(args.max_batch, 64), **opts)}
    torch_gpu = backends["fp32"].name == "torch" and backends["fp32"].describe()["device"] != "cpu"
    try:
        for precision in ("fp16", "int8"):
            if backends["fp32"].name == "torch":
                if precision == "int8" or not torch_gpu:
                    progress(f"{precision}: not run by the torch backend {'here' if precision == 'fp16' else ''}")
                    continue
            elif precision not in bundle.files:
                progress(f"{precision}: not in this bundle (tools/quantize_model.py makes it)")
                continue
            progress(f"{precision} graph")
            be = backends[precision] = open_backend(bundle, args.backend, precision=precision,
                                                    max_batch=max(args.max_batch, 64), **opts)
            p = np.concatenate([be.predict(X[i:i + 64]) for i in range(0, len(X), 64)])
            res[f"{precision}_top1"] = float((p.argmax(1) == y).mean())
            res[f"{precision}_top1_loss_points"] = 100 * (res["fp32_top1"] - res[f"{precision}_top1"])
            res[f"{precision}_agreement"] = float((p.argmax(1) == probs.argmax(1)).mean())
            res[f"{precision}_max_abs_prob_diff"] = float(np.abs(p - probs).max())
        if len(backends) > 1:
            batch = np.ascontiguousarray(X[:args.max_batch])
            one = np.ascontiguousarray(X[:1])
            best = {(k, b): float("inf") for k in backends for b in (1, args.max_batch)}
            rounds = 7
            for _ in range(rounds):
                for k, be in backends.items():
                    for b, x in ((1, one), (args.max_batch, batch)):
                        n, dt = _timed(lambda: be.predict(x), args.seconds / rounds / len(backends) / 2)
                        best[k, b] = min(best[k, b], dt / n)
            for k in backends:
                if k == "fp32":
                    continue
                res[f"{k}_speedup"] = best["fp32", args.max_batch] / best[k, args.max_batch]
                res[f"{k}_speedup_batch1"] = best["fp32", 1] / best[k, 1]
                detail[f"{k}_ms_per_batch"] = best[k, args.max_batch] * 1e3
            detail["fp32_ms_per_batch"] = best["fp32", args.max_batch] * 1e3
        if torch_gpu and "fp16" in backends and sweep_to > args.max_batch:
            progress(f"fp16 batch sweep to {sweep_to}")
            be16 = open_backend(bundle, args.backend, precision="fp16", max_batch=sweep_to, **opts)
            try:
                sweep16 = _sweep(be16, X, sweep_to, args.seconds)
            finally:
                be16.close()
            detail["sweep_fp16"] = sweep16
            best16 = max(sweep16, key=lambda b: sweep16[b]["throughput_per_s"])
            res["fp16_best_batch"], res["fp16_best_batch_throughput_per_s"] = best16, sweep16[best16]["throughput_per_s"]
            res["fp16_speedup_best_batch"] = res["fp16_best_batch_throughput_per_s"] / res["best_batch_throughput_per_s"]
    finally:
        for be in backends.values():
            be.close()
    if torch_gpu:
        progress("CUDA graphs vs eager")
        res.update(_graphs_vs_eager(bundle, args, X, detail))
    res["detail"] = detail
    return res


def _graphs_vs_eager(bundle, args, X, detail) -> dict:
    """Torch on CUDA: time per call with CUDA graphs and eager, interleaved rounds, best of each."""
    from inference.backend import open_backend

    bes = {g: open_backend(bundle, "torch", max_batch=args.max_batch, device="cuda", cuda_graphs=g)
           for g in (True, False)}
    bes["spin"] = open_backend(bundle, "torch", max_batch=args.max_batch, device="cuda", blocking_sync=False)
    try:
        one, batch = np.ascontiguousarray(X[:1]), np.ascontiguousarray(np.resize(X, (args.max_batch, X.shape[1])))
        best = {(g, b): float("inf") for g in bes for b in (1, args.max_batch)}
        rounds = 7
        for _ in range(rounds):
            for g, be in bes.items():
                for b, x in ((1, one), (args.max_batch, batch)):
                    n, dt = _timed(lambda: be.predict(x), args.seconds / rounds / 2)
                    best[g, b] = min(best[g, b], dt / n)
    finally:
        for be in bes.values():
            be.close()
    detail["graphs_ms_per_batch"] = best[True, args.max_batch] * 1e3
    detail["eager_ms_per_batch"] = best[False, args.max_batch] * 1e3
    return {"graphs_speedup": best[False, args.max_batch] / best[True, args.max_batch],
            "graphs_speedup_batch1": best[False, 1] / best[True, 1],
            "batch1_ms_graphs": best[True, 1] * 1e3, "batch1_ms_eager": best[False, 1] * 1e3,
            "batch1_ms_graphs_spin": best["spin", 1] * 1e3}
