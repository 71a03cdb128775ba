"""`ionstream bench e2e`: the whole pipeline on the simulator, against a naive composition.

1. Max rate: the simulator emits as fast as the pipeline takes scans (ring policy ``block``:
   the source waits, so the figure is the sustained rate with zero drops, and the drop
   counters prove it).
2. Half load: the simulator paced at half that rate; latency frame-in → message-out (the
   class message, the last one a scan produces) at p50/p99.
3. Naive composition of the same steps in one thread, on the same scans: SciPy
   Savitzky-Golay + find_peaks(prominence, width) + feature vector + one ONNX Runtime call
   per scan + pickle over a ZeroMQ PUSH socket.
The simulator runs in a process of its own (:mod:`ionstream.benchmarks.feeder`) and feeds the
pipeline over TCP, so the figures are the pipeline's, not the pipeline's plus the simulator's
(``--in-process-simulator`` puts it back in the pipeline's process, for comparison).

``--scaling`` repeats 1 and 2 for 1, 2, 4, ... DSP workers up to cores - 1 (or ``--scaling-workers``):
``scaling`` = [{workers, scans_per_s, p99_latency_ms_half_load}], ``scans_per_s_max``,
``workers_at_max``, ``scaling_efficiency`` (scans/s at the max / (workers there x scans/s with
1 worker)) and ``cores`` (usable cores: affinity and cgroup quota). ``--samples 4096,65536,...``
(more than one size) adds a sweep of step 1 at each size: ``samples_sweep`` = [{samples,
scans_per_s, cpu_cores_used, ns_per_sample_per_core}] (CPU ns of the pipeline's process per
sample; flat across sizes if the cost is linear in samples).

Per-stage figures say where the time goes: CPU per scan of each stage's threads (Linux), DSP
busy time per scan (wall, GIL waits included), inference per batch.

``--backend torch`` (or tensorrt, auto) runs steps 1 and 2 on that backend and step 1 once more
on ONNX Runtime CPU in the same process, so the classifier thread's CPU per scan can be compared
(``cpu_backend_*`` figures and ``classifier_cpu_ratio`` = ONNX Runtime's / this backend's), and
once with a classifier that does no work (``floor_cpu_ms_per_scan_classifier``: batching, results
and publishing the class messages, which every backend pays).
"""
from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

from ionstream.config import Config

HELP = "whole pipeline throughput and latency vs a naive composition (simulator; --backend)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=_int_list, default=[65536], metavar="N[,N...]",
                        help="samples per scan (default 65536); several (4096,65536,1048576) add a sweep")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per pipeline run (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DSP workers (0 = the default: usable cores - 1, at most 8)")
    parser.add_argument("--naive-scans", type=int, default=150, help="scans for the naive baseline")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "auto", "tensorrt", "torch"),
                        help="classifier backend (default %(default)s); any other is also compared with "
                             "onnxruntime in the same run")
    parser.add_argument("--scaling", action="store_true",
                        help="also run 1, 2, 4, ... DSP workers up to cores - 1 (the scaling table)")
    parser.add_argument("--scaling-workers", type=_int_list, default=None, metavar="W[,W...]",
                        help="worker counts for --scaling (default 1, 2, 4, ... up to cores - 1)")
    parser.add_argument("--in-process-simulator", action="store_true",
                        help="run the simulator in the pipeline's process (sim://) instead of a feeder process")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def scaling_workers(cores: int) -> list[int]:
    """1, 2, 4, ... below ``cores``, and cores - 1 itself (at least [1])."""
    top = max(1, cores - 1)
    counts = [w for w in (1 << i for i in range(12)) if w < top]
    return counts + [top]


