#!/usr/bin/env python3
"""Train the default spectrum classifier and write a model bundle (model.onnx + model.json).

    .venv/bin/pip install -e '.[train]'          # torch (CPU build) + onnx
    .venv/bin/python tools/train_model.py --out inference/models/default
    .venv/bin/python tools/quantize_model.py inference/models/default     # fp16 + int8 graphs
    .venv/bin/python tools/train_model.py --export-torch inference/models/default   # model.pt2 only

Labelled spectra come from the simulator's spectrum model (instrument.spectrum_model
.random_spectrum: one dominant compound per class with nuisance variation: m/z shift, intensity
scale, noise and continuum level, pedestal, drift, minor compounds, contaminants), on the default
instrument and a few other instrument models (sample count, resolving power), so the network
learns m/z features rather than one sampling. Each spectrum becomes the feature vector of
dsp.features (the same code the daemon runs), and a small 1-D convolutional network learns the
class. Deterministic for a given --seed (data in fixed chunks seeded from it; torch
deterministic algorithms; a fixed thread count). Takes a few minutes on 2 CPU cores.

Besides model.onnx the bundle gets model.pt2, the same network as a torch.export program (dynamic
batch axis) for the torch backend, checked against model.onnx through ONNX Runtime on fresh
spectra before it is written into model.json (torch_program). ``--export-torch BUNDLE`` adds it
to an existing bundle without training: the network is rebuilt from model.onnx's weights.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
try:  # the installed package; a bare checkout (no pip install) runs from its own tree
    import dsp  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from dsp.features import FeatureExtractor, FeatureSpec  # noqa: E402

MODEL_VERSION = "1.0.0"
INPUT_NAME = "features"
OUTPUT_NAME = "probs"
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


# ------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------

def build_net(bins: int, n_classes: int):
    """A small 1-D CNN: 4 conv blocks (pooling by bins/1024, 2, 4, 4), two dense layers, softmax."""
    import torch
    from torch import nn

    class SpectrumNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(bins // 1024),
                nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4),
                nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool1d(4),
            )
            flat = 32 * 32
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(flat, 48), nn.ReLU(),
                                      nn.Linear(48, n_classes))

        def forward(self, x):                      # x: (batch, bins) -> logits (batch, classes)
            return self.head(self.body(x.unsqueeze(1)))

    class WithSoftmax(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x), dim=-1)

    if bins % 1024 or bins < 2048:
        raise ValueError(f"--bins must be a multiple of 1024, at least 2048, got {bins}")
    net = SpectrumNet()
    return net, WithSoftmax


def train(X, y, Xv, yv, *, n_classes: int, epochs: int, batch: int, lr: float, seed: int):
    import torch
    from torch import nn
    from tqdm import tqdm

    torch.manual_seed(seed)
    net, wrap = build_net(X.shape[1], n_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(X) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.02)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=steps, desc="training", unit="batch")
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        total, correct, seen = 0.0, 0, 0
        for i in range(0, len(X), batch):
            idx = perm[i:i + batch]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            bar.update(1)
        val = accuracy(net, Xv, yv)
        history.append({"epoch": epoch + 1, "loss": total / seen, "train_top1": correct / seen, "val_top1": val})
        bar.set_postfix(loss=f"{total / seen:.4f}", val=f"{val:.4f}")
    bar.close()
    net.eval()
    return wrap(net).eval(), history


def accuracy(net, X, y, batch: int = 1024) -> float:
    import torch

    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            correct += int((net(torch.from_numpy(X[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    net.train()
    return correct / len(X)


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------

def export_onnx(model, bins: int, path: Path, opset: int = 17) -> None:
    import torch

    dummy = torch.zeros(2, bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    import onnx

    m = onnx.load(str(path))
    m.producer_name = "ionstream tools/train_model.py"
    m.doc_string = "ionstream spectrum classifier: (batch, bins) features -> (batch, classes) probabilities"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


TORCH_PROGRAM = "model.pt2"
TORCH_CHECK_SPECTRA = 1000
TORCH_CHECK_SEED = 515151


def export_torch(model, bins: int, path: Path) -> None:
    """Write ``model`` (features -> probabilities) as a torch.export program with a dynamic batch axis."""
    import torch
    from torch.export import Dim

    model = model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(4, bins),),
                                      dynamic_shapes={"x": {0: Dim("batch", min=1, max=1 << 20)}})
    torch.export.save(program, str(path))


def net_from_onnx(onnx_path: Path, bins: int, n_classes: int):
    """The training network with ``model.onnx``'s weights (the initializers carry the state_dict names)."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    net, wrap = build_net(bins, n_classes)
    model = wrap(net)
    model.load_state_dict(state, strict=True)   # any architecture change fails here, by name
    return model.eval()


