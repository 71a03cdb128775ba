"""Spectrum model and simulator: axis, isotopes, classes, truth against the generated samples,
determinism, frames."""
import math

import numpy as np
import pytest

from instrument import spectrum_model as sm
from instrument.frames import FrameDecoder, FrameType
from instrument.simulator import Pacer, SimConfig, Simulator

N_SMALL = 16384


@pytest.fixture(scope="module")
def model():
    return sm.default_model()


@pytest.fixture(scope="module")
def generator(model):
    return sm.ScanGenerator(model, seed=7)


def _strong_scans(gen, count=6, min_height=3000.0):
    """(scan_number, time) of scans where some compound elutes strongly."""
    out = []
    for k in range(0, int(gen.cycle_s * 20)):
        if gen.elution_heights(k / 20).max() > min_height:
            out.append(k)
    step = max(1, len(out) // count)
    return [(k, k / 20) for k in out[::step][:count]]


class TestAxis:
    def test_covers_the_range(self, model):
        lo, hi = model.mz_range
        assert lo == pytest.approx(sm.MZ_MIN) and hi == pytest.approx(sm.MZ_MAX)
        assert np.all(np.diff(model.axis) > 0)

    def test_any_size(self):
        cal = sm.default_calibration(1000)
        axis = sm.mz_axis(cal, 1000)
        assert axis.shape == (1000,)
        assert axis[0] == pytest.approx(sm.MZ_MIN) and axis[-1] == pytest.approx(sm.MZ_MAX)

    def test_mz_to_index_inverts_the_axis(self, model):
        i = np.array([0, 1, 1234, 40000, model.n_samples - 1], dtype=float)
        assert sm.mz_to_index(model.calibration, model.axis[i.astype(int)]) == pytest.approx(i, abs=1e-6)

    def test_at_least_five_samples_per_fwhm(self, model):
        spf = model.samples_per_fwhm(np.array([100.0, 300.0, 1000.0, 2000.0]))
        assert np.all(spf >= 5.0)

    def test_resolving_power(self, model):
        assert float(model.fwhm(1000.0)) == pytest.approx(1000.0 / 5500.0)

    def test_rejects_bad_sizes(self):
        with pytest.raises(ValueError, match="n_samples"):
            sm.default_calibration(1)


class TestIsotopes:
    def test_carbon_envelope(self):
        delta, rel = sm.isotope_pattern({"C": 100})
        assert delta[1] == pytest.approx(sm.C13_SPACING, abs=1e-6)
        assert rel.max() == 1.0 and rel[1] / rel[0] == pytest.approx(1.0816, rel=1e-3)

    def test_chlorine_m_plus_2(self):
        delta, rel = sm.isotope_pattern({"C": 6, "H": 5, "Cl": 1})
        assert rel[2] == pytest.approx(0.32, abs=0.01)
        assert delta[2] == pytest.approx(1.997, abs=0.005)

    def test_peptide_envelope_spacing_follows_charge(self, model):
        rng = np.random.default_rng(3)
        seen = set()
        for i in range(20):
            ions = sm.make_compound(1, rng, i, model).ions
            for z in np.unique(ions["charge"]):
                env = np.sort(ions[(ions["charge"] == z) & (ions["mz"] > 300)], order="mz")
                if z > 1 and len(env) >= 3:
                    spacing = np.diff(env["mz"][:3])
                    assert spacing == pytest.approx(sm.C13_SPACING / z, abs=2e-3)
                    seen.add(int(z))
        assert {2, 3} <= seen


class TestClasses:
    @pytest.fixture(scope="class")
    @classmethod
    def library(cls, model):
        rng = np.random.default_rng(11)
        return {c: [sm.make_compound(c, rng, i, model) for i in range(15)] for c in range(1, 5)}

    @staticmethod
    def _base(c):
        return c.ions[np.argmax(c.ions["rel_height"])]

    def test_peptides_are_multiply_charged(self, library):
        assert np.mean([self._base(c)["charge"] > 1 for c in library[1]]) > 0.7
        assert all(np.isin([147.112804, 175.118952], np.round(c.ions["mz"], 6)).any() for c in library[1])

    def test_lipids_have_high_mass_defect_and_head_groups(self, library):
        for c in library[2]:
            base = self._base(c)
            assert base["charge"] == 1
            assert 0.4 < base["mz"] % 1 < 0.8  # e.g. PC 34:1 [M+H]+ 760.585
            has_head = np.isclose(c.ions["mz"], 184.073321).any()
            has_pe_loss = ("PE" in c.name)
            assert has_head or has_pe_loss

    def test_small_molecules_are_small(self, library):
        assert all(self._base(c)["mz"] < 800 for c in library[3])

    def test_polymers_are_series(self, library):
        for c in library[4]:
            mono = np.sort(c.ions[(c.ions["isotope"] == 0) & (c.ions["charge"] == 1)]["mz"])
            steps = np.subtract.outer(mono, mono)  # adduct series interleave: compare all pairs
            assert any(np.isclose(steps, r, atol=2e-3).sum() >= 10 for r in (44.026215, 58.041865, 74.018792)), c.name

    def test_compounds_of_a_class_vary(self, library):
        for c, compounds in library.items():
            assert len({round(float(self._base(x)["mz"]), 3) for x in compounds}) > 10, sm.CLASS_LABELS[c]

    def test_bad_class(self):
        with pytest.raises(ValueError, match="class_index"):
            sm.make_compound(0, np.random.default_rng(0))


class TestScanGenerator:
    def test_deterministic(self, model):
        a = sm.ScanGenerator(model, seed=5)
        b = sm.ScanGenerator(model, seed=5)
        c = sm.ScanGenerator(model, seed=6)
        for k in (0, 17, 400):
            xa, ta = a.generate(k, k / 20)
            xb, tb = b.generate(k, k / 20)
            assert np.array_equal(xa, xb)
            assert ta.label == tb.label and np.array_equal(ta.peaks, tb.peaks)
        assert not np.array_equal(a.generate(400, 20.0)[0], c.generate(400, 20.0)[0])

    def test_writes_into_out(self, generator):
        out = np.empty(generator.n_samples, np.uint16)
        x, _ = generator.generate(3, 0.15, out=out)
        assert x is out
        assert np.array_equal(out, generator.generate(3, 0.15)[0])

    def test_true_peaks_are_where_the_truth_says(self, generator, model):
        checked = 0
        for k, t in _strong_scans(generator):
            x, truth = generator.generate(k, t)
            data = x.astype(np.float64) - truth.baseline()
            peaks = truth.peaks[(truth.peaks["snr"] > 50) & ~truth.peaks["blended"]]
            assert len(peaks) > 0
            centre = np.rint(sm.mz_to_index(model.calibration, peaks["mz"])).astype(int)
            for c, p in zip(centre, peaks):
                lo = max(c - 4, 0)
                apex = lo + int(np.argmax(data[lo:c + 5]))
                assert abs(apex - c) <= 2, p
                # the sampled apex sits within half a sample of the centre: at most 3 % below the true height
                height = float(p["height"])
                noise = math.sqrt(truth.noise_sigma ** 2 + model.gain * height)
                assert data[apex] == pytest.approx(height, abs=5 * noise + 0.04 * height), p
                checked += 1
        assert checked > 100

    def test_noise_sigma_matches_peak_free_samples(self, generator, model):
        k, t = _strong_scans(generator)[0]
        x, truth = generator.generate(k, t)
        residual = x.astype(np.float64) - truth.baseline()
        free = np.ones(model.n_samples, bool)
        idx = np.rint(sm.mz_to_index(model.calibration, truth.peaks["mz"])).astype(int)
        for i in idx:
            free[max(i - 15, 0):i + 16] = False
        assert free.sum() > 10000
        sigma = model.noise_sigma_array[free]
        z = residual[free] / sigma
        assert np.mean(z) == pytest.approx(0.0, abs=0.05)
        assert np.std(z) == pytest.approx(1.0, abs=0.08)

    def test_snr_is_height_over_local_noise(self, generator, model):
        k, t = _strong_scans(generator)[1]
        p = generator.generate(k, t)[1].peaks
        assert p["snr"] == pytest.approx(p["height"] / model.noise_sigma_at(p["mz"]), rel=1e-5)
        assert np.all(np.diff(p["mz"]) >= 0)
        assert p["area"] == pytest.approx(p["height"] * p["fwhm"] * 1.0644670, rel=1e-4)

    def test_label_rule(self, generator):
        labels = []
        for k in range(0, 1200, 3):
            _, truth = generator.generate(k, k / 20)
            labels.append(truth.label)
            detected = truth.compounds[truth.compounds["snr"] >= sm.LABEL_MIN_SNR]
            if detected.size == 0:
                assert truth.label == sm.BACKGROUND and truth.dominant_compound == -1
            else:
                best = detected[np.argmax(detected["height"])]
                assert truth.label == best["class_index"] and truth.dominant_compound == best["compound"]
        assert set(labels) == set(range(len(sm.CLASS_LABELS)))

    def test_compounds_rise_and_fall(self, generator):
        heights = np.array([generator.elution_heights(k / 20) for k in range(1200)])
        j = int(np.argmax(heights.max(axis=0)))
        apex = int(np.argmax(heights[:, j]))
        assert heights[apex, j] > 50 * heights[(apex + 600) % 1200, j]

    def test_float32_is_the_undigitised_uint16(self, model):
        u = sm.ScanGenerator(model, seed=9, dtype=np.uint16).generate(100, 5.0)[0]
        f = sm.ScanGenerator(model, seed=9, dtype=np.float32).generate(100, 5.0)[0]
        assert f.dtype == np.float32
        assert np.abs(u - np.clip(f, 0, 65535)).max() <= 0.5 + 1e-3


class TestRandomSpectrum:
    def test_labels_match_the_requested_class(self):
        rng = np.random.default_rng(5)
        for i in range(40):
            c = i % len(sm.CLASS_LABELS)
            x, truth = sm.random_spectrum(c, rng, n_samples=N_SMALL)
            assert x.shape == (N_SMALL,) and x.dtype == np.uint16
            assert truth.label == c

    def test_deterministic_given_the_rng(self):
        a = sm.random_spectrum(2, np.random.default_rng(1), n_samples=N_SMALL)
        b = sm.random_spectrum(2, np.random.default_rng(1), n_samples=N_SMALL)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].peaks, b[1].peaks)

    def test_truth_matches_samples_and_shift(self):
        rng = np.random.default_rng(2)
        model = sm.default_model()
        for c in (1, 2, 3, 4):
            x, truth = sm.random_spectrum(c, rng, dtype=np.float32)
            data = x - truth.baseline()
            peaks = truth.peaks[(truth.peaks["snr"] > 100) & ~truth.peaks["blended"]]
            centre = np.rint(sm.mz_to_index(model.calibration, peaks["mz"])).astype(int)
            for ci, p in zip(centre, peaks):
                apex = ci - 4 + int(np.argmax(data[ci - 4:ci + 5]))
                assert abs(apex - ci) <= 2
            assert abs(truth.mz_shift_ppm) < 20

    def test_no_augmentation(self):
        _, truth = sm.random_spectrum(1, np.random.default_rng(0), n_samples=N_SMALL, augment=False)
        assert truth.mz_shift_ppm == 0.0 and len(truth.compounds) == 1

    def test_bad_class(self):
        with pytest.raises(ValueError, match="class_index"):
            sm.random_spectrum(len(sm.CLASS_LABELS), np.random.default_rng(0))


