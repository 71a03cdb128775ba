"""``ionstream evaluate``: score any bundle on labelled data, with the training report's layout.

Spectra are read and turned into features as for training, but a spectrum that covers the
model's window only in part is scored, not refused: the OOD gate (inference/ood.py, as in the
daemon) labels it ``unknown``, and the report counts how often and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.bundle import BundleError, load_bundle
from inference.ood import OodError, OodGate
from inference.training import TrainingError
from inference.training.data import MzmlReader, load_dataset
from inference.training.labels import parse_labels
from inference.training.report import score, write_report


@dataclass
class EvalResult:
    report: Path
    scores: dict[str, Any]


def evaluate(bundle_path: str | Path, labels_path: str | Path, out: str | Path, *, precision: str = "fp32",
             mzml_reader: MzmlReader | None = None, min_coverage: float | None = None,
             max_score: float | None = None, progress: bool = True) -> EvalResult:
    """Score the bundle at ``bundle_path`` on the labelled spectra of ``labels_path``; report into ``out``."""
    from inference.training.export import predict

    try:
        bundle = load_bundle(bundle_path)
        onnx_path = bundle.onnx_for(precision)
        gate = OodGate.from_bundle(bundle, min_coverage=min_coverage, max_score=max_score)
    except (BundleError, OodError) as exc:
        raise TrainingError(str(exc)) from None
    table = parse_labels(labels_path)
    ds = load_dataset(table, bundle.feature_spec, labels=bundle.labels, mzml_reader=mzml_reader,
                      min_coverage=None, progress=progress)
    probs = predict(onnx_path, ds.X, bundle.input_name)
    verdicts = gate.judge_batch([bundle.labels[i] for i in probs.argmax(1)], ds.X, ds.coverage)
    scores = score(ds.y, probs, bundle.labels, verdicts)
    scores["precision"] = precision
    per_file = []
    for fi, f in enumerate(ds.files):
        m = ds.file == fi
        acc = float((probs[m].argmax(1) == ds.y[m]).mean()) if m.any() else None
        unk = sum(1 for v, keep in zip(verdicts, m) if keep and v.unknown)
        per_file.append(f"| `{f}` | {int(m.sum())} | {'–' if acc is None else f'{100 * acc:.1f} %'} | {unk} |")
    intro = [f"Bundle: `{bundle.path}` ({bundle.name} {bundle.version}, {precision}); labels: `{table.origin}` "
             f"({len(ds)} labelled spectra in {len(ds.files)} files).",
             f"OOD gate: unknown below {100 * gate.min_coverage:.0f} % coverage of m/z {bundle.feature_spec.mz_min:g} .. "
             f"{bundle.feature_spec.mz_max:g}" + (f" or above ood_score {gate.max_score:g}." if gate.stats is not None
                                                   else " (this bundle has no OOD statistics: coverage only)."),
             "", "| file | spectra | top-1 | unknown |", "|---|---|---|---|", *per_file]
    report = write_report(Path(out), f"Evaluation of {bundle.name} {bundle.version}", intro, scores, bundle.labels)
    return EvalResult(report, scores)
