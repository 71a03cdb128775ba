"""Peak picking against OpenMS PeakPickerHiRes on real profile spectra (tests/data) and on the
project's simulator, at equal S/N settings; spectrum-type estimation on real files."""
from pathlib import Path

import numpy as np
import pytest

from dsp import pick_centroids
from ionstream.offline.peaks import pick_peaks
from ionstream.offline.spectra import MzMLError, read_mzml_spectra

pytest.importorskip("pyopenms")
pytest.importorskip("pyteomics")
from openms_oracle import agreement, openms_centroids  # noqa: E402

DATA = Path(__file__).parents[1] / "data"
# kind -> (file, scans used, preset)
REAL = {
    "orbitrap": ("openms_orbitrap.mzML", None, "orbitrap"),
    "ftms": ("openms_ftms.mzML", None, "fticr"),
    "fticr_ltqft": ("small_ltqft.mzML", {1}, "fticr"),
}


def _profiles(name, scans):
    for s in read_mzml_spectra(DATA / name):
        if not s.centroided and s.ms_level == 1 and (scans is None or s.scan in scans):
            yield s


class TestRealSpectraAgainstOpenMS:
    """Share of PeakPickerHiRes's centroids (S/N >= T) that pick_centroids (min_snr = T, the kind's
    preset) finds within 5 ppm. Measured (docs/dsp.md): Orbitrap 0.987/1.0, FTMS 1.0/1.0, LTQ FT
    0.86/0.94 at T = 1/3. Bounds sit just under those."""

    BOUNDS = {("orbitrap", 1): 0.97, ("orbitrap", 3): 0.97, ("ftms", 1): 0.97, ("ftms", 3): 0.97,
              ("fticr_ltqft", 1): 0.84, ("fticr_ltqft", 3): 0.92}

    @pytest.mark.parametrize("kind,snr", sorted(BOUNDS))
    def test_agreement(self, kind, snr):
        name, scans, preset = REAL[kind]
        hit = total = 0
        for s in _profiles(name, scans):
            h, t = agreement(pick_centroids(s.mz, s.intensity, preset=preset, min_snr=snr)["mz"],
                             openms_centroids(s.mz, s.intensity, snr))
            hit, total = hit + h, total + t
        assert total >= 5
        assert hit / total >= self.BOUNDS[(kind, snr)], (hit, total)

    def test_tof_tail_disagreement_is_known(self):
        """MALDI-TOF peaks tail to high m/z: our Gaussian centre sits 10-30 ppm above OpenMS's apex,
        so few match within 5 ppm (docs/dsp.md, not fixed). Pinned so a change shows."""
        s = next(_profiles("openms_tof_maldi.mzML", None))
        theirs = openms_centroids(s.mz, s.intensity, 10.0)
        ours = pick_centroids(s.mz, s.intensity, preset="tof", min_snr=10.0)["mz"]
        j = np.clip(np.searchsorted(ours, theirs), 1, ours.size - 1)
        near = np.where(np.abs(ours[j] - theirs) < np.abs(ours[j - 1] - theirs), ours[j], ours[j - 1])
        ppm = (near - theirs) / theirs * 1e6
        assert theirs.size >= 15 and 10 <= np.median(ppm) <= 30


class TestSimulatorAgainstOpenMS:
    def test_agreement(self):
        """OpenMS's S/N divides by the median intensity, baseline included: on the simulator (a high
        baseline) only 22 peaks pass its S/N 3 in 3 spectra; 18 of them (0.82) are ours within 5 ppm."""
        from instrument.spectrum_model import default_model, random_spectrum

        axis = default_model().axis
        hit = total = 0
        for seed in range(3):
            x, _ = random_spectrum(1 + seed % 4, np.random.default_rng(500 + seed))
            y = x.astype(np.float32)
            h, t = agreement(pick_centroids(axis, y, min_snr=3)["mz"], openms_centroids(axis, y, 3.0), ppm=5.0)
            hit, total = hit + h, total + t
        assert total >= 20
        assert hit / total >= 0.8, (hit, total)


class TestSpectrumType:
    def test_centroided_file_without_a_type_term_is_not_repicked(self, tmp_path):
        # OpenMS's LCMS-centroided example states no spectrum type: 112 spectra of 17-33 sticks.
        # Read as profile, `ionstream peaks` turned its 3,084 sticks into 90 "peaks".
        spectra = list(read_mzml_spectra(DATA / "openms_lcms_centroided.mzML"))
        assert len(spectra) == 112
        assert all(s.centroided and s.type_source == "estimated" for s in spectra)
        summary = pick_peaks(DATA / "openms_lcms_centroided.mzML", tmp_path / "p.csv")
        assert summary.skipped_centroided == 112 and summary.estimated_centroided == 112
        assert summary.peaks == sum(s.mz.size for s in spectra) == 3084

    @pytest.mark.parametrize("name", ["openms_orbitrap.mzML", "openms_ftms.mzML", "openms_tof_maldi.mzML"])
    def test_profiles_stay_profile(self, name):
        for s in read_mzml_spectra(DATA / name):
            assert not s.centroided

    def test_declared_types_win_and_override(self):
        got = [(s.centroided, s.type_source) for s in read_mzml_spectra(DATA / "small_ltqft.mzML")]
        assert got == [(False, "declared")] * 2 + [(True, "declared")] * 5
        forced = [s.centroided for s in read_mzml_spectra(DATA / "openms_lcms_centroided.mzML",
                                                                spectrum_type="profile")]
        assert not any(forced)
        with pytest.raises(MzMLError, match="spectrum type must be one of"):
            next(read_mzml_spectra(DATA / "small_ltqft.mzML", spectrum_type="stick"))