class TestSimulator:
    def _frames(self, count, **kw):
        sim = Simulator(SimConfig(n_samples=N_SMALL, **kw))
        return [next(sim) for _ in range(count)], sim

    def test_same_seed_same_bytes(self):
        a, _ = self._frames(30, seed=4)
        b, _ = self._frames(30, seed=4)
        c, _ = self._frames(30, seed=5)
        assert [f for f, _ in a] == [f for f, _ in b]
        assert [f for f, _ in a] != [f for f, _ in c]

    def test_frames_decode_with_headers_from_the_clock(self):
        frames, sim = self._frames(45, seed=2, scan_rate_hz=20, status_interval_s=1.0)
        decoder = FrameDecoder()
        headers, samples = [], []
        for frame in decoder.feed(b"".join(f for f, _ in frames)):
            headers.append(frame.header)
            if frame.header.frame_type == FrameType.SCAN:
                samples.append(frame.samples().copy())
        assert decoder.stats.frames == 45 and decoder.stats.bytes_skipped == 0
        assert [h.sequence for h in headers] == list(range(45))
        scans = [h for h in headers if h.frame_type == FrameType.SCAN]
        status = [h for h in headers if h.frame_type == FrameType.STATUS]
        assert [h.scan_number for h in scans] == list(range(len(scans)))
        assert [h.device_time_ns for h in scans] == [k * 50_000_000 for k in range(len(scans))]
        assert [h.device_time_ns for h in status] == [0, 1_000_000_000, 2_000_000_000]
        assert scans[0].calibration == sim.model.calibration
        assert np.array_equal(sm.mz_axis(scans[0].calibration, scans[0].n_samples), sim.model.axis)
        truths = [t for _, t in frames if t is not None]
        assert [t.scan_number for t in truths] == list(range(len(scans)))
        gen = sm.ScanGenerator(sim.model, seed=2)
        assert np.array_equal(samples[5], gen.generate(5, 0.25)[0])

    def test_next_into_matches_next(self):
        a = Simulator(SimConfig(n_samples=N_SMALL, seed=3))
        b = Simulator(SimConfig(n_samples=N_SMALL, seed=3))
        buf = bytearray(b.scan_frame_size + 100)
        for _ in range(25):
            frame, truth = next(a)
            n, truth_b = b.next_into(buf)
            assert bytes(buf[:n]) == frame
            assert (truth is None) == (truth_b is None)

    def test_dtypes(self):
        for dtype in ("int16", "float32"):
            (frame, _), = [next(iter(Simulator(SimConfig(n_samples=N_SMALL, dtype=dtype, status_interval_s=0))))]
            (decoded,) = list(f.samples().dtype for f in FrameDecoder().feed(frame))
            assert decoded == np.dtype(dtype)

    def test_config_errors_name_the_field(self):
        with pytest.raises(ValueError, match="dtype"):
            SimConfig(dtype="uint8")
        with pytest.raises(ValueError, match="scan_rate_hz"):
            SimConfig(scan_rate_hz=-1)


