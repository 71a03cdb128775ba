#!/usr/bin/env python3
"""Train the default spectrum classifier and write a model bundle (model.onnx + model.json).

    .venv/bin/pip install -e '.[train]'          # torch (CPU build) + onnx
    .venv/bin/python tools/train_model.py --out inference/models/default
    .venv/bin/python tools/quantize_model.py inference/models/default     # fp16 + int8 graphs

Labelled spectra come from the simulator's spectrum model (instrument.spectrum_model
.random_spectrum: one dominant compound per class with nuisance variation: m/z shift, intensity
scale, noise and continuum level, pedestal, drift, minor compounds, contaminants), on the default
instrument and a few other instrument models (sample count, resolving power), so the network
learns m/z features rather than one sampling. Each spectrum becomes the feature vector of
dsp.features (the same code the daemon runs), and a small 1-D convolutional network learns the
class. Deterministic for a given --seed (data in fixed chunks seeded from it; torch
deterministic algorithms; a fixed thread count). Takes a few minutes on 2 CPU cores.

This tool only makes the simulator's data; training, export, the FP16/INT8 variants, the OOD
statistics and the report are inference.training's (the code behind `ionstream train`), so
there is one training implementation. The report lands in OUT/report/.

Besides model.onnx the bundle gets model.pt2, the same network as a torch.export program (dynamic
batch axis) for the torch backend, checked against model.onnx through ONNX Runtime before it is
written into model.json (torch_program; inference.training.torch_program).
``--export-torch BUNDLE`` adds it to an existing bundle without training.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
try:  # the installed package; a bare checkout (no pip install) runs from its own tree
    import dsp  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from dsp.features import FeatureExtractor, FeatureSpec  # noqa: E402

MODEL_VERSION = "1.0.0"
TORCH_CHECK_SPECTRA = 1000
TORCH_CHECK_SEED = 515151
CHUNK = 250  # spectra per generation task (fixes the data independently of the worker count)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

def instrument_variants():
    """(probability, InstrumentModel) pairs: mostly the default instrument, some others."""
    from instrument.spectrum_model import InstrumentModel, default_model

    return [
        (0.70, default_model()),
        (0.10, InstrumentModel(n_samples=32768)),
        (0.10, InstrumentModel(n_samples=65536, resolving_power=3800.0)),
        (0.10, InstrumentModel(n_samples=98304, resolving_power=8000.0)),
    ]


_VARIANTS = None


def _chunk(task) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors and labels of one chunk; task = (seed, chunk index, count, spec dict, variants?)."""
    global _VARIANTS
    from instrument.spectrum_model import CLASS_LABELS, default_model, random_spectrum

    seed, index, count, spec_dict, variants = task
    spec = FeatureSpec.from_dict(spec_dict)
    if variants and _VARIANTS is None:
        _VARIANTS = instrument_variants()
    rng = np.random.default_rng([seed, index])
    extract = FeatureExtractor(spec)
    n_classes = len(CLASS_LABELS)
    X = np.empty((count, spec.bins), np.float32)
    y = np.empty(count, np.int64)
    for k in range(count):
        model = default_model()
        if variants:
            probs = [p for p, _ in _VARIANTS]
            model = _VARIANTS[int(rng.choice(len(_VARIANTS), p=probs))][1]
        cls = (index * count + k) % n_classes
        intensity, truth = random_spectrum(cls, rng, model=model)
        extract(model.axis, intensity, out=X[k])
        y[k] = truth.label
    return X, y


