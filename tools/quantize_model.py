#!/usr/bin/env python3
"""Add FP16 and INT8 graphs to a model bundle and measure their accuracy against FP32.

    .venv/bin/python tools/quantize_model.py inference/models/default            # both
    .venv/bin/python tools/quantize_model.py BUNDLE --precision int8 --calibration 512

FP16: onnxconverter-common mixed precision (keep_io_types=True). INT8: ONNX Runtime's
quantize_static in QDQ format, activations calibrated on simulator spectra (a seed of their
own). Each graph is then run on ONNX Runtime CPU over fresh held-out spectra (another seed) and
its top-1 written to model.json next to FP32's on the same spectra, with its SHA-256, so the
bundle loader checks it like model.onnx. TensorRT builds these graphs as they are (strongly
typed network: precision comes from the graph).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
try:  # the installed package; a bare checkout (no pip install) runs from its own tree
    import dsp  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def simulator_features(spec, n: int, seed: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tools"))
    from train_model import make_dataset

    return make_dataset(n, seed, spec, workers=workers, variants=False, desc=f"spectra (seed {seed})")


def top1(onnx_path: Path, X: np.ndarray, y: np.ndarray, input_name: str) -> tuple[float, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p = np.concatenate([sess.run(None, {input_name: X[i:i + 512]})[0] for i in range(0, len(X), 512)])
    return float((p.argmax(1) == y).mean()), p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, nargs="?", default=ROOT / "inference" / "models" / "default")
    ap.add_argument("--precision", choices=("fp16", "int8", "both"), default="both")
    ap.add_argument("--calibration", type=int, default=512, help="calibration spectra for INT8")
    ap.add_argument("--eval", type=int, default=2000, help="held-out spectra for the accuracy comparison")
    ap.add_argument("--seed", type=int, default=424242, help="calibration seed (evaluation uses seed + 1)")
    ap.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from inference.bundle import load_bundle, sha256_file
    from inference.precision import convert_fp16, quantize_int8

    bundle = load_bundle(args.bundle, check_graphs=False)
    spec, name = bundle.feature_spec, bundle.input_name
    precisions = ["fp16", "int8"] if args.precision == "both" else [args.precision]
    Xe, ye = simulator_features(spec, args.eval, args.seed + 1, args.workers)
    ref, p32 = top1(bundle.onnx_path, Xe, ye, name)
    meta = json.loads(bundle.json_path.read_text())
    for precision in precisions:
        dst = bundle.path / FILES[precision]
        if precision == "fp16":
            convert_fp16(bundle.onnx_path, dst)
            extra = {"converter": "onnxconverter-common float16, keep_io_types=True"}
        else:
            Xc, _ = simulator_features(spec, args.calibration, args.seed, args.workers)
            quantize_int8(bundle.onnx_path, dst, Xc, input_name=name, method=args.method)
            extra = {"quantizer": f"onnxruntime quantize_static QDQ, QInt8 symmetric, per-channel weights, "
                                  f"{args.method} calibration on {args.calibration} simulator spectra "
                                  f"(seed {args.seed})"}
        acc, p = top1(dst, Xe, ye, name)
        agree = float((p.argmax(1) == p32.argmax(1)).mean())
        meta["files"][precision] = {"path": dst.name, "sha256": sha256_file(dst), "top1": round(acc, 5),
                                    "fp32_top1_same_spectra": round(ref, 5), "top1_loss_points": round(100 * (ref - acc), 3),
                                    "agreement_with_fp32": round(agree, 5),
                                    "max_abs_prob_diff": round(float(np.abs(p - p32).max()), 6),
                                    "eval_spectra": args.eval, "eval_seed": args.seed + 1, **extra}
        print(f"{precision}: {dst.name} {dst.stat().st_size / 1024:.0f} KiB, top-1 {acc:.4f} vs fp32 {ref:.4f} "
              f"({100 * (ref - acc):+.2f} points loss), agreement {agree:.4f}", file=sys.stderr)
    bundle.json_path.write_text(json.dumps(meta, indent=2) + "\n")
    load_bundle(args.bundle)   # the result must load and check
    return 0


if __name__ == "__main__":
    sys.exit(main())