def check_torch_program(pt2: Path, onnx_path: Path, X: np.ndarray) -> dict:
    """The saved program against ONNX Runtime CPU on the same spectra: top-1 agreement, max |dp|."""
    import onnxruntime as ort
    import torch

    module = torch.export.load(str(pt2)).module()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {INPUT_NAME: X[i:i + 500]})[0] for i in range(0, len(X), 500)])
    with torch.inference_mode():
        got = np.concatenate([module(torch.from_numpy(X[i:i + 500])).numpy() for i in range(0, len(X), 500)])
        one = module(torch.from_numpy(X[:1])).numpy()      # batch 1 too: the axis is really dynamic
    return {"spectra": len(X), "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_prob_diff": float(max(np.abs(got - ref).max(), np.abs(one - ref[:1]).max())),
            "against": f"model.onnx on onnxruntime {ort.__version__} CPU"}


def write_torch_program(model, bundle_dir: Path, spec: FeatureSpec, *, workers: int = 2,
                        spectra: int = TORCH_CHECK_SPECTRA) -> dict:
    """Export ``model`` to ``bundle_dir/model.pt2``, check it against model.onnx; returns the
    ``torch_program`` entry for model.json. Raises SystemExit if the two disagree."""
    import torch

    from inference.bundle import TORCH_PROGRAM_FORMAT, sha256_file

    path = bundle_dir / TORCH_PROGRAM
    export_torch(model, spec.bins, path)
    X, _ = make_dataset(spectra, TORCH_CHECK_SEED, spec, workers=workers, variants=False,
                        desc="torch program check spectra")
    check = check_torch_program(path, bundle_dir / "model.onnx", X)
    if check["top1_agreement"] < 0.999 or check["max_abs_prob_diff"] > 1e-3:
        path.unlink()
        raise SystemExit(f"torch program disagrees with model.onnx: {check}; not written")
    check["seed"] = TORCH_CHECK_SEED
    return {"path": TORCH_PROGRAM, "sha256": sha256_file(path), "format": TORCH_PROGRAM_FORMAT,
            "torch": torch.__version__.split("+")[0], "check": check}