class TestPacer:
    def test_fixed_schedule_and_slips(self):
        now = [100.0]
        slept = []

        def sleep(s):
            slept.append(s)
            now[0] += s

        pacer = Pacer(10.0, max_lag_s=1.0, clock=lambda: now[0], sleep=sleep)
        for _ in range(5):
            pacer.wait()
        assert now[0] == pytest.approx(100.4)
        now[0] += 5.0  # the consumer stalls
        pacer.wait()
        assert pacer.slips == 1
        pacer.wait()
        assert now[0] == pytest.approx(105.5)

    def test_zero_rate_never_sleeps(self):
        pacer = Pacer(0.0, sleep=lambda s: pytest.fail("slept"))
        pacer.wait()


class TestSimSourceRepeat:
    """sim://?repeat=K: the first K spectra again, with fresh numbers, through the real decoder."""

    @staticmethod
    def _frames(url: str, n: int):
        from instrument.frames import FrameDecoder
        from instrument.sources import open_source

        source = open_source(url)
        source.open()
        decoder, buf, out = FrameDecoder(), bytearray(1 << 16), []
        while len(out) < n:
            k = source.readinto(memoryview(buf))
            out.extend((f.header, bytes(f.payload)) for f in decoder.feed(memoryview(buf)[:k]))
        assert decoder.stats.header_crc_errors == 0 and decoder.stats.payload_crc_errors == 0
        return out

    def test_repeats_spectra_with_contiguous_numbers(self):
        frames = self._frames("sim://?rate=0&samples=1024&seed=5&repeat=3", 12)
        scans = [(h, p) for h, p in frames if h.frame_type == FrameType.SCAN]
        assert [h.sequence for h, _ in frames] == list(range(len(frames)))
        assert [h.scan_number for h, _ in scans] == list(range(len(scans)))
        times = [h.device_time_ns for h, _ in scans]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert [p for _, p in scans[3:9]] == [p for _, p in scans[:3]] * 2
        assert len({p for _, p in scans[:3]}) == 3

    def test_without_repeat_every_spectrum_is_new(self):
        frames = self._frames("sim://?rate=0&samples=1024&seed=5", 8)
        payloads = [p for h, p in frames if h.frame_type == FrameType.SCAN]
        assert len(set(payloads)) == len(payloads)


