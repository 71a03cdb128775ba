"""`ionstream train` and `ionstream evaluate` end to end on labelled simulated captures.

The captures are made here: a non-default instrument model (inference.training.simruns
.lab_instrument: 8192 samples over m/z 100..2050, R = 3000), three classes named by this test,
three runs per class for training and a fourth run per class recorded separately (another seed,
another miscalibration and baseline drift) for scoring. Needs PyTorch (the [train] extra).
"""
import hashlib
import json
import subprocess

import numpy as np
import pytest

from inference.training.simruns import lab_instrument, write_class_run
from support import IONSTREAM

torch = pytest.importorskip("torch", reason="training needs PyTorch: pip install '.[train]' (CPU build)")

CLASSES = {"solvent_blank": 0, "digest": 1, "peg_contamination": 4}
SCANS_PER_RUN = 150


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """labels.csv over 3 runs per class (run column = the day it was recorded) and test/ (the 4th)."""
    root = tmp_path_factory.mktemp("lab")
    model = lab_instrument(n_samples=8192)
    rows = ["file,scans,label,run"]
    for name, cls in CLASSES.items():
        for day in range(3):
            path = root / "runs" / f"{name}_day{day}.isc"
            path.parent.mkdir(exist_ok=True)
            write_class_run(path, cls, n_scans=SCANS_PER_RUN, seed=10 + day, model=model,
                            miscalibration_ppm=6.0 * (day - 1))
            rows.append(f"runs/{path.name},all,{name},{name}-day{day}")
        (root / "test" / name).mkdir(parents=True)
        write_class_run(root / "test" / name / "day4.isc", cls, n_scans=SCANS_PER_RUN // 2, seed=777, model=model,
                        miscalibration_ppm=10.0)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def run_cli(*args, timeout=300):
    p = subprocess.run([*IONSTREAM, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def trained(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "v1"
    summary = run_cli("train", lab / "labels.csv", "--out", out, "--seed", "7", "--min-steps", "400",
                      "--no-progress", "--json")
    return out, summary


def test_bundle_like_the_default(trained):
    from inference.bundle import load_bundle
    from inference.ood import OodGate

    out, summary = trained
    b = load_bundle(out)  # checks every graph's I/O and checksum
    assert b.labels == tuple(sorted(CLASSES))
    assert set(b.files) == {"fp32", "fp16", "int8"}
    assert b.feature_spec.mz_min >= 100.0 and b.feature_spec.mz_max <= 2050.0
    meta = b.meta
    assert meta["training"]["data"]["split"] == "by run" and len(meta["training"]["data"]["held_out_runs"]) == 3
    for p in ("fp16", "int8"):
        assert meta["files"][p]["eval_spectra"] == 3 * SCANS_PER_RUN
    assert meta["provenance"]["torch"] == torch.__version__
    # the torch backend's program, checked against model.onnx on the held-out spectra
    check = meta["torch_program"]["check"]
    assert (out / "model.pt2").exists() and check["top1_agreement"] == 1.0 and check["max_abs_prob_diff"] < 1e-4
    gate = OodGate.from_bundle(b)
    assert gate.stats is not None and gate.stats.components.shape[1] == b.feature_spec.bins
    report = out / "report"
    text = (report / "report.md").read_text()
    for needle in ("Class balance", "| digest | 2 | 300 | 1 | 150 |", "precision", "recall", "confusion.png",
                   "training_curve.png", "int8"):
        assert needle in text
    for png in ("confusion.png", "training_curve.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["scores"]["spectra"] == 3 * SCANS_PER_RUN


def test_fourth_run_scored_by_evaluate(lab, trained, tmp_path):
    """Held-out accuracy >= 95 % on runs not used in training, recorded separately."""
    out, _ = trained
    ev = run_cli("evaluate", out, lab / "test", "--out", tmp_path / "eval", "--no-progress", "--json")
    s = ev["scores"]
    assert s["spectra"] == 3 * (SCANS_PER_RUN // 2)
    assert s["top1"] >= 0.95, s
    assert s["unknown"]["fraction"] <= 0.05, s["unknown"]  # in-distribution: rarely unknown
    assert (tmp_path / "eval" / "confusion.png").is_file()
    # INT8 graph of the same bundle, same data
    ev8 = run_cli("evaluate", out, lab / "test", "--out", tmp_path / "eval8", "--precision", "int8",
                  "--no-progress", "--json")
    assert ev8["scores"]["top1"] >= 0.9


def test_evaluate_counts_narrow_window_as_unknown(lab, trained, tmp_path):
    """A run whose spectra cover a narrow m/z window: every scan is labelled unknown (coverage)."""
    from instrument.capture import CaptureWriter
    from instrument.frames import encode_scan

    out, _ = trained
    (tmp_path / "narrow" / "digest").mkdir(parents=True)
    (tmp_path / "narrow" / "solvent_blank").mkdir(parents=True)
    mz = np.linspace(400.0, 430.0, 4000)
    rng = np.random.default_rng(0)
    for cls in ("digest", "solvent_blank"):
        with CaptureWriter(tmp_path / "narrow" / cls / "ft.isc", {"source": {"url": "test"}}) as w:
            for k in range(5):
                y = (100 + 2000 * np.exp(-0.5 * ((mz - 415.0 - k) / 0.005) ** 2) + rng.normal(0, 3, mz.size))
                w.append(encode_scan(y.astype(np.float32), sequence=k, scan_number=k + 1, device_time_ns=k * 10**8,
                                     mz_axis=mz), host_time_ns=k)
    ev = run_cli("evaluate", out, tmp_path / "narrow", "--out", tmp_path / "eval", "--no-progress", "--json")
    u = ev["scores"]["unknown"]
    assert u["count"] == 10 and u["by_reason"] == {"coverage": 10}
    assert "labelled `unknown`" in (tmp_path / "eval" / "report.md").read_text()


def test_same_seed_same_bundle(lab, tmp_path):
    """Training twice with one seed gives the same model.onnx bytes (a short run keeps this cheap)."""
    def once(name):
        out = tmp_path / name
        run_cli("train", lab / "labels.csv", "--out", out, "--seed", "3", "--epochs", "1", "--batch", "64",
                "--no-progress", "--json")
        return hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()

    assert once("a") == once("b")


def test_evaluate_refuses_labels_the_model_lacks(lab, trained, tmp_path):
    out, _ = trained
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{lab}/runs/digest_day0.isc,1-5,digest\n{lab}/runs/digest_day1.isc,1-5,lipid\n")
    p = subprocess.run([*IONSTREAM, "evaluate", str(out), str(csv), "--out", str(tmp_path / "e"), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "label(s) lipid are not classes of this model (digest, peg_contamination, solvent_blank)" in p.stderr
