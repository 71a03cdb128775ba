"""TensorRT backend, written to the TensorRT 10/11 Python API only (see ../shared/TENSORRT.md).

Build (once per model/precision/GPU/TensorRT version, then from the engine cache):
strongly typed network (precision is the ONNX graph's: FP32, FP16 by mixed-precision conversion,
INT8 by Q/DQ nodes; no precision builder flags, which TensorRT 11 removed), ONNX parser, builder
config with a workspace memory-pool limit, one optimisation profile over the batch axis per
execution context (identical min/opt/max; concurrent contexts with dynamic shapes each need their
own profile), a timing cache kept on disk, ``build_serialized_network``.

Run: per GPU one engine and ``contexts_per_gpu`` execution contexts, each with its own CUDA stream
and its own pinned host / device buffers sized for the profile's maximum batch (inference.gpu
.StreamSlot), tensor addresses set once by name (``set_tensor_address``); per batch:
``memcpy_htod_async`` -> ``set_input_shape`` -> ``execute_async_v3(stream)`` ->
``memcpy_dtoh_async`` -> one ``stream.synchronize()`` when the result is collected. Batches go
round-robin over all contexts of all GPUs. ``profile=True`` attaches an ``IProfiler`` that sums
per-layer times (:meth:`TensorRTBackend.layer_report`).

Never used here (removed in TensorRT 10/11): binding indices, ``execute_async_v2``,
``build_engine``, ``max_workspace_size``, ``BuilderFlag.FP16/INT8``, INT8 calibrators.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.backend import BackendError, BackendUnavailable
from inference.bundle import sha256_file
from inference.engine_cache import EngineCache, EngineKey
from inference.gpu import CudaContext, StreamBackend, StreamSlot

log = logging.getLogger("ionstream.inference")

NSYS_HINT = ("for a whole-program timeline (copies, kernels, streams) run under Nsight Systems: "
             "nsys profile -t cuda,nvtx,osrt -o ionstream-report ionstream bench infer --backend tensorrt")


def import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:
        raise BackendUnavailable(f"tensorrt does not import ({type(exc).__name__}: {exc})") from None
    return trt


def _logger(trt):
    """One TensorRT logger per process (TensorRT expects a single logger)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


_TRT_LOGGER = None


def _progress_monitor(trt):
    """An IProgressMonitor drawing tqdm bars for the builder's phases (TensorRT >= 10)."""
    from tqdm import tqdm

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = 0
            p = parent_phase
            while p is not None and p in self._bars:
                depth += 1
                p = getattr(self._bars[p], "_parent", None)
            bar = tqdm(total=num_steps, desc=("  " * depth) + phase_name, leave=depth == 0, file=sys.stderr,
                       position=depth)
            bar._parent = parent_phase
            self._bars[phase_name] = bar

        def step_complete(self, phase_name, step):
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True   # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmMonitor()


def _layer_profiler(trt):
    class LayerProfiler(trt.IProfiler):
        """Sums per-layer times (ms) over every execution it is attached to."""

        def __init__(self):
            trt.IProfiler.__init__(self)
            self.total_ms: dict[str, float] = {}
            self.calls: dict[str, int] = {}

        def report_layer_time(self, layer_name, ms):
            self.total_ms[layer_name] = self.total_ms.get(layer_name, 0.0) + ms
            self.calls[layer_name] = self.calls.get(layer_name, 0) + 1

    return LayerProfiler()


def build_plan(onnx_path: str | Path, *, input_name: str, n_features: int, min_batch: int, opt_batch: int,
               max_batch: int, profiles: int = 1, timing_cache: bytes = b"", workspace_bytes: int = 1 << 30,
               progress: bool = False, detailed_profiling: bool = False) -> tuple[bytes, bytes]:
    """Build a serialized engine from an ONNX file; returns ``(plan, timing_cache)`` bytes.

    Call with a CUDA context active. Raises BackendError with the parser's errors on failure.
    """
    trt = import_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # Strongly typed: every layer runs in the precision its ONNX graph gives (10.x; implied in 11.x).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors or 'no parser message'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    for _ in range(profiles):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (min_batch, n_features), (opt_batch, n_features), (max_batch, n_features))
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(bytes(timing_cache or b""))
    config.set_timing_cache(cache, False)   # ignore_mismatch=False: a foreign cache is not used
    if detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    log.info("tensorrt %s: built an engine from %s in %.1f s (batch %d/%d/%d, %d profile(s))", trt.__version__,
             Path(onnx_path).name, time.perf_counter() - t0, min_batch, opt_batch, max_batch, profiles)
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def engine_key(onnx_path: Path, ctx: CudaContext, *, precision: str, n_features: int, min_batch: int,
               opt_batch: int, max_batch: int, profiles: int) -> EngineKey:
    trt = import_tensorrt()
    return EngineKey(onnx_sha256=sha256_file(onnx_path), trt_version=trt.__version__, gpu_name=ctx.name,
                     compute_capability=ctx.compute_capability, precision=precision, profiles=profiles,
                     min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, n_features=n_features)


