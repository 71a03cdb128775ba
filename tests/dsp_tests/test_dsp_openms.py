"""Peak picking against OpenMS PeakPickerHiRes on real profile spectra (tests/data) and on the
project's simulator, at equal S/N settings; spectrum-type estimation on real files."""
from pathlib import Path

import numpy as np
import pytest

from dsp import pick_centroids
from dsp.processor import spectrum_params
from ionstream.offline.peaks import pick_peaks
from ionstream.offline.spectra import MzMLError, read_mzml_spectra

pytest.importorskip("pyopenms")
pytest.importorskip("pyteomics")
from openms_oracle import agreement, apex_snr, openms_centroids  # noqa: E402

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
    """Share of PeakPickerHiRes's centroids that pick_centroids (min_snr = T, the kind's preset) finds
    within 5 ppm, at equal S/N. The comparison rule (docs/dsp.md, "Comparing with OpenMS"): an
    OpenMS centroid counts when it passes S/N T by both definitions, OpenMS's own
    (``signal_to_noise = T``: over the median intensity) and ours (its apex T noise sigmas above our
    baseline, openms_oracle.apex_snr). OpenMS's alone keeps noise on zero-filled FT data: the
    median of a window that is half exact zeros is ~0 (test_ltqft_misses_are_noise).
    Measured: Orbitrap 0.987/1/1, FTMS 1/1/1 at T = 1/3/5; LTQ FT 0.905/0.952/0.980/1.0 at
    T = 1/3/5/10. Bounds sit just under those."""

    BOUNDS = {("orbitrap", 1): 0.97, ("orbitrap", 3): 0.97, ("orbitrap", 5): 0.97,
              ("ftms", 1): 0.97, ("ftms", 3): 0.97, ("ftms", 5): 0.97,
              ("fticr_ltqft", 1): 0.89, ("fticr_ltqft", 3): 0.94, ("fticr_ltqft", 5): 0.97,
              ("fticr_ltqft", 10): 0.97}

    @pytest.mark.parametrize("kind,snr", sorted(BOUNDS))
    def test_agreement(self, kind, snr):
        name, scans, preset = REAL[kind]
        hit = total = 0
        for s in _profiles(name, scans):
            theirs = openms_centroids(s.mz, s.intensity, snr)
            theirs = theirs[apex_snr(s.mz, s.intensity, theirs, spectrum_params(s.intensity, preset=preset)) >= snr]
            h, t = agreement(pick_centroids(s.mz, s.intensity, preset=preset, min_snr=snr)["mz"], theirs)
            hit, total = hit + h, total + t
        assert total >= 5
        assert hit / total >= self.BOUNDS[(kind, snr)], (hit, total)

    def test_ltqft_misses_are_noise(self):
        """What OpenMS keeps at its S/N 1 on the LTQ FT scan and we do not: 180 of 1275 centroids,
        65 of them below one noise sigma of ours. A real ion recurs in the next FT scans (scans 8
        and 15, 3-7 s later, tests/data/small_ltqft_ft.mzML): the centroids we match recur within
        10 ppm 59 % of the time, those we miss 22 %, random m/z 0.8 %."""
        s = next(_profiles("small_ltqft.mzML", {1}))
        theirs = openms_centroids(s.mz, s.intensity, 1.0)
        later = [openms_centroids(x.mz, x.intensity, 1.0) for x in _profiles("small_ltqft_ft.mzML", None)]
        assert len(later) == 2

        def near(a, b, ppm):
            b = np.sort(b)
            j = np.clip(np.searchsorted(b, a), 1, b.size - 1)
            return np.minimum(np.abs(b[j] - a), np.abs(b[j - 1] - a)) <= ppm * 1e-6 * a

        matched = near(theirs, pick_centroids(s.mz, s.intensity, preset="fticr", min_snr=1)["mz"], 5.0)
        recurs = near(theirs, later[0], 10.0) | near(theirs, later[1], 10.0)
        noise_floor = apex_snr(s.mz, s.intensity, theirs, spectrum_params(s.intensity, preset="fticr")) < 1
        rnd = np.random.default_rng(0).uniform(theirs.min(), theirs.max(), 5000)
        assert 100 <= np.sum(~matched) <= 250
        assert np.sum(~matched & noise_floor) >= 0.3 * np.sum(~matched) and not np.any(matched & noise_floor)
        assert recurs[matched].mean() >= 0.5 and recurs[~matched].mean() <= 0.3
        assert (near(rnd, later[0], 10.0) | near(rnd, later[1], 10.0)).mean() <= 0.02

    def test_tof_tail_offset_is_known(self):
        """MALDI-TOF peaks here rise in 2-3 samples and tail over 6-10 (right half ~2.4x wider). The
        Gaussian centre sat 10-30 ppm above OpenMS's apex (median +19 ppm at S/N 10); the two-sided
        fit's apex sits 3-8 ppm below it (0.3 samples: the leading edge is not Gaussian; docs/dsp.md,
        "Tailed peaks"). Pinned so a change shows."""
        s = next(_profiles("openms_tof_maldi.mzML", None))
        theirs = openms_centroids(s.mz, s.intensity, 10.0)
        ours = pick_centroids(s.mz, s.intensity, preset="tof", min_snr=10.0)["mz"]
        j = np.clip(np.searchsorted(ours, theirs), 1, ours.size - 1)
        near = np.where(np.abs(ours[j] - theirs) < np.abs(ours[j - 1] - theirs), ours[j], ours[j - 1])
        ppm = (near - theirs) / theirs * 1e6
        assert theirs.size >= 15 and -8 <= np.median(ppm) <= -3


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
