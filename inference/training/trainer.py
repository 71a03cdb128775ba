"""``ionstream train``: labelled runs -> a model bundle and its report.

Steps: parse the labels (:mod:`.labels`); choose the feature window (the m/z range every file
covers, unless given); read every labelled spectrum into the daemon's feature vector
(:mod:`.data`); hold out whole runs (:mod:`.split`); train (:mod:`.net`); export ONNX, make and
score FP16/INT8, fit the OOD statistics, write model.json (:mod:`.export`); write the report
(:mod:`.report`). :func:`build_bundle` is the part after the data, shared with
tools/train_model.py (simulator spectra): one training implementation.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsp.features import FeatureSpec
from inference.ood import OodGate, OodStats
from inference.training import TrainingError
from inference.training.data import Dataset, MzmlReader, common_window, load_dataset
from inference.training.labels import parse_labels
from inference.training.net import FitConfig
from inference.training.report import score, write_report
from inference.training.split import split_by_run

log = logging.getLogger("ionstream.train")


@dataclass
class TrainOptions:
    """Settings of one training run (m/z for the window, bins of the feature vector)."""

    bins: int = 2048
    mz_min: float | None = None
    mz_max: float | None = None
    val_fraction: float = 0.25
    fit: FitConfig = field(default_factory=FitConfig)
    name: str = "lab-model"
    version: str = "1.0.0"
    description: str = "1-D CNN over the binned m/z profile, trained on labelled runs"
    ood_components: int = 32
    calibration_spectra: int = 512
    force: bool = False
    mzml_reader: MzmlReader | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class TrainResult:
    bundle: Path
    report: Path
    scores: dict[str, Any] | None
    seconds: dict[str, float]
    device: str


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise TrainingError(f"{out}: exists and is not empty; write each model to a new folder (so you can "
                                f"roll back to the old one) or pass --force to replace it")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)


def balance_table(ds: Dataset, train_runs: tuple[int, ...], val_runs: tuple[int, ...]) -> list[str]:
    """Markdown: spectra and runs per class on each side of the split."""
    lines = ["| class | training runs | training spectra | held-out runs | held-out spectra |", "|---|---|---|---|---|"]
    for c, lab in enumerate(ds.labels):
        mask = ds.y == c
        tr = mask & np.isin(ds.run, train_runs)
        va = mask & np.isin(ds.run, val_runs)
        lines.append(f"| {lab} | {len(set(ds.run[tr].tolist()))} | {int(tr.sum())} | "
                     f"{len(set(ds.run[va].tolist()))} | {int(va.sum())} |")
    return lines


def train(labels_path: str | Path, out: str | Path, opts: TrainOptions) -> TrainResult:
    """Train a bundle from the labels table at ``labels_path`` into the folder ``out``."""
    from inference.training.net import check_bins

    out = Path(out)
    t0 = time.perf_counter()
    check_bins(opts.bins)
    table = parse_labels(labels_path)
    if opts.mz_min is None or opts.mz_max is None:
        lo, hi = common_window(table, opts.mzml_reader)
        lo = lo if opts.mz_min is None else opts.mz_min
        hi = hi if opts.mz_max is None else opts.mz_max
    else:
        lo, hi = opts.mz_min, opts.mz_max
    try:
        spec = FeatureSpec(mz_min=float(lo), mz_max=float(hi), bins=opts.bins)
    except ValueError as exc:
        raise TrainingError(f"feature window: {exc}") from None
    _prepare_out(out, opts.force)
    ds = load_dataset(table, spec, mzml_reader=opts.mzml_reader, progress=opts.fit.progress)
    split = split_by_run(ds, opts.val_fraction, opts.fit.seed)
    for w in split.warnings:
        log.warning("%s", w)
    balance = balance_table(ds, split.train_runs, split.val_runs)
    print("\n".join(balance), file=sys.stderr)
    t_data = time.perf_counter() - t0
    held_out = [ds.runs[r] for r in split.val_runs]
    intro = [f"Labels: `{table.origin}` ({len(table.rows)} rows, {len(ds.files)} files, {len(ds.runs)} runs, "
             f"{len(ds)} labelled spectra). Feature window m/z {spec.mz_min:g} .. {spec.mz_max:g}, {spec.bins} bins.",
             "", "Class balance (runs are held out whole, never single scans):", "", *balance, ""]
    intro += [f"Held-out runs: {', '.join(f'`{r}`' for r in held_out) or 'none'}."]
    intro += [f"Warning: {w}." for w in split.warnings]
    return build_bundle(ds.subset(split.train), ds.subset(split.val), out, opts,
                        data_info={"labels_table": str(table.origin), "files": ds.files, "held_out_runs": held_out,
                                   "class_counts": ds.class_counts(), "split": "by run"},
                        intro=intro, t_data=t_data)


def build_bundle(tr: Dataset, va: Dataset, out: Path, opts: TrainOptions, *, data_info: dict[str, Any],
                 intro: list[str], t_data: float = 0.0, tool: str = "ionstream train") -> TrainResult:
    """Train on ``tr``, score on ``va`` (may be empty), write the bundle and report into ``out``."""
    from inference.training.export import export_onnx, make_variants, predict, provenance, write_bundle
    from inference.training.torch_program import write_torch_program
    from inference.training.net import fit, schedule

    labels, spec = tr.labels, tr.spec
    if len(tr) == 0:
        raise TrainingError("no training spectra")
    t0 = time.perf_counter()
    model, history, device = fit(tr.X, tr.y, va.X, va.y, len(labels), opts.fit)
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, spec.bins, out / "model.onnx", producer=tool)
    ood = OodStats.fit(tr.X, opts.ood_components, seed=opts.fit.seed)
    probs = predict(out / "model.onnx", va.X)
    gate = OodGate(spec, ood)
    verdicts = gate.judge_batch([labels[i] for i in probs.argmax(1)], va.X, va.coverage) if len(va) else None
    scores = score(va.y, probs, labels, verdicts) if len(va) else None
    rng = np.random.default_rng(opts.fit.seed)
    calib = tr.X[np.sort(rng.choice(len(tr), min(opts.calibration_spectra, len(tr)), replace=False))]
    variants = make_variants(out, calib, va.X, va.y)
    # the torch backend's program, checked against model.onnx on held-out (else training) spectra
    torch_program = write_torch_program(model, out, spec.bins, (va.X if len(va) else tr.X)[:1000])
    t_export = time.perf_counter() - t1
    seconds = {"data": round(t_data, 1), "training": round(t_fit, 1), "export": round(t_export, 1)}
    epochs, batch = schedule(len(tr), opts.fit)
    training = {**asdict(opts.fit), "epochs": epochs, "batch": batch, "train_spectra": len(tr), "seconds": seconds, "device": device,
                "history": [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()} for h in history],
                "data": data_info}
    training.pop("progress", None)
    evaluation: dict[str, Any] = {"held_out_spectra": len(va), "backend": "onnxruntime CPU"}
    if scores:
        evaluation.update(held_out_top1=round(scores["top1"], 5), confusion=scores["confusion"],
                          per_class=scores["per_class"], unknown=scores.get("unknown"))
    prov = provenance(tool, opts.command)
    bundle = write_bundle(out, name=opts.name, version=opts.version, description=opts.description, labels=labels,
                          spec=spec, ood=ood, variants=variants, training=training, evaluation=evaluation,
                          provenance=prov, torch_program=torch_program)
    extra = ["## Precision variants (ONNX Runtime CPU, held-out spectra)", ""]
    for p in ("fp16", "int8"):
        v = variants.get(p)
        if v is None:
            extra.append(f"- {p}: not made ({variants.get('errors', {}).get(p, 'unknown error')})")
        elif "top1" in v:
            extra.append(f"- {p}: `{v['path']}` top-1 {100 * v['top1']:.1f} % (FP32 {100 * v['fp32_top1_same_spectra']:.1f} %), "
                         f"agrees with FP32 on {100 * v['agreement_with_fp32']:.1f} % of spectra")
        else:
            extra.append(f"- {p}: `{v['path']}` (not scored: no held-out spectra)")
    extra += ["", f"Timings: reading and features {seconds['data']} s, training {seconds['training']} s on {device} "
              f"({opts.fit.threads} threads), export and variants {seconds['export']} s.", "",
              f"Deploy: `ionstream run --model {out}` (or set `inference.model` and send SIGHUP to a running daemon)."]
    report = write_report(out / "report", f"Model {opts.name} {opts.version}: held-out runs", intro, scores, labels,
                          history, extra)
    log.info("wrote %s (%s) and %s", out, ", ".join(bundle.files), report)
    return TrainResult(out, report, scores, seconds, device)
