"""Labelled data for `ionstream train` / `evaluate`: the labels table, reading, and every bad input.

No torch needed: each error is found before training starts. Captures are real files made with
the simulator's spectrum model on a non-default instrument (inference/training/simruns.py).
"""
import subprocess

import numpy as np
import pytest

from dsp.features import FeatureExtractor, FeatureSpec
from inference.training import TrainingError
from inference.training.data import common_window, load_dataset
from inference.training.labels import parse_labels, parse_selector
from inference.training.simruns import lab_instrument, write_class_run
from inference.training.split import split_by_run
from ionstream.cli import main as cli_main
from support import IONSTREAM

N_SCANS = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Folder per class: blank/ and polymer/, two runs each, scans 1..12 at 10 Hz."""
    root = tmp_path_factory.mktemp("labelled")
    model = lab_instrument(n_samples=8192)
    for name, cls in (("blank", 0), ("polymer", 4)):
        (root / name).mkdir()
        for r in range(2):
            write_class_run(root / name / f"run{r}.isc", cls, n_scans=N_SCANS, seed=r, model=model)
    return root


def write_csv(path, text):
    path.write_text(text)
    return path


def train_cli(capsys, *args):
    """`ionstream train` in-process: (exit code, stderr)."""
    rc = cli_main(["train", *map(str, args), "--no-progress"])
    return rc, capsys.readouterr().err


class TestSelector:
    def test_forms(self):
        assert parse_selector("", "x").kind == "all"
        assert parse_selector("*", "x").kind == "all"
        s = parse_selector("57", "x")
        assert (s.kind, s.lo, s.hi) == ("scans", 57, 57) and s.matches(57, 0) and not s.matches(58, 0)
        s = parse_selector("120-340", "x")
        assert s.matches(120, 0) and s.matches(340, 0) and not s.matches(341, 0)
        s = parse_selector("rt:1.5-2", "x")
        assert s.matches(0, 90.0) and not s.matches(0, 120.0) and not s.matches(0, 89.9)

    @pytest.mark.parametrize("text", ["abc", "5-3", "rt:2-1", "rt:3", "-4", "1.5"])
    def test_bad(self, text):
        with pytest.raises(TrainingError, match="labels.csv:3: scans .* is not a selection"):
            parse_selector(text, "labels.csv:3")


class TestLabelsTable:
    def test_folder_per_class(self, runs):
        t = parse_labels(runs)
        assert t.labels == ("blank", "polymer")
        assert len(t.rows) == 4 and len({r.run for r in t.rows}) == 4

    def test_csv_forms(self, runs, tmp_path):
        csv = write_csv(tmp_path / "labels.csv", f"""file,scans,label,run
# a comment line
{runs}/blank/run0.isc,all,blank,day1      # trailing comment
{runs}/blank/run1.isc,1-6,blank,day2
{runs}/polymer/run0.isc,rt:0-0.5,polymer
{runs}/polymer/run1.isc,polymer
""")
        t = parse_labels(csv)
        assert [r.selector.kind for r in t.rows] == ["all", "scans", "rt", "all"]
        assert [r.run for r in t.rows][:2] == ["day1", "day2"]
        spec = FeatureSpec(*common_window(t), bins=1024)
        ds = load_dataset(t, spec, progress=False)
        # blank run0: 12, blank run1: scans 1..6, polymer run0: t < 30 s = all 12 (10 Hz), run1: 12
        assert ds.class_counts() == {"blank": 18, "polymer": 24}
        assert sorted(set(ds.scan[ds.file == 1].tolist())) == list(range(1, 7))

    def test_features_are_the_daemons(self, runs):
        """The training vector of a scan is bit-identical to dsp.features on the frame's axis."""
        from instrument.capture import CaptureReader
        from instrument.frames import FrameDecoder
        from dsp.calibration import AxisCache

        t = parse_labels(runs)
        spec = FeatureSpec(*common_window(t), bins=1024)
        ds = load_dataset(t, spec, progress=False)
        with CaptureReader(t.files[0]) as r:
            frame = next(iter(FrameDecoder().feed(next(iter(r))[1])))
        h = frame.header
        want = FeatureExtractor(spec)(AxisCache().get(h.calibration, h.n_samples), frame.samples())
        np.testing.assert_array_equal(ds.X[(ds.file == 0) & (ds.scan == h.scan_number)][0], want)


class TestSplit:
    def test_whole_runs_held_out(self, runs):
        t = parse_labels(runs)
        ds = load_dataset(t, FeatureSpec(*common_window(t), bins=1024), progress=False)
        sp = split_by_run(ds, 0.25, seed=3)
        assert len(sp.val_runs) == 2  # one of the two runs of each class
        for r in range(len(ds.runs)):
            on = ds.run == r
            assert sp.val[on].all() or sp.train[on].all(), "a run was split between training and held-out"
        assert set(ds.y[sp.val].tolist()) == {0, 1} and set(ds.y[sp.train].tolist()) == {0, 1}
        assert split_by_run(ds, 0.25, seed=3).val_runs == sp.val_runs


