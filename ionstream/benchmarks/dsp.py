"""`ionstream bench dsp`: peak picking vs SciPy, whole per-scan DSP, thread scaling, truth scores.

Figures (``--json``, flat numbers):

* ``peaks_speedup``: ``scipy.signal.find_peaks(x, prominence=5 sigma, width=2)`` time over
  ``dsp.find_peaks`` time with the same arguments on the same ``--peaks-samples`` (1 M) point
  simulated spectra (float64 for both); the peak lists and all properties are asserted identical.
  ``peaks_speedup_f32``: the kernel on the float32 spectra (same peaks asserted) against SciPy on
  float64. ``peaks_scipy_ms`` / ``peaks_cext_ms`` per spectrum.
* ``dsp_ns_per_sample``, ``dsp_MSps_per_core``, ``scans_per_s_64k``: ``ScanProcessor.process`` on
  ``--scans`` simulated 64k-sample uint16 scans (TOF calibration; baseline, noise, smoothing, peaks,
  centroids, one XIC window), one thread, best of ``--repeat`` passes.
  ``dsp_reference_ns_per_sample`` and ``dsp_speedup_vs_reference``: the NumPy/SciPy reference of
  the same pipeline (dsp.reference.process_scan) on some of the scans.
* ``thread_scaling_2v1``: scans per second with 2 worker threads (one processor each, the same
  scans) over 1 thread. Only meaningful on an otherwise idle machine with 2 free cores:
  ``cpu_count`` and ``load_average_1min`` (before the run) are reported next to it.
* ``recall``, ``false_peak_rate``, ``median_ppm_error``: dsp.truth.score_scan over
  ``--truth-spectra`` random_spectrum scans with fixed seeds (recall of true peaks with S/N >= 10,
  picked peaks matching no true peak, median |m/z error| in ppm at S/N >= 20).

* ``independent_recall``, ``independent_false_rate``, ``independent_median_ppm``: pick_centroids
  (default settings) on the independent generator of tests/independent_spectra.py (TOF, Orbitrap,
  FT-ICR kinds, ``--independent-spectra`` seeds each): recall of unblended true peaks at S/N >= 20,
  false share of picks at S/N >= 10, median |m/z error| (ppm). Needs a source checkout (tests/).
  ``independent_kinds``: the same per kind (``tof``, ``orbitrap``, ``fticr``), with defaults and
  with the kind's preset, and the median over symmetric and tailed true peaks apart.
* ``openms_agreement``: the lowest, over the real profile files of tests/data (Orbitrap, FTMS, LTQ
  FT), of the share of OpenMS PeakPickerHiRes centroids matched by pick_centroids (the kind's
  preset) within 5 ppm at S/N 3 (the default min_snr), the centroids held to S/N 3 by both
  definitions (docs/dsp.md, "Comparing with OpenMS"); ``openms_agreement_by_snr``: per file and
  S/N 1/3/5/10. ``openms_speedup``: PeakPickerHiRes time over pick_centroids time on the same
  spectra (the simulator's 64k-point scans), both best of ``--repeat``, interleaved. Need
  pyopenms; NaN without it.

Baselines run in this process; timings are best-of-N with the two contenders interleaved.
"""
from __future__ import annotations

import argparse
import gc
import os
import threading
import time
import warnings

import numpy as np

HELP = "DSP: peak picking vs scipy find_peaks, per-scan DSP ns/sample, 2-thread scaling, truth scores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peaks-samples", type=int, default=1 << 20, help="points per peak-picking spectrum (default 1 M)")
    parser.add_argument("--peaks-spectra", type=int, default=3, help="spectra for the peak-picking comparison (default 3)")
    parser.add_argument("--scans", type=int, default=64, help="64k-sample scans for the per-scan DSP timing (default 64)")
    parser.add_argument("--samples", type=int, default=65536, help="samples per scan (default 65536)")
    parser.add_argument("--reference-scans", type=int, default=4, help="scans for the NumPy/SciPy reference (default 4)")
    parser.add_argument("--truth-spectra", type=int, default=100, help="spectra scored against truth (default 100)")
    parser.add_argument("--thread-passes", type=int, default=4, help="passes over the scans per thread in the scaling run (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions; the best counts (default 5)")
    parser.add_argument("--independent-spectra", type=int, default=8, help="independent-generator seeds per kind (default 8)")
    parser.add_argument("--seed", type=int, default=1)


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _same_peaks(a, b) -> bool:
    (pa, da), (pb, db) = a, b
    return np.array_equal(pa, pb) and da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


