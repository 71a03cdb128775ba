"""`ionstream train LABELS --out BUNDLE_DIR`: teach the classifier the lab's own classes."""
from __future__ import annotations

import argparse
import json
import sys

HELP = "train a classifier bundle on labelled runs (captures, mzML) and write its report"
DESCRIPTION = (
    "Train a classifier on the lab's labelled runs. LABELS is a CSV (file,scans,label[,run]) or a "
    "folder with one sub-folder of runs per class (docs/training.md). Features come from the "
    "daemon's own code; whole runs are held out for scoring. Writes BUNDLE_DIR/model.onnx, "
    "model.fp16.onnx, model.int8.onnx, model.json, ood.npz and BUNDLE_DIR/report/ (report.md, "
    "confusion.png, training_curve.png). Deploy with `ionstream run --model BUNDLE_DIR`. "
    "Needs the [train] extra (PyTorch, CPU build)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", metavar="LABELS", help="labels CSV, or a folder with a sub-folder per class")
    parser.add_argument("-o", "--out", metavar="BUNDLE_DIR", required=True,
                        help="new folder for the bundle (keep the old one to roll back)")
    parser.add_argument("--force", action="store_true", help="replace BUNDLE_DIR if it is not empty")
    parser.add_argument("--name", default="lab-model", help="model name (default %(default)s)")
    parser.add_argument("--model-version", default="1.0.0", help="model version (default %(default)s)")
    parser.add_argument("--mz-min", type=float, help="feature window start, m/z (default: what every file covers)")
    parser.add_argument("--mz-max", type=float, help="feature window end, m/z (default: what every file covers)")
    parser.add_argument("--bins", type=int, default=2048, help="feature bins, a multiple of 1024 (default %(default)s)")
    parser.add_argument("--epochs", type=int,
                        help="passes over the training spectra (default: enough for --min-steps, at least 3)")
    parser.add_argument("--batch", type=int, help="spectra per step (default: 128; n/16 for small data sets)")
    parser.add_argument("--min-steps", type=int, default=600,
                        help="optimiser steps to aim for when --epochs is not given (default %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed: same data + seed = same bundle (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.25,
                        help="fraction of each class's runs held out for scoring (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for training; more only help on an idle machine (default %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when torch sees one (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def mzml_reader():
    """The mzML reader for inference.training (profile spectra; MS level filtering is the labels' job)."""
    from ionstream.offline.spectra import read_mzml_spectra

    return read_mzml_spectra


def main(args: argparse.Namespace) -> int:
    from inference.training import TrainingError

    try:
        from inference.training.net import FitConfig
        from inference.training.trainer import TrainOptions, train

        fit = FitConfig(epochs=args.epochs, batch=args.batch, min_steps=args.min_steps, lr=args.lr, seed=args.seed, threads=args.threads,
                        device=args.device, progress=not args.no_progress)
        opts = TrainOptions(bins=args.bins, mz_min=args.mz_min, mz_max=args.mz_max, val_fraction=args.val_fraction,
                            fit=fit, name=args.name, version=args.model_version, force=args.force,
                            mzml_reader=mzml_reader(), command=["ionstream", *sys.argv[1:]])
        result = train(args.labels, args.out, opts)
    except (TrainingError, ValueError) as exc:
        print(f"ionstream train: {exc}", file=sys.stderr)
        return 2
    s = result.scores
    if args.json:
        print(json.dumps({"bundle": str(result.bundle), "report": str(result.report), "seconds": result.seconds,
                          "device": result.device, "scores": s}, default=str))
    else:
        top1 = "no held-out runs" if s is None else f"held-out top-1 {100 * s['top1']:.1f} % on {s['spectra']} spectra"
        print(f"{result.bundle}: {top1}; training {result.seconds['training']} s on {result.device}; "
              f"report {result.report}")
    return 0
