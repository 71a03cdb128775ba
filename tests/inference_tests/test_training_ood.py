"""inference/ood.py: m/z coverage, the OOD score and the unknown gate (no torch needed)."""
import json
import shutil

import numpy as np
import pytest

from dsp.features import FeatureExtractor, FeatureSpec
from inference.bundle import load_bundle
from inference.ood import UNKNOWN, OodError, OodGate, OodStats, coverage
from instrument.spectrum_model import default_model, random_spectrum

SPEC = FeatureSpec(mz_min=90.0, mz_max=2110.0, bins=2048)


def features(model, classes, n, seed):
    rng = np.random.default_rng(seed)
    ex = FeatureExtractor(SPEC)
    return np.stack([ex(model.axis, random_spectrum(classes[k % len(classes)], rng, model=model)[0])
                     for k in range(n)])


@pytest.fixture(scope="module")
def trained():
    """OOD statistics of the default instrument's spectra (all five classes)."""
    X = features(default_model(), [0, 1, 2, 3, 4], 300, seed=1)
    return OodStats.fit(X, k=16)


def test_coverage():
    assert coverage(90.0, 2110.0, SPEC) == 1.0
    assert coverage(0.0, 5000.0, SPEC) == 1.0
    assert coverage(350.0, 1600.0, SPEC) == pytest.approx(1250 / 2020)
    assert coverage(400.0, 430.0, SPEC) == pytest.approx(30 / 2020)
    assert coverage(3000.0, 4000.0, SPEC) == 0.0


def test_score_in_and_out_of_distribution(trained):
    """Fresh spectra of the training distribution score about 1 or less; a narrow-window spectrum
    (almost every bin empty) scores well above."""
    fresh = trained.score(features(default_model(), [0, 1, 2, 3, 4], 100, seed=2))
    assert np.median(fresh) < 1.0 and np.mean(fresh > 1.5) < 0.05
    # A narrow window: an explicit m/z axis over 400..430 with a few peaks.
    mz = np.linspace(400.0, 430.0, 3000)
    y = 100 + 1000 * np.exp(-0.5 * ((mz - 410.2) / 0.01) ** 2) + 400 * np.exp(-0.5 * ((mz - 421.7) / 0.01) ** 2)
    narrow = trained.score(FeatureExtractor(SPEC)(mz, y))[0]
    assert narrow > 3.0 * np.median(fresh) and narrow > 1.5


def test_gate_coverage_then_score(trained):
    gate = OodGate(SPEC, trained, min_coverage=0.5, max_score=1.5)
    x = features(default_model(), [1], 1, seed=5)[0]
    v = gate.judge("peptide", x, 95.0, 2100.0)
    assert not v.unknown and v.label == "peptide" and v.coverage > 0.99 and v.ood_score is not None
    v = gate.judge("small_molecule", x, 400.0, 430.0)
    assert v.unknown and v.label == UNKNOWN and "covers 1.5 %" in v.reason
    assert v.as_fields()["unknown_reason"] == v.reason
    far = np.zeros(SPEC.bins, np.float32)  # covered, but all intensity in the first 5 % of the window
    far[:100] = 1.0
    v = gate.judge("lipid", far, 95.0, 2100.0)
    assert v.unknown and "ood_score" in v.reason


def test_gate_without_stats_uses_coverage_only():
    gate = OodGate.from_bundle(load_bundle())  # the shipped bundle has no OOD statistics
    assert gate.stats is None
    v = gate.judge("peptide", np.zeros(gate.spec.bins, np.float32), 350.0, 1600.0)
    assert not v.unknown and v.ood_score is None  # 62 % of 90..2110
    assert gate.judge("small_molecule", np.zeros(gate.spec.bins, np.float32), 400, 430).unknown