def _config(samples: int, rate: float, workers: int, backend: str = "onnxruntime") -> Config:
    config = Config()
    # repeat: the instrument renders its spectra on its own hardware, not on the pipeline's cores
    repeat = 64 if samples <= (1 << 18) else 8  # rendering 1 M points takes a while
    config.source.url = f"sim://?rate={rate:g}&samples={samples}&seed=3&repeat={repeat}"
    config.ring.policy = "block"
    config.ring.max_samples = samples
    # at most ~512 MiB of 16-bit scans in the ring (256 slots of 1 M points would be 512 MiB alone)
    config.ring.slots = max(16, min(config.ring.slots, (512 << 20) // (2 * samples)))
    config.dsp.workers = workers
    config.inference.backend = backend
    config.publish.endpoint = "inproc://bench-e2e"
    config.publish.control = ""
    return config


# Pipeline threads by name -> the stage reported (anything else: "other": ZeroMQ's I/O thread,
# ONNX Runtime's pool, the main thread).
_STAGE_OF_THREAD = {"acquisition": "acquisition", "sequencer": "sequencer", "batcher": "classifier",
                    "ionstream-pub": "publisher"}


def _stage_of(thread_name: str) -> str:
    if thread_name.startswith("dsp") and thread_name[3:].isdigit():
        return "dsp"
    return _STAGE_OF_THREAD.get(thread_name, "other")


def _cpu_by_stage() -> dict[str, float]:
    """CPU seconds used so far by this process's threads, summed per stage (Linux /proc; {} elsewhere)."""
    import os
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        stage = _stage_of(names.get(int(tid), ""))
        out[stage] = out.get(stage, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


class _ConstantBackend:
    """A classifier that does no work (fixed probabilities): the classifier thread's CPU floor."""

    name = "constant"
    max_in_flight = 1

    def __init__(self, n_classes: int):
        self._probs = np.full((1, n_classes), 1.0 / n_classes, np.float32)

    def submit(self, batch: np.ndarray):
        from inference.backend import Pending

        return Pending(np.repeat(self._probs, len(batch), axis=0))

    def describe(self) -> dict:
        return {"backend": self.name, "device": "none", "precision": "none"}

    def close(self) -> None:
        pass


def _pipeline_class(constant: bool):
    from ionstream.daemon.pipeline import Pipeline

    if not constant:
        return Pipeline

    class FloorPipeline(Pipeline):
        def _backend_factory(self, bundle):
            return lambda: _ConstantBackend(bundle.n_classes)

    return FloorPipeline


def _run_pipeline(config: Config, seconds: float, progress, constant: bool = False,
                  in_process: bool = False) -> dict:
    """Run the pipeline on ``config.source.url`` (a ``sim://`` URL), served by a feeder process
    unless ``in_process``; the figures of ``seconds`` after a warm-up."""
    if in_process:
        return _measure(config, seconds, progress, constant)
    from ionstream.benchmarks.feeder import start_feeder

    sim_url = config.source.url
    feeder = start_feeder(sim_url)
    try:
        config.source.url = feeder.url
        result = _measure(config, seconds, progress, constant)
    finally:
        config.source.url = sim_url
        feeder.stop()
    return result


def _measure(config: Config, seconds: float, progress, constant: bool) -> dict:
    pipeline = _pipeline_class(constant)(config).start()
    time.sleep(min(2.0, seconds / 4))  # warm-up: sessions, caches, first batches
    s0 = pipeline.snapshot()
    busy0 = sum(pipeline.dsp.busy_ns)
    cpu0 = _cpu_by_stage()
    pipeline.latency = type(pipeline.latency)()  # measure latency after warm-up only
    t0 = time.monotonic()
    time.sleep(seconds)
    s1 = pipeline.snapshot()
    cpu1 = _cpu_by_stage()
    elapsed = time.monotonic() - t0
    busy1 = sum(pipeline.dsp.busy_ns)
    batch = pipeline.batcher.stats() if pipeline.batcher else {}
    pipeline.stop()
    scans = s1["scans"] - s0["scans"]
    progress(f"{config.source.url}: {scans / elapsed:.0f} scans/s, drops {s1['drops_total']}, "
             f"p99 {s1['latency_p99_ms']:.2f} ms")
    cpu = {stage: (cpu1[stage] - cpu0.get(stage, 0.0)) for stage in cpu1}
    return {
        **{f"cpu_ms_per_scan_{stage}": 1e3 * used / max(1, scans) for stage, used in cpu.items()},
        "cpu_cores_used": sum(cpu.values()) / elapsed,
        "scans_per_s": scans / elapsed,
        "drops": s1["drops_total"],
        "latency_p50_ms": s1["latency_p50_ms"],
        "latency_p99_ms": s1["latency_p99_ms"],
        "dsp_ms_per_scan": (busy1 - busy0) / max(1, scans) / 1e6,
        "dsp_workers": s1["dsp_workers"],
        "infer_batch_ms_p50": batch.get("batch_ms_p50", float("nan")),
        "infer_mean_batch": batch.get("mean_batch", float("nan")),
        "infer_queue_delay_p99_ms": batch.get("queue_delay_ms_p99", float("nan")),
        "backend_info": batch.get("backend", {}),
    }


def _naive(samples: int, n_scans: int, progress) -> float:
    """Scans/s of the plain composition, one thread, one ONNX call per scan."""
    import onnxruntime as ort
    import scipy.signal
    import zmq

    from dsp.features import feature_vector_reference as feature_vector  # the plain NumPy one
    from inference.bundle import load_bundle
    from instrument.simulator import SimConfig, Simulator
    from instrument.spectrum_model import mz_axis
    from instrument.frames import FrameDecoder

    bundle = load_bundle(None)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    sim = iter(Simulator(SimConfig(scan_rate_hz=0, n_samples=samples, seed=3, status_interval_s=0)))
    decoder = FrameDecoder()
    scans = []
    for _ in range(n_scans):
        frame, _truth = next(sim)
        for f in decoder.feed(frame):
            scans.append((f.header.calibration, f.samples().copy()))
    mz = mz_axis(scans[0][0], samples)
    ctx = zmq.Context.instance()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.bind("inproc://naive")
    pull.connect("inproc://naive")
    t0 = time.perf_counter()
    for _calibration, raw in scans:
        x = raw.astype(np.float64)
        smooth = scipy.signal.savgol_filter(x, 7, 2)
        noise = 1.4826 * np.median(np.abs(np.diff(x))) / np.sqrt(2)
        peaks, props = scipy.signal.find_peaks(smooth, prominence=3 * noise, width=1)
        feats = feature_vector(mz, raw, bundle.feature_spec)[None, :].astype(np.float32)
        probs = session.run(None, {bundle.input_name: feats})[0]
        push.send(pickle.dumps({"peaks": mz[peaks], "props": props, "probs": probs}))
        pull.recv()
    rate = len(scans) / (time.perf_counter() - t0)
    push.close(0)
    pull.close(0)
    progress(f"naive composition: {rate:.0f} scans/s")
    return rate


def _full_and_half(args: argparse.Namespace, samples: int, workers: int, backend: str, progress) -> tuple[dict, dict]:
    """Step 1 (max sustained rate) and step 2 (half that rate) for one configuration."""
    inproc = args.in_process_simulator
    progress(f"max sustained rate, {backend}, {workers or 'default'} DSP worker(s) "
             "(ring policy block: the simulator waits for the pipeline)")
    full = _run_pipeline(_config(samples, 0, workers, backend), args.seconds, progress, in_process=inproc)
    half_rate = max(1.0, full["scans_per_s"] / 2)
    progress(f"half load: {half_rate:.0f} scans/s")
    half = _run_pipeline(_config(samples, half_rate, workers, backend), args.seconds, progress, in_process=inproc)
    return full, half


def _scaling(args: argparse.Namespace, samples: int, backend: str, progress) -> dict:
    """The scaling table: steps 1 and 2 at each worker count (see the module docstring)."""
    from ionstream.cores import usable_cores

    cores = usable_cores()
    rows = []
    for workers in args.scaling_workers or scaling_workers(cores):
        full, half = _full_and_half(args, samples, workers, backend, progress)
        rows.append({"workers": full["dsp_workers"], "scans_per_s": full["scans_per_s"],
                     "p99_latency_ms_half_load": half["latency_p99_ms"], "drops": full["drops"] + half["drops"],
                     "cpu_cores_used": full["cpu_cores_used"]})
    best = max(rows, key=lambda r: r["scans_per_s"])
    one = next((r["scans_per_s"] for r in rows if r["workers"] == 1), float("nan"))
    return {"scaling": rows, "scans_per_s_max": best["scans_per_s"], "workers_at_max": best["workers"],
            "scaling_efficiency": best["scans_per_s"] / (best["workers"] * one), "cores": cores}


def _samples_sweep(args: argparse.Namespace, backend: str, progress) -> dict:
    """Step 1 at each size of ``--samples``: CPU ns per sample per core (flat = linear cost)."""
    rows = []
    for samples in args.samples:
        full = _run_pipeline(_config(samples, 0, args.workers, backend), args.seconds, progress,
                             in_process=args.in_process_simulator)
        rate = full["scans_per_s"]
        rows.append({"samples": samples, "scans_per_s": rate, "cpu_cores_used": full["cpu_cores_used"],
                     "drops": full["drops"],
                     "ns_per_sample_per_core": full["cpu_cores_used"] * 1e9 / max(1e-9, rate * samples)})
    costs = [r["ns_per_sample_per_core"] for r in rows]
    return {"samples_sweep": rows, "ns_per_sample_per_core_spread": max(costs) / max(1e-12, min(costs))}


def run(args: argparse.Namespace, progress) -> dict:
    backend = getattr(args, "backend", "onnxruntime")
    sizes = args.samples if isinstance(args.samples, list) else [args.samples]
    args.samples = sizes
    samples = 65536 if 65536 in sizes else sizes[0]  # the main figures are at 64 k if the sweep has it
    extra = {}
    if getattr(args, "scaling", False):
        extra.update(_scaling(args, samples, backend, progress))
    if len(sizes) > 1:
        extra.update(_samples_sweep(args, backend, progress))
    full, half = _full_and_half(args, samples, args.workers, backend, progress)
    args.samples = samples  # the rest below is at one size
    compare = {}
    if backend != "onnxruntime":
        progress("max sustained rate, onnxruntime CPU (the comparison)")
        cpu = _run_pipeline(_config(args.samples, 0, args.workers), args.seconds, progress)
        progress("max sustained rate, a constant classifier (the classifier thread's CPU floor)")
        floor = _run_pipeline(_config(args.samples, 0, args.workers), args.seconds, progress, constant=True)
        compare = {"floor_cpu_ms_per_scan_classifier": floor.get("cpu_ms_per_scan_classifier", float("nan")),
                   "cpu_backend_scans_per_s": cpu["scans_per_s"],
                   "cpu_backend_cpu_ms_per_scan_classifier": cpu.get("cpu_ms_per_scan_classifier", float("nan")),
                   "classifier_cpu_ratio": (cpu.get("cpu_ms_per_scan_classifier", float("nan"))
                                            / max(1e-9, full.get("cpu_ms_per_scan_classifier", float("nan"))))}
    naive = _naive(args.samples, args.naive_scans, progress)
    info = full["backend_info"]
    return {
        "backend": info.get("backend", backend), "device": info.get("device", ""),
        "precision": info.get("precision", ""),
        **compare,
        "scans_per_s": full["scans_per_s"],
        "speedup_vs_naive": full["scans_per_s"] / naive,
        "naive_scans_per_s": naive,
        "p99_latency_ms_half_load": half["latency_p99_ms"],
        "p50_latency_ms_half_load": half["latency_p50_ms"],
        "half_load_scans_per_s": half["scans_per_s"],
        "drops": full["drops"] + half["drops"],
        "samples_per_scan": args.samples,
        "simulator": "in process" if args.in_process_simulator else "feeder process over TCP",
        **extra,
        "stage_dsp_ms_per_scan": full["dsp_ms_per_scan"],
        "stage_dsp_workers": full["dsp_workers"],
        "stage_infer_batch_ms_p50": full["infer_batch_ms_p50"],
        "stage_infer_mean_batch": full["infer_mean_batch"],
        "stage_infer_queue_delay_p99_ms": half["infer_queue_delay_p99_ms"],
        "p99_latency_ms_full_load": full["latency_p99_ms"],
        "stage_cpu_cores_used": full["cpu_cores_used"],
        **{f"stage_{k}": v for k, v in full.items() if k.startswith("cpu_ms_per_scan_")},
    }