def load_or_build(onnx_path: Path, ctx: CudaContext, *, cache: EngineCache, input_name: str, precision: str,
                  n_features: int, min_batch: int, opt_batch: int, max_batch: int, profiles: int,
                  workspace_bytes: int = 1 << 30, progress: bool = False, detailed_profiling: bool = False,
                  rebuild: bool = False):
    """``(runtime, engine, key, built)`` for ``ctx``'s GPU: from the cache, else built and cached.

    A cache entry that is stale/corrupt, or that TensorRT refuses to deserialize, is rebuilt
    (with a log line), never fatal. Call with ``ctx`` active.
    """
    trt = import_tensorrt()
    key = engine_key(onnx_path, ctx, precision=precision, n_features=n_features, min_batch=min_batch,
                     opt_batch=opt_batch, max_batch=max_batch, profiles=profiles)
    runtime = trt.Runtime(_logger(trt))
    plan = None if rebuild else cache.load(key)
    if plan is not None:
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is not None:
            log.info("tensorrt: engine from cache %s", cache.path(key))
            return runtime, engine, key, False
        log.warning("engine cache: TensorRT could not deserialize %s; rebuilding", cache.path(key))
        cache.discard(key)
    plan, timing = build_plan(onnx_path, input_name=input_name, n_features=n_features, min_batch=min_batch,
                              opt_batch=opt_batch, max_batch=max_batch, profiles=profiles,
                              timing_cache=cache.load_timing_cache(key), workspace_bytes=workspace_bytes,
                              progress=progress, detailed_profiling=detailed_profiling)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BackendError(f"TensorRT could not deserialize the engine it just built from {onnx_path}")
    try:
        path = cache.store(key, plan)
        cache.store_timing_cache(key, timing)
        log.info("tensorrt: engine cached at %s", path)
    except OSError as exc:
        log.warning("engine cache: cannot write to %s (%s); the engine is used uncached", cache.directory, exc)
    return runtime, engine, key, True


class _GpuState:
    __slots__ = ("runtime", "engine", "key", "built")