class _FakeTime:
    """A stand-in for the ``time`` module inside instrument.sources.sim (a mock, named as such):
    a clock that moves only when the source sleeps, so pacing is checked without wall-clock asserts."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += max(0.0, s)


class TestSimSourcePacing:
    """sim://?rate=20 gives 20.0 scans/s of device time per second of the clock, STATUS frames
    included in the stream (issue 15 item 5: it gave 19.1 because status frames took scan slots)."""

    @staticmethod
    def _run(url: str, seconds: float, monkeypatch, fake: "_FakeTime | None" = None
             ) -> tuple[int, int, list[int]]:
        from instrument.frames import FrameDecoder
        from instrument.sources import open_source
        from instrument.sources import sim as sim_module

        fake = fake or _FakeTime()
        monkeypatch.setattr(sim_module, "time", fake)
        source = open_source(url)
        source.open()
        decoder, buf = FrameDecoder(), bytearray(1 << 16)
        scans, status, times = 0, 0, []
        end = fake.now + seconds
        while fake.now < end:
            k = source.readinto(memoryview(buf))
            for f in decoder.feed(memoryview(buf)[:k]):
                if f.header.frame_type == FrameType.SCAN:
                    scans += 1
                    times.append(f.header.device_time_ns)
                else:
                    status += 1
        return scans, status, times

    def test_twenty_scans_per_second_of_clock(self, monkeypatch):
        scans, status, times = self._run("sim://?rate=20&samples=256", 30.0, monkeypatch)
        assert status >= 29          # one STATUS frame per simulated second is in the stream...
        assert scans in (600, 601)   # ...and still 20 scans per second: scan k is due at k/20 s
        assert times[-1] - times[0] == (scans - 1) * 50_000_000

    def test_schedule_does_not_accumulate_sleep_jitter(self, monkeypatch):
        """Each sleep overshoots by 3 ms (a loaded machine); the deadline schedule absorbs it."""

        class Jittery(_FakeTime):
            def sleep(self, s: float) -> None:
                self.now += max(0.0, s) + 0.003

        scans, _, _ = self._run("sim://?rate=20&samples=256", 20.0, monkeypatch, Jittery())
        assert 399 <= scans <= 401