def _bench_peaks(args, progress) -> dict:
    import scipy.signal

    from dsp.peaks import find_peaks
    from instrument.spectrum_model import InstrumentModel, random_spectrum

    model = InstrumentModel(n_samples=args.peaks_samples)
    t_scipy = t_cext = t_cext32 = 0.0
    n_peaks = 0
    for k in range(args.peaks_spectra):
        x32, truth = random_spectrum(1 + k % 4, np.random.default_rng(args.seed + 100 + k), model=model,
                                     dtype=np.float32)
        x = x32.astype(np.float64)
        kw = dict(prominence=5.0 * truth.noise_sigma, width=2.0)
        ts = tc = tc32 = float("inf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for _ in range(args.repeat):   # interleaved, best of each
                a, want = _best(lambda: scipy.signal.find_peaks(x, **kw), 1)
                b, got = _best(lambda: find_peaks(x, **kw), 1)
                c, got32 = _best(lambda: find_peaks(x32, **kw), 1)
                ts, tc, tc32 = min(ts, a), min(tc, b), min(tc32, c)
        if not (_same_peaks(want, got) and _same_peaks(want, got32)):
            raise SystemExit(f"dsp benchmark: find_peaks differs from scipy.signal.find_peaks on spectrum {k}")
        n_peaks += want[0].size
        t_scipy += ts
        t_cext += tc
        t_cext32 += tc32
        progress(f"peaks {k}: {want[0].size} peaks, scipy {ts * 1e3:.2f} ms, cext {tc * 1e3:.2f} ms "
                 f"(x{ts / tc:.1f}), float32 {tc32 * 1e3:.2f} ms (x{ts / tc32:.1f}); identical")
    m = args.peaks_spectra
    return {"peaks_speedup": t_scipy / t_cext, "peaks_speedup_f32": t_scipy / t_cext32,
            "peaks_scipy_ms": t_scipy / m * 1e3, "peaks_cext_ms": t_cext / m * 1e3,
            "peaks_cext_f32_ms": t_cext32 / m * 1e3, "peaks_per_spectrum": n_peaks / m,
            "peaks_samples": args.peaks_samples, "peaks_identical": 1}


def _scans(args):
    from instrument.spectrum_model import InstrumentModel, default_model, random_spectrum

    model = default_model(args.samples) if args.samples == 65536 else InstrumentModel(n_samples=args.samples)
    rng = np.random.default_rng(args.seed)
    return model, [random_spectrum(k % 5, rng, model=model)[0] for k in range(args.scans)]


def _bench_scan_dsp(args, progress, model, scans) -> dict:
    from dsp import reference
    from dsp.processor import CENTROID_DTYPE, ScanProcessor

    cal = model.calibration
    params = dict(xic=((500.0, 500.5),))
    proc = ScanProcessor(**params)
    out = np.empty(4096, CENTROID_DTYPE)
    for x in scans[:4]:
        proc.process(x, cal, out=out)

    def one_pass():
        n = 0
        for x in scans:
            n += proc.process(x, cal, out=out).n_peaks
        return n

    gc_was = gc.isenabled()
    gc.disable()
    try:
        t, n_peaks = _best(one_pass, args.repeat)
    finally:
        if gc_was:
            gc.enable()
    samples = len(scans) * args.samples
    ns = t / samples * 1e9
    progress(f"per-scan DSP: {len(scans)} scans x {args.samples} samples, best of {args.repeat}: "
             f"{ns:.2f} ns/sample, {1e3 / ns:.0f} MS/s, {len(scans) / t:.0f} scans/s, "
             f"{n_peaks / len(scans):.1f} peaks/scan")
    m = max(1, min(args.reference_scans, len(scans)))
    tr, _ = _best(lambda: [reference.process_scan(x, cal, proc.params) for x in scans[:m]], 1)
    ns_ref = tr / (m * args.samples) * 1e9
    progress(f"NumPy/SciPy reference on {m} scans: {ns_ref:.1f} ns/sample (kernel x{ns_ref / ns:.1f} faster)")
    return {"dsp_ns_per_sample": ns, "dsp_MSps_per_core": 1e3 / ns, "scans_per_s_64k": len(scans) / t * args.samples / 65536,
            "dsp_peaks_per_scan": n_peaks / len(scans), "dsp_reference_ns_per_sample": ns_ref,
            "dsp_speedup_vs_reference": ns_ref / ns}


def _bench_threads(args, progress, model, scans) -> dict:
    from dsp.processor import CENTROID_DTYPE, ScanProcessor

    cal = model.calibration

    def work(n_threads: int) -> float:
        procs = [ScanProcessor() for _ in range(n_threads)]
        outs = [np.empty(4096, CENTROID_DTYPE) for _ in range(n_threads)]
        for p, o in zip(procs, outs):
            p.process(scans[0], cal, out=o)
        barrier = threading.Barrier(n_threads + 1)

        def worker(i):
            p, o = procs[i], outs[i]
            barrier.wait()
            for _ in range(args.thread_passes):
                for x in scans:
                    p.process(x, cal, out=o)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for th in threads:
            th.start()
        barrier.wait()
        t = time.perf_counter()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
        return n_threads * args.thread_passes * len(scans) / elapsed

    r1 = r2 = 0.0
    for _ in range(max(1, args.repeat // 2)):   # interleaved, best of each
        r1 = max(r1, work(1))
        r2 = max(r2, work(2))
    progress(f"threads: 1 worker {r1:.0f} scans/s, 2 workers {r2:.0f} scans/s (x{r2 / r1:.2f}) "
             f"on {os.cpu_count()} CPUs")
    return {"thread_scaling_2v1": r2 / r1, "scans_per_s_1_thread": r1, "scans_per_s_2_threads": r2}


def _bench_truth(args, progress) -> dict:
    from dsp.processor import ScanProcessor
    from dsp.truth import TruthScore, score_scan
    from instrument.spectrum_model import default_model, random_spectrum

    cal = default_model().calibration
    proc = ScanProcessor()
    total = TruthScore()
    for k in range(args.truth_spectra):
        x, truth = random_spectrum(k % 5, np.random.default_rng(args.seed + 10_000 + k))
        total += score_scan(proc.process(x, cal).peaks, truth.peaks)
    progress(f"truth over {args.truth_spectra} spectra: recall {total.recall:.4f} ({total.n_found}/{total.n_true}, "
             f"goal >= 0.99), false peaks {total.false_peak_rate:.4f} ({total.n_false}/{total.n_picked}, goal <= 0.01), "
             f"median |m/z error| {total.median_ppm_error:.3f} ppm (n={total.n_error}, goal <= 1)")
    return {"recall": total.recall, "false_peak_rate": total.false_peak_rate,
            "median_ppm_error": total.median_ppm_error, "truth_true_peaks": total.n_true,
            "truth_picked_peaks": total.n_picked, "truth_error_peaks": total.n_error}


def _tests_dir():
    """The source checkout's tests/ (the independent generator, the OpenMS oracle, real spectra):
    next to this package in a checkout or an editable install, else ./tests (a checkout's root)."""
    from pathlib import Path
    import sys

    for d in (Path(__file__).resolve().parents[2] / "tests", Path.cwd() / "tests"):
        if (d / "independent_spectra.py").exists():
            if str(d) not in sys.path:
                sys.path.insert(0, str(d))
            return d
    return Path.cwd() / "tests"


def _bench_independent(args, progress) -> dict:
    from dsp import pick_centroids

    nan = float("nan")
    if not (_tests_dir() / "independent_spectra.py").exists():
        progress("independent generator: tests/independent_spectra.py not found (not a source checkout)")
        return {"independent_recall": nan, "independent_false_rate": nan, "independent_median_ppm": nan}
    from independent_spectra import KINDS, Score, make_spectrum, score

    total = Score()
    kinds = {}
    for kind in KINDS:
        part, preset, sym, tail = Score(), Score(), Score(), Score()
        for seed in range(args.independent_spectra):
            s = make_spectrum(kind, seed)
            p = pick_centroids(s.mz, s.intensity)
            part += score(p["mz"], s.truth, picked_snr=p["snr"])
            sym += score(p["mz"], s.truth[s.truth["shape"] != "tof"], picked_snr=p["snr"])
            tail += score(p["mz"], s.truth[s.truth["shape"] == "tof"], picked_snr=p["snr"])
            q = pick_centroids(s.mz, s.intensity, preset=kind)
            preset += score(q["mz"], s.truth, picked_snr=q["snr"])
        progress(f"independent {kind}: {part}; preset {kind}: {preset}; median symmetric {sym.median_ppm:.3f} ppm, "
                 f"tailed {tail.median_ppm:.3f} ppm")
        kinds[kind] = {"recall": part.recall, "false_rate": part.false_rate, "median_ppm": part.median_ppm,
                       "median_ppm_symmetric": sym.median_ppm, "median_ppm_tailed": tail.median_ppm,
                       "preset_recall": preset.recall, "preset_false_rate": preset.false_rate,
                       "preset_median_ppm": preset.median_ppm}
        total += part
    return {"independent_recall": total.recall, "independent_false_rate": total.false_rate,
            "independent_median_ppm": total.median_ppm, "independent_kinds": kinds}


def _bench_openms(args, progress, model, scans) -> dict:
    from dsp import pick_centroids

    nan = float("nan")
    try:
        import pyopenms  # noqa: F401
        from dsp.processor import spectrum_params
        from ionstream.offline.spectra import read_mzml_spectra
        from openms_oracle import agreement, apex_snr, openms_centroids
    except ImportError as exc:
        progress(f"OpenMS comparison skipped: {exc}")
        return {"openms_agreement": nan, "openms_speedup": nan}
    data = _tests_dir() / "data"
    if not (data / "openms_orbitrap.mzML").exists():
        progress(f"OpenMS comparison skipped: no real spectra in {data} (run from a source checkout)")
        return {"openms_agreement": nan, "openms_speedup": nan}
    worst = 1.0
    by_snr: dict = {}
    for name, preset, scans_used in (("openms_orbitrap.mzML", "orbitrap", None), ("openms_ftms.mzML", "fticr", None),
                                     ("small_ltqft.mzML", "fticr", {1})):
        counts = {snr: [0, 0] for snr in (1, 3, 5, 10)}
        for s in read_mzml_spectra(data / name):
            if s.centroided or s.ms_level != 1 or (scans_used and s.scan not in scans_used):
                continue
            params = spectrum_params(s.intensity, preset=preset)
            for snr, c in counts.items():
                theirs = openms_centroids(s.mz, s.intensity, float(snr))
                theirs = theirs[apex_snr(s.mz, s.intensity, theirs, params) >= snr]
                h, t = agreement(pick_centroids(s.mz, s.intensity, preset=preset, min_snr=snr)["mz"], theirs)
                c[0], c[1] = c[0] + h, c[1] + t
        by_snr[name] = {str(snr): h / max(t, 1) for snr, (h, t) in counts.items()}
        progress(f"OpenMS agreement {name} at S/N 1/3/5/10: "
                 + ", ".join(f"{h}/{t} = {h / max(t, 1):.3f}" for h, t in counts.values()))
        worst = min(worst, by_snr[name]["3"])
    axis = np.array(model.axis)
    ys = [x.astype(np.float32) for x in scans[:8]]
    to = tp = float("inf")
    for _ in range(args.repeat):
        a, _ = _best(lambda: [openms_centroids(axis, y, 1.0) for y in ys], 1)
        b, _ = _best(lambda: [pick_centroids(axis, y, min_snr=1) for y in ys], 1)
        to, tp = min(to, a), min(tp, b)
    n = len(ys) * axis.size
    progress(f"PeakPickerHiRes {to / n * 1e9:.1f} ns/sample, pick_centroids {tp / n * 1e9:.1f} ns/sample (x{to / tp:.2f})")
    return {"openms_agreement": worst, "openms_agreement_by_snr": by_snr, "openms_speedup": to / tp,
            "openms_ns_per_sample": to / n * 1e9, "pick_centroids_ns_per_sample": tp / n * 1e9}


def run(args: argparse.Namespace, progress) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {"cpu_count": os.cpu_count() or 0, "load_average_1min": load}
    progress(f"{os.cpu_count()} CPUs, load average {load:.2f} before the run")
    progress(f"peak picking: {args.peaks_spectra} spectra of {args.peaks_samples} points, best of {args.repeat}")
    result.update(_bench_peaks(args, progress))
    progress(f"building {args.scans} scans of {args.samples} samples")
    model, scans = _scans(args)
    result.update(_bench_scan_dsp(args, progress, model, scans))
    result.update(_bench_threads(args, progress, model, scans))
    result.update(_bench_truth(args, progress))
    result.update(_bench_independent(args, progress))
    result.update(_bench_openms(args, progress, model, scans))
    result["samples_per_scan"] = args.samples
    return result
