"""Scores and the report a chemist reads: report.md with a confusion matrix and training curve (PNG).

:func:`score` computes top-1, per-class precision and recall, the confusion matrix and, given
the OOD gate's verdicts, how often and why a label became ``unknown``. :func:`write_report`
writes ``report.md``, ``confusion.png`` and (after training) ``training_curve.png`` into a
folder; the pictures need matplotlib (``pip install 'ionstream[train]'`` brings it), and without
it the report says so and keeps the tables.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from inference.ood import OodVerdict


def score(y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
          verdicts: list[OodVerdict] | None = None) -> dict[str, Any]:
    """Scores of predictions ``probs`` (n, classes) against true class indices ``y`` (n,).

    ``top1`` counts the model's own label for every spectrum; with ``verdicts``, ``unknown``
    says how many became ``unknown`` (by reason) and ``top1_accepted`` is the top-1 over the rest.
    Precision of a class is None when nothing was predicted as it.
    """
    n_classes = len(labels)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {}
    for c, lab in enumerate(labels):
        support, predicted, hit = int(confusion[c].sum()), int(confusion[:, c].sum()), int(confusion[c, c])
        per_class[lab] = {"support": support, "recall": hit / support if support else None,
                          "precision": hit / predicted if predicted else None}
    out: dict[str, Any] = {"spectra": int(len(y)), "top1": float((pred == y).mean()) if len(y) else None,
                           "per_class": per_class, "confusion": confusion.tolist()}
    if verdicts is not None:
        unknown = np.array([v.unknown for v in verdicts], bool)
        kinds = Counter("coverage" if "covers" in v.reason else "ood_score" for v in verdicts if v.unknown)
        accepted = ~unknown
        out["unknown"] = {"count": int(unknown.sum()), "fraction": float(unknown.mean()) if len(y) else 0.0,
                          "by_reason": dict(kinds)}
        out["top1_accepted"] = float((pred[accepted] == y[accepted]).mean()) if accepted.any() else None
        scores = [v.ood_score for v in verdicts if v.ood_score is not None]
        if scores:
            out["ood_score_percentiles"] = {str(p): round(float(np.percentile(scores, p)), 4) for p in (50, 95, 99)}
        out["coverage_min"] = float(min(v.coverage for v in verdicts)) if verdicts else None
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def confusion_png(confusion: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> Path | None:
    """Draw the confusion matrix (rows: true class, columns: predicted; counts and row %)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cm = np.asarray(confusion, float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2.0), dpi=110)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * rows[i, j]:.0f} %", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curve_png(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and train/held-out top-1 per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    a.plot(ep, [h["loss"] for h in history], marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    b.plot(ep, [h["train_top1"] for h in history], marker="o", label="training spectra")
    if any(h.get("val_top1") is not None for h in history):
        b.plot(ep, [h["val_top1"] for h in history], marker="s", label="held-out runs")
    b.set_xlabel("epoch")
    b.set_ylabel("top-1")
    b.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def scores_markdown(s: dict[str, Any], labels: tuple[str, ...]) -> list[str]:
    """Markdown lines: overall figures, per-class precision/recall, the confusion matrix as a table."""
    lines = [f"- spectra scored: {s['spectra']}", f"- top-1 (the model's label): **{_pct(s['top1'])}**"]
    if "unknown" in s:
        u = s["unknown"]
        why = ", ".join(f"{k}: {v}" for k, v in sorted(u["by_reason"].items())) or "none"
        lines += [f"- labelled `unknown` by the out-of-distribution gate: {u['count']} ({_pct(u['fraction'])}; {why})",
                  f"- top-1 of the spectra not labelled unknown: {_pct(s['top1_accepted'])}"]
        if "ood_score_percentiles" in s:
            p = s["ood_score_percentiles"]
            lines.append(f"- ood_score median {p['50']}, 95th percentile {p['95']}, 99th {p['99']} "
                         f"(1.0 = edge of the training data)")
    lines += ["", "Per class (precision: of the spectra called this class, how many were; recall: of this "
              "class's spectra, how many were found):", ""]
    lines += _table(["class", "spectra", "precision", "recall"],
                    [[lab, v["support"], _pct(v["precision"]), _pct(v["recall"])] for lab, v in s["per_class"].items()])
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
    lines += _table(["true \\ predicted", *labels], [[lab, *row] for lab, row in zip(labels, s["confusion"])])
    return lines


def write_report(folder: Path, title: str, intro: list[str], scores: dict[str, Any] | None,
                 labels: tuple[str, ...], history: list[dict[str, Any]] | None = None,
                 extra: list[str] | None = None) -> Path:
    """Write ``report.md`` (+ PNGs and ``scores.json``) into ``folder``; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *intro, ""]
    if scores is not None:
        lines += ["## Scores", "", *scores_markdown(scores, labels), ""]
        png = confusion_png(np.array(scores["confusion"]), labels, folder / "confusion.png", title)
        lines += ["![confusion matrix](confusion.png)" if png else
                  "(no confusion.png: matplotlib is not installed; pip install 'ionstream[train]')", ""]
        (folder / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    if history:
        lines += ["## Training curve", ""]
        lines += _table(["epoch", "loss", "training top-1", "held-out top-1"],
                        [[h["epoch"], f"{h['loss']:.4f}", _pct(h["train_top1"]), _pct(h.get("val_top1"))]
                         for h in history])
        png = curve_png(history, folder / "training_curve.png")
        lines += ["", "![training curve](training_curve.png)" if png else "(no training_curve.png: no matplotlib)", ""]
    if extra:
        lines += [*extra, ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
