"""`ionstream evaluate BUNDLE LABELS`: score a model bundle on labelled runs."""
from __future__ import annotations

import argparse
import json
import sys

HELP = "score a model bundle on labelled runs (same report as `ionstream train`)"
DESCRIPTION = (
    "Score any model bundle on labelled runs (LABELS as for `ionstream train`: a CSV or a folder per "
    "class). Writes report.md, confusion.png and scores.json to --out: top-1, per-class precision "
    "and recall, the confusion matrix, and how often the out-of-distribution gate labels a "
    "spectrum `unknown` (low m/z coverage of the model's window, or unlike the training spectra)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="model bundle folder (model.onnx + model.json)")
    parser.add_argument("labels", metavar="LABELS", help="labels CSV, or a folder with a sub-folder per class")
    parser.add_argument("-o", "--out", metavar="DIR", default="evaluation", help="report folder (default %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="which graph of the bundle to score (default %(default)s)")
    parser.add_argument("--min-coverage", type=float,
                        help="unknown below this fraction of the m/z window (default: the bundle's, else 0.5)")
    parser.add_argument("--max-ood-score", type=float,
                        help="unknown above this ood_score (default: the bundle's, else 1.5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")


def main(args: argparse.Namespace) -> int:
    from inference.training import TrainingError
    from inference.training.evaluate import evaluate
    from ionstream.cli.train import mzml_reader

    try:
        result = evaluate(args.bundle, args.labels, args.out, precision=args.precision, mzml_reader=mzml_reader(),
                          min_coverage=args.min_coverage, max_score=args.max_ood_score, progress=not args.no_progress)
    except (TrainingError, ValueError) as exc:
        print(f"ionstream evaluate: {exc}", file=sys.stderr)
        return 2
    s = result.scores
    if args.json:
        print(json.dumps({"report": str(result.report), "scores": s}, default=str))
    else:
        u = s["unknown"]
        print(f"top-1 {100 * s['top1']:.1f} % on {s['spectra']} spectra; unknown {u['count']} "
              f"({100 * u['fraction']:.1f} %); report {result.report}")
    return 0