def make_dataset(n: int, seed: int, spec: FeatureSpec, *, workers: int = 2, variants: bool = True,
                 desc: str = "spectra") -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled feature vectors (balanced over the classes), deterministic for ``seed``."""
    from tqdm import tqdm

    tasks = []
    for i in range(0, n, CHUNK):
        tasks.append((seed, i // CHUNK, min(CHUNK, n - i), spec.to_dict(), variants))
    X = np.empty((n, spec.bins), np.float32)
    y = np.empty(n, np.int64)
    with tqdm(total=n, desc=desc, unit="spectra", leave=True) as bar:
        if workers > 1:
            ctx = mp.get_context("fork")
            with ctx.Pool(workers) as pool:
                for (Xc, yc), (_, idx, cnt, _, _) in zip(pool.imap(_chunk, tasks), tasks):
                    X[idx * CHUNK: idx * CHUNK + cnt], y[idx * CHUNK: idx * CHUNK + cnt] = Xc, yc
                    bar.update(cnt)
        else:
            for task in tasks:
                Xc, yc = _chunk(task)
                X[task[1] * CHUNK: task[1] * CHUNK + task[2]], y[task[1] * CHUNK: task[1] * CHUNK + task[2]] = Xc, yc
                bar.update(task[2])
    return X, y


def export_torch_only(bundle_dir: Path, workers: int, spectra: int = TORCH_CHECK_SPECTRA) -> int:
    """``--export-torch``: add model.pt2 to an existing bundle (no training), checked on fresh
    simulator spectra against its model.onnx (inference.training.torch_program)."""
    from inference.bundle import load_bundle
    from inference.training.torch_program import net_from_onnx, write_torch_program

    bundle = load_bundle(bundle_dir)
    model = net_from_onnx(bundle.onnx_path, bundle.feature_spec.bins, bundle.n_classes)
    X, _ = make_dataset(spectra, TORCH_CHECK_SEED, bundle.feature_spec, workers=workers, variants=False,
                        desc="torch program check spectra")
    entry = write_torch_program(model, bundle.path, bundle.feature_spec.bins, X)
    entry["check"]["seed"] = TORCH_CHECK_SEED
    meta = json.loads(bundle.json_path.read_text())
    meta["torch_program"] = entry
    bundle.json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {bundle.path / entry['path']}: {entry['check']}", file=sys.stderr)
    return 0


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return None


def as_dataset(X: np.ndarray, y: np.ndarray, spec: FeatureSpec, name: str):
    """Simulator arrays as an inference.training Dataset (each generation chunk is one "run")."""
    from inference.training.data import Dataset
    from instrument.spectrum_model import CLASS_LABELS

    n = len(y)
    chunk = np.arange(n) // CHUNK
    return Dataset(X, y, tuple(CLASS_LABELS), spec, chunk, [f"{name} chunk {i}" for i in range(int(chunk.max()) + 1)],
                   np.zeros(n, np.int64), [name], np.arange(n), np.ones(n, np.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "inference" / "models" / "default",
                    help="bundle directory to write (default: the shipped bundle)")
    ap.add_argument("--seed", type=int, default=20240601, help="training seed (data and weights)")
    ap.add_argument("--train", type=int, default=70000, help="training spectra")
    ap.add_argument("--val", type=int, default=2500, help="held-out spectra (a separate seed)")
    ap.add_argument("--epochs", type=int, default=12)  # the shipped bundle: 12 epochs of 70000
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--bins", type=int, default=2048, help="feature bins (a multiple of 1024)")
    ap.add_argument("--mz-min", type=float, default=90.0)
    ap.add_argument("--mz-max", type=float, default=2110.0)
    ap.add_argument("--workers", type=int, default=2, help="processes generating spectra")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine more threads contend and run slower)")
    ap.add_argument("--no-variants", action="store_true", help="only the default instrument model")
    ap.add_argument("--cache", type=Path, default=None,
                    help="reuse/keep the generated data set in this .npz (same arguments only)")
    ap.add_argument("--export-torch", type=Path, metavar="BUNDLE", default=None,
                    help="only add model.pt2 (the torch backend's program) to an existing bundle, checked against its model.onnx")
    ap.add_argument("--torch-check-spectra", type=int, default=TORCH_CHECK_SPECTRA, metavar="N",
                    help="fresh spectra the torch program is checked on (default %(default)s)")
    args = ap.parse_args(argv)
    if args.export_torch is not None:
        return export_torch_only(args.export_torch, args.workers, args.torch_check_spectra)

    from instrument.spectrum_model import DEFAULT_N_SAMPLES

    spec = FeatureSpec(mz_min=args.mz_min, mz_max=args.mz_max, bins=args.bins)
    variants = not args.no_variants
    t_start = time.perf_counter()

    data_key = json.dumps([args.seed, args.train, args.val, spec.to_dict(), variants], sort_keys=True)
    if args.cache and args.cache.is_file() and str(np.load(args.cache)["key"]) == data_key:
        d = np.load(args.cache)
        X, y, Xv, yv = d["X"], d["y"], d["Xv"], d["yv"]
        print(f"data from {args.cache}", file=sys.stderr)
    else:
        X, y = make_dataset(args.train, args.seed, spec, workers=args.workers, variants=variants,
                            desc="training spectra")
        Xv, yv = make_dataset(args.val, args.seed + 1, spec, workers=args.workers, variants=False,
                              desc="held-out spectra")
        if args.cache:
            np.savez(args.cache, X=X, y=y, Xv=Xv, yv=yv, key=data_key)
    t_data = time.perf_counter() - t_start

    from inference.training.net import FitConfig
    from inference.training.trainer import TrainOptions, build_bundle

    fit = FitConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads)
    opts = TrainOptions(bins=args.bins, fit=fit, name="default", version=MODEL_VERSION,
                        description="1-D CNN over the binned m/z profile; classes of instrument.spectrum_model",
                        force=True, command=[Path(sys.argv[0]).name] + (argv or sys.argv[1:]))
    result = build_bundle(
        as_dataset(X, y, spec, "simulator training spectra"), as_dataset(Xv, yv, spec, "simulator held-out spectra"),
        args.out, opts, t_data=t_data, tool="tools/train_model.py",
        data_info={"spectrum_model": "instrument.spectrum_model.random_spectrum", "instrument_variants": variants,
                   "spectrum_samples": DEFAULT_N_SAMPLES, "held_out_seed": args.seed + 1, "git_commit": git_commit()},
        intro=[f"Simulator spectra: {args.train} for training (seed {args.seed}), {args.val} held out "
               f"(seed {args.seed + 1}, default instrument only)."])
    s = result.scores
    print(f"wrote {args.out}: held-out top-1 {s['top1']:.4f} on {args.val} spectra; data {t_data:.0f} s, "
          f"training {result.seconds['training']:.0f} s; report {result.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