def test_stats_round_trip_and_bundle_checks(trained, tmp_path):
    bundle_dir = tmp_path / "b"
    shutil.copytree(load_bundle().path, bundle_dir)
    trained.save(bundle_dir / "ood.npz")
    meta = json.loads((bundle_dir / "model.json").read_text())
    import hashlib

    meta["ood"] = {"path": "ood.npz", "sha256": hashlib.sha256((bundle_dir / "ood.npz").read_bytes()).hexdigest(),
                   "max_score": 2.5, "min_coverage": 0.3}
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    gate = OodGate.from_bundle(load_bundle(bundle_dir))
    assert (gate.max_score, gate.min_coverage) == (2.5, 0.3)
    np.testing.assert_array_equal(gate.stats.components, trained.components)
    assert OodGate.from_bundle(load_bundle(bundle_dir), max_score=1.2).max_score == 1.2
    # a replaced statistics file is refused, naming it
    OodStats.fit(np.random.default_rng(0).random((50, SPEC.bins), np.float32), k=4).save(bundle_dir / "ood.npz")
    with pytest.raises(OodError, match="ood.npz: SHA-256"):
        OodGate.from_bundle(load_bundle(bundle_dir))
    # statistics of another bin count
    meta["ood"]["sha256"] = None
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    OodStats.fit(np.random.default_rng(0).random((50, 512), np.float32), k=4).save(bundle_dir / "ood.npz")
    with pytest.raises(OodError, match="do not fit the model's 2048 bins"):
        OodGate.from_bundle(load_bundle(bundle_dir))


def test_bad_thresholds():
    with pytest.raises(ValueError, match="min_coverage"):
        OodGate(SPEC, None, min_coverage=1.5)
    with pytest.raises(ValueError, match="max_score"):
        OodGate(SPEC, None, max_score=0)


def test_evaluate_shipped_bundle_and_narrow_window(tmp_path, capsys):
    """`ionstream evaluate` scores the shipped bundle (no OOD statistics: coverage only) on runs of
    its own classes, and labels narrow-window scans unknown instead of answering with confidence."""
    from instrument.capture import CaptureWriter
    from instrument.frames import encode_scan
    from instrument.spectrum_model import CLASS_LABELS
    from inference.training.simruns import write_class_run
    from ionstream.cli import main as cli_main

    for cls in (1, 4):
        (tmp_path / "runs" / CLASS_LABELS[cls]).mkdir(parents=True)
        write_class_run(tmp_path / "runs" / CLASS_LABELS[cls] / "r.isc", cls, n_scans=10, seed=5, model=default_model())
    rc = cli_main(["evaluate", "", str(tmp_path / "runs"), "--out", str(tmp_path / "e1"), "--no-progress", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["scores"]["spectra"] == 20 and out["scores"]["top1"] >= 0.9
    assert out["scores"]["unknown"]["count"] == 0 and "ood_score_percentiles" not in out["scores"]

    # An FT-like scan over m/z 400..430 (1.5 % of the default model's 90..2110 window).
    (tmp_path / "narrow" / "small_molecule").mkdir(parents=True)
    (tmp_path / "narrow" / "peptide").mkdir(parents=True)
    mz = np.linspace(400.0, 430.0, 6000)
    for cls in ("small_molecule", "peptide"):
        with CaptureWriter(tmp_path / "narrow" / cls / "ft.isc", {"source": {"url": "test"}}) as w:
            y = (50 + 5000 * np.exp(-0.5 * ((mz - 412.3) / 0.004) ** 2)).astype(np.float32)
            w.append(encode_scan(y, sequence=0, scan_number=1, device_time_ns=0, mz_axis=mz), host_time_ns=0)
    rc = cli_main(["evaluate", "", str(tmp_path / "narrow"), "--out", str(tmp_path / "e2"), "--no-progress", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["scores"]["unknown"] == {"count": 2, "fraction": 1.0, "by_reason": {"coverage": 2}}
    assert "labelled `unknown` by the out-of-distribution gate: 2 (100.0 %; coverage: 2)" in \
        (tmp_path / "e2" / "report.md").read_text()