class TensorRTBackend(StreamBackend):
    """See the module docstring. Create, use and close it in one thread (the batcher's)."""

    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, *, input_name: str, output_name: str, n_features: int,
                 n_classes: int, precision: str = "fp32", max_batch: int = 64, opt_batch: int | None = None,
                 gpus: list[int] | None = None, contexts_per_gpu: int = 2, engine_cache: str | Path | None = None,
                 profile: bool = False, workspace_bytes: int = 1 << 30, progress: bool = False,
                 rebuild: bool = False):
        super().__init__()
        self.trt = import_tensorrt()
        self.onnx_path = Path(onnx_path)
        self.input_name, self.output_name = input_name, output_name
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self.precision = precision
        self.opt_batch = int(opt_batch or max(1, min(max_batch, 32)))
        self.contexts_per_gpu = int(contexts_per_gpu)
        self.cache = EngineCache(engine_cache)
        self.workspace_bytes = int(workspace_bytes)
        self._progress, self._rebuild, self._detailed = progress, rebuild, profile
        self.profiler = _layer_profiler(self.trt) if profile else None
        self._gpu: dict[int, _GpuState] = {}
        self._setup(list(gpus or [0]), self.contexts_per_gpu, int(max_batch), self.n_features, self.n_classes)
        log.info("tensorrt %s: %s (%s) on %s, %d context(s)/stream(s) per GPU, max batch %d",
                 self.trt.__version__, self.onnx_path.name, precision,
                 ", ".join(f"GPU {c.index} {c.name} (sm {c.compute_capability})" for c in self.contexts),
                 self.contexts_per_gpu, self.max_batch)

    # -- per GPU / per context --------------------------------------------------------------
    def _prepare_gpu(self, ctx: CudaContext) -> None:
        trt = self.trt
        st = _GpuState()
        st.runtime, st.engine, st.key, st.built = load_or_build(
            self.onnx_path, ctx, cache=self.cache, input_name=self.input_name, precision=self.precision,
            n_features=self.n_features, min_batch=1, opt_batch=self.opt_batch, max_batch=self.max_batch,
            profiles=self.contexts_per_gpu, workspace_bytes=self.workspace_bytes, progress=self._progress,
            detailed_profiling=self._detailed, rebuild=self._rebuild)
        engine = st.engine
        modes = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            modes[name] = engine.get_tensor_mode(name)
        if modes.get(self.input_name) != trt.TensorIOMode.INPUT or modes.get(self.output_name) != trt.TensorIOMode.OUTPUT:
            raise BackendError(f"engine from {self.onnx_path} has I/O tensors {sorted(modes)}; expected input "
                               f"{self.input_name!r} and output {self.output_name!r}")
        for name in (self.input_name, self.output_name):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if dtype != np.float32:
                raise BackendError(f"engine tensor {name!r} is {dtype}; ionstream feeds and reads float32 "
                                   f"(convert with keep_io_types=True)")
        if engine.num_optimization_profiles < self.contexts_per_gpu:
            raise BackendError(f"engine has {engine.num_optimization_profiles} optimisation profiles, "
                               f"{self.contexts_per_gpu} contexts need one each")
        lo, _, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        if lo[0] > 1 or hi[0] < self.max_batch or hi[1] != self.n_features:
            raise BackendError(f"engine profile {tuple(lo)}..{tuple(hi)} does not cover batch 1..{self.max_batch} "
                               f"of {self.n_features} features")
        self._gpu[ctx.index] = st

    def _prepare_slot(self, slot: StreamSlot) -> None:
        engine = self._gpu[slot.ctx.index].engine
        context = engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        if not context.set_optimization_profile_async(slot.index, slot.stream.handle):
            raise BackendError(f"TensorRT refused optimisation profile {slot.index} for context {slot.index}")
        slot.stream.synchronize()
        for name, buf in ((self.input_name, slot.dev_in), (self.output_name, slot.dev_out)):
            if not context.set_tensor_address(name, int(buf)):
                raise BackendError(f"TensorRT refused the device address of tensor {name!r}")
        if self.profiler is not None:
            context.profiler = self.profiler
        slot.trt_context = context

    def _execute(self, slot: StreamSlot, n: int) -> None:
        context = slot.trt_context
        if not context.set_input_shape(self.input_name, (n, self.n_features)):
            raise BackendError(f"TensorRT refused input shape ({n}, {self.n_features})")
        if not context.execute_async_v3(slot.stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _release_slot(self, slot: StreamSlot) -> None:
        slot.trt_context = None

    def _release_gpu(self, ctx: CudaContext) -> None:
        self._gpu.pop(ctx.index, None)

    # -- reporting ---------------------------------------------------------------------------
    def layer_report(self) -> list[tuple[str, float, int]]:
        """``(layer, total ms, calls)`` sorted by total time (needs ``profile=True``)."""
        if self.profiler is None:
            return []
        p = self.profiler
        return sorted(((k, p.total_ms[k], p.calls[k]) for k in p.total_ms), key=lambda r: -r[1])

    def describe(self) -> dict[str, Any]:
        d = {"backend": self.name, "device": ",".join(f"cuda:{c.index}" for c in self.contexts),
             "tensorrt": self.trt.__version__, "precision": self.precision,
             "model_file": self.onnx_path.name, "gpus": ",".join(str(c.index) for c in self.contexts),
             "contexts_per_gpu": self.contexts_per_gpu, "max_batch": self.max_batch, "opt_batch": self.opt_batch}
        if self.contexts:
            d.update(self.contexts[0].describe())
            st = self._gpu.get(self.contexts[0].index)
            if st is not None:
                d["engine_cache"] = str(self.cache.path(st.key))
                d["engine_built"] = st.built
        return d
