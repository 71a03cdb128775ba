"""`ionstream bench e2e`: the whole pipeline on the simulator, against a naive composition.

1. Max rate: the simulator emits as fast as the pipeline takes scans (ring policy ``block``:
   the source waits, so the figure is the sustained rate with zero drops, and the drop
   counters prove it).
2. Half load: the simulator paced at half that rate; latency frame-in → message-out (the
   class message, the last one a scan produces) at p50/p99.
3. Naive composition of the same steps in one thread, on the same scans: SciPy
   Savitzky-Golay + find_peaks(prominence, width) + feature vector + one ONNX Runtime call
   per scan + pickle over a ZeroMQ PUSH socket.
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
    parser.add_argument("--samples", type=int, default=65536, help="samples per scan (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per pipeline run (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DSP workers (0 = the default: usable cores - 1, at most 8)")
    parser.add_argument("--naive-scans", type=int, default=150, help="scans for the naive baseline")
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "auto", "tensorrt", "torch"),
                        help="classifier backend (default %(default)s); any other is also compared with "
                             "onnxruntime in the same run")


def _config(samples: int, rate: float, workers: int, backend: str = "onnxruntime") -> Config:
    config = Config()
    # repeat: the instrument renders its spectra on its own hardware, not on the pipeline's cores
    config.source.url = f"sim://?rate={rate:g}&samples={samples}&seed=3&repeat=64"
    config.ring.policy = "block"
    config.ring.max_samples = samples
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


def _run_pipeline(config: Config, seconds: float, progress, constant: bool = False) -> dict:
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


def run(args: argparse.Namespace, progress) -> dict:
    backend = getattr(args, "backend", "onnxruntime")
    progress(f"max sustained rate, {backend} (ring policy block: the simulator waits for the pipeline)")
    full = _run_pipeline(_config(args.samples, 0, args.workers, backend), args.seconds, progress)
    half_rate = max(1.0, full["scans_per_s"] / 2)
    progress(f"half load: {half_rate:.0f} scans/s")
    half = _run_pipeline(_config(args.samples, half_rate, args.workers, backend), args.seconds, progress)
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
        "stage_dsp_ms_per_scan": full["dsp_ms_per_scan"],
        "stage_dsp_workers": full["dsp_workers"],
        "stage_infer_batch_ms_p50": full["infer_batch_ms_p50"],
        "stage_infer_mean_batch": full["infer_mean_batch"],
        "stage_infer_queue_delay_p99_ms": half["infer_queue_delay_p99_ms"],
        "p99_latency_ms_full_load": full["latency_p99_ms"],
        "stage_cpu_cores_used": full["cpu_cores_used"],
        **{f"stage_{k}": v for k, v in full.items() if k.startswith("cpu_ms_per_scan_")},
    }