def export_torch_only(bundle_dir: Path, workers: int, spectra: int = TORCH_CHECK_SPECTRA) -> int:
    """``--export-torch``: add model.pt2 to an existing bundle (no training)."""
    from inference.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model = net_from_onnx(bundle.onnx_path, bundle.feature_spec.bins, bundle.n_classes)
    entry = write_torch_program(model, bundle.path, bundle.feature_spec, workers=workers, spectra=spectra)
    meta = json.loads(bundle.json_path.read_text())
    meta["torch_program"] = entry
    bundle.json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {bundle.path / TORCH_PROGRAM}: {entry['check']}", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "inference" / "models" / "default",
                    help="bundle directory to write (default: the shipped bundle)")
    ap.add_argument("--seed", type=int, default=20240601, help="training seed (data and weights)")
    ap.add_argument("--train", type=int, default=70000, help="training spectra")
    ap.add_argument("--val", type=int, default=2500, help="held-out spectra (a separate seed)")
    ap.add_argument("--epochs", type=int, default=12)
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
                    help="no training: add model.pt2 (torch.export program of model.onnx's network) to BUNDLE")
    ap.add_argument("--torch-check-spectra", type=int, default=TORCH_CHECK_SPECTRA, metavar="N",
                    help="fresh spectra the torch program is checked on against model.onnx (default %(default)s)")
    args = ap.parse_args(argv)
    if args.export_torch is not None:
        import torch

        torch.set_num_threads(args.threads)
        return export_torch_only(args.export_torch, args.workers, args.torch_check_spectra)

    import torch
    import onnx

    from instrument.spectrum_model import CLASS_LABELS, DEFAULT_N_SAMPLES

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
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

    t0 = time.perf_counter()
    model, history = train(X, y, Xv, yv, n_classes=len(CLASS_LABELS), epochs=args.epochs, batch=args.batch,
                           lr=args.lr, seed=args.seed)
    t_train = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    export_onnx(model, args.bins, onnx_path)

    # Held-out accuracy through ONNX Runtime, the way the daemon will run it.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs = np.concatenate([sess.run(None, {INPUT_NAME: Xv[i:i + 512]})[0] for i in range(0, len(Xv), 512)])
    with torch.no_grad():
        ref = model(torch.from_numpy(Xv[:256])).numpy()
    drift = float(np.abs(probs[:256] - ref).max())
    pred = probs.argmax(1)
    top1 = float((pred == yv).mean())
    confusion = np.zeros((len(CLASS_LABELS), len(CLASS_LABELS)), int)
    np.add.at(confusion, (yv, pred), 1)
    per_class = {CLASS_LABELS[c]: float(confusion[c, c] / max(1, confusion[c].sum())) for c in range(len(CLASS_LABELS))}

    from inference.bundle import FORMAT, FORMAT_VERSION, sha256_file

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": "default", "version": MODEL_VERSION,
        "description": "1-D CNN over the binned m/z profile; classes of instrument.spectrum_model",
        "labels": list(CLASS_LABELS),
        "input": {"name": INPUT_NAME, **spec.to_dict()},
        "output": {"name": OUTPUT_NAME, "kind": "probabilities"},
        "files": {"fp32": {"path": "model.onnx", "sha256": sha256_file(onnx_path)}},
        "torch_program": write_torch_program(model, args.out, spec, workers=args.workers,
                                             spectra=args.torch_check_spectra),
        "training": {
            "seed": args.seed, "train_spectra": args.train, "epochs": args.epochs, "batch": args.batch,
            "lr": args.lr, "instrument_variants": variants, "data_seconds": round(t_data, 1),
            "train_seconds": round(t_train, 1), "threads": args.threads,
            "history": [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()} for h in history],
        },
        "evaluation": {
            "held_out_top1": round(top1, 5), "held_out_spectra": args.val, "held_out_seed": args.seed + 1,
            "per_class_top1": {k: round(v, 5) for k, v in per_class.items()},
            "confusion": confusion.tolist(), "onnx_vs_torch_max_abs": drift,
            "backend": f"onnxruntime {ort.__version__} CPU",
        },
        "provenance": {
            "tool": "tools/train_model.py", "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "git_commit": git_commit(), "spectrum_model": "instrument.spectrum_model.random_spectrum",
            "spectrum_samples": DEFAULT_N_SAMPLES, "torch": torch.__version__, "onnx": onnx.__version__,
            "opset": 17, "python": platform.python_version(),
        },
    }
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = onnx_path.stat().st_size
    print(f"wrote {args.out}/model.onnx ({size / 1024:.0f} KiB) and model.json: held-out top-1 {top1:.4f} "
          f"on {args.val} spectra; data {t_data:.0f} s, training {t_train:.0f} s", file=sys.stderr)
    print("per class: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