class TestBadInput:
    """Each bad input: exit code 2, one line naming the file (and row), no traceback."""

    def check(self, capsys, tmp_path, labels, *match, extra=()):
        rc, err = train_cli(capsys, labels, "--out", tmp_path / "bundle", *extra)
        assert rc == 2, err
        assert "Traceback" not in err
        for m in match:
            assert m in err, err
        return err

    def test_unknown_file(self, capsys, tmp_path, runs):
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/blank/run0.isc,all,blank\nmissing.isc,all,polymer\n")
        self.check(capsys, tmp_path, csv, "labels.csv:2", "'missing.isc' not found")

    def test_unknown_scan_number(self, capsys, tmp_path, runs):
        csv = write_csv(tmp_path / "labels.csv",
                        f"{runs}/blank/run0.isc,all,blank\n{runs}/polymer/run0.isc,500,polymer\n")
        self.check(capsys, tmp_path, csv, "labels.csv:2", "scan 500 not found", f"scans 1 .. {N_SCANS}")

    def test_rt_range_selects_nothing(self, capsys, tmp_path, runs):
        csv = write_csv(tmp_path / "labels.csv",
                        f"{runs}/blank/run0.isc,all,blank\n{runs}/polymer/run0.isc,rt:10-20,polymer\n")
        self.check(capsys, tmp_path, csv, "labels.csv:2", "rt:10-20 selects no scan")

    def test_single_class(self, capsys, tmp_path, runs):
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/blank/run0.isc,all,blank\n{runs}/blank/run1.isc,all,blank\n")
        self.check(capsys, tmp_path, csv, "labels.csv", "at least two classes; found 1 (blank)")

    def test_empty_class_folder(self, capsys, tmp_path, runs):
        import shutil

        root = tmp_path / "classes"
        shutil.copytree(runs, root)
        (root / "lipid").mkdir()
        self.check(capsys, tmp_path, root, "lipid", "no .isc or .mzML files (an empty class)")

    def test_overlapping_labels(self, capsys, tmp_path, runs):
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/polymer/run0.isc,1-8,polymer\n"
                                                  f"{runs}/blank/run0.isc,all,blank\n"
                                                  f"{runs}/polymer/run0.isc,5-12,blank\n")
        self.check(capsys, tmp_path, csv, "labels.csv:3", "labels overlap: scan 5", "labels.csv:1")

    def test_overlap_of_rt_and_scan_rows(self, capsys, tmp_path, runs):
        # scans 1..12 are 0.1 s apart from t = 0, so rt:0-0.01 (0..0.6 s) holds scans 1..6
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/polymer/run0.isc,rt:0-0.01,polymer\n"
                                                  f"{runs}/blank/run0.isc,all,blank\n"
                                                  f"{runs}/polymer/run0.isc,6,blank\n")
        self.check(capsys, tmp_path, csv, "labels.csv:3", "labels overlap: scan 6", "labels.csv:1")

    def test_window_not_covered(self, capsys, tmp_path, runs):
        self.check(capsys, tmp_path, runs, "covers m/z", "of the feature window 50 .. 2000",
                   extra=("--mz-min", "50", "--mz-max", "2000"))

    def test_corrupt_capture(self, capsys, tmp_path, runs):
        import shutil

        root = tmp_path / "classes"
        shutil.copytree(runs, root)
        bad = root / "polymer" / "run1.isc"
        data = bytearray(bad.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(64)  # zeros in the middle of a frame: CRC damage
        bad.write_bytes(bytes(data))
        self.check(capsys, tmp_path, root, str(bad), "damaged capture", "ionstream capture info")

    def test_not_a_capture_or_mzml(self, capsys, tmp_path, runs):
        junk = tmp_path / "junk.isc"
        junk.write_bytes(b"not a capture at all\n" * 10)
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/blank/run0.isc,all,blank\n{junk},all,polymer\n")
        self.check(capsys, tmp_path, csv, str(junk), "not a readable capture or mzML file")

    def test_bad_bins(self, capsys, tmp_path, runs):
        self.check(capsys, tmp_path, runs, "--bins must be a multiple of 1024, at least 2048, got 1000",
                   extra=("--bins", "1000"))

    def test_out_not_empty(self, capsys, tmp_path, runs):
        (tmp_path / "bundle").mkdir()
        (tmp_path / "bundle" / "model.json").write_text("{}")
        self.check(capsys, tmp_path, runs, "exists and is not empty", "--force")

    def test_subprocess_error_is_one_line(self, tmp_path, runs):
        """The real console entry: a bad row gives exit 2 and a message, no traceback."""
        csv = write_csv(tmp_path / "labels.csv", f"{runs}/blank/run0.isc,oops,blank\n{runs}/polymer/run0.isc,all,polymer\n")
        p = subprocess.run([*IONSTREAM, "train", str(csv), "--out", str(tmp_path / "b")], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "labels.csv:1: scans 'oops' is not a selection" in p.stderr and "Traceback" not in p.stderr


def test_mzml_labelled_file(tmp_path, runs, capsys):
    """An mzML file (exported from a capture) is read through the command's mzML reader, same features."""
    pytest.importorskip("psims")
    pytest.importorskip("pyteomics")
    from ionstream.cli.train import mzml_reader
    from ionstream.offline.export import export_capture

    mzml = tmp_path / "polymer0.mzML"
    export_capture(runs / "polymer" / "run0.isc", mzml)
    csv = write_csv(tmp_path / "labels.csv", f"{runs}/blank/run0.isc,all,blank\n{mzml},3-5,polymer\n"
                                              f"{runs}/polymer/run0.isc,3-5,polymer\n")
    t = parse_labels(csv)
    ds = load_dataset(t, FeatureSpec(*common_window(t, mzml_reader()), bins=1024), mzml_reader=mzml_reader(),
                      progress=False)
    a, b = ds.X[ds.file == 1], ds.X[ds.file == 2]
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(a, b, atol=1e-6)  # mzML stores the same samples and m/z axis
