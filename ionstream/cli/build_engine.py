"""`ionstream build-engine MODEL`: build (or check) the TensorRT engines for a model bundle ahead of time.

Builds one engine per GPU for the bundle's graph of ``--precision`` (FP16 and INT8 graphs are
made by tools/quantize_model.py; TensorRT 11 takes precision from the graph), with an
optimisation profile over batch 1..--max-batch (one per execution context), and stores it in the
engine cache the daemon uses, so `ionstream run --backend tensorrt` starts without building.
A progress bar follows TensorRT's build phases. ``--profile N`` then runs N batches and prints
per-layer times from TensorRT's IProfiler.
"""
from __future__ import annotations

import argparse
import sys
import time

HELP = "build the TensorRT engine(s) for a model bundle into the engine cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="", help="model bundle directory (default: the shipped one)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the engine accepts (spectra)")
    p.add_argument("--opt-batch", type=int, default=32, help="batch size TensorRT tunes for")
    p.add_argument("--gpus", default="0", help="comma-separated GPU indices (one engine per GPU)")
    p.add_argument("--contexts", type=int, default=2, help="execution contexts (CUDA streams) per GPU")
    p.add_argument("--engine-cache", default="", help="engine cache directory (default ~/.cache/ionstream/engines)")
    p.add_argument("--rebuild", action="store_true", help="build even if the cache has the engine")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after building, run N batches of --opt-batch and print per-layer times")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from inference.backend import BackendError, tensorrt_available
    from inference.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.model or None)
        onnx_path = bundle.onnx_for(args.precision)
    except BundleError as exc:
        print(f"ionstream build-engine: {exc}", file=sys.stderr)
        return 2
    ok, why = tensorrt_available()
    if not ok:
        print(f"ionstream build-engine: TensorRT is not usable here: {why}", file=sys.stderr)
        return 3
    from inference.tensorrt_backend import NSYS_HINT, TensorRTBackend

    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    t0 = time.perf_counter()
    try:
        be = TensorRTBackend(onnx_path, input_name=bundle.input_name, output_name=bundle.output_name,
                             n_features=bundle.feature_spec.bins, n_classes=bundle.n_classes,
                             precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
                             gpus=gpus, contexts_per_gpu=args.contexts, engine_cache=args.engine_cache or None,
                             profile=args.profile > 0, progress=True, rebuild=args.rebuild)
    except (BackendError, OSError) as exc:
        print(f"ionstream build-engine: {exc}", file=sys.stderr)
        return 1
    with be:
        info = be.describe()
        print(f"engine {'built' if info.get('engine_built') else 'found in cache'} in {time.perf_counter() - t0:.1f} s: "
              f"{info.get('engine_cache')}")
        print(f"  {bundle.name} v{bundle.version} {args.precision}, TensorRT {info['tensorrt']}, "
              f"{info.get('gpu_name')} (sm {info.get('compute_capability')}), batch 1..{args.max_batch} "
              f"(opt {args.opt_batch}), {args.contexts} context(s) per GPU on GPU(s) {args.gpus}")
        if args.profile:
            x = np.random.default_rng(0).random((args.opt_batch, bundle.feature_spec.bins), dtype=np.float32)
            for _ in range(args.profile):
                be.predict(x)
            rows = be.layer_report()
            total = sum(r[1] for r in rows) or 1.0
            print(f"\nper-layer times over {args.profile} batches of {args.opt_batch} (TensorRT IProfiler):")
            print(f"  {'layer':60s} {'ms/batch':>9s} {'share':>6s}")
            for name, ms, calls in rows:
                print(f"  {name[:60]:60s} {ms / max(calls, 1):9.4f} {100 * ms / total:5.1f}%")
            print(f"\n{NSYS_HINT}")
    return 0
