"""pycuda helpers for GPU backends: thread-owned CUDA contexts, pinned/device buffers, streams.

What TensorRT's performance guidance asks of the host side, in one place (tensorrt_backend
builds on it; tests/inference_tests/test_gpu.py runs all of it on a real GPU):

- :class:`CudaContext`: the *primary* context of one GPU (the one the CUDA runtime, TensorRT,
  cupy and torch use too), retained by the thread that creates it and made current only
  around work (``with ctx.active():``), so one thread can drive several GPUs. Everything
  allocated under it is freed by that thread (pycuda refuses out-of-thread frees).
- :class:`StreamSlot`: one CUDA stream with its own page-locked host buffers and device
  buffers, allocated once for the largest batch and reused; a batch is an async H2D copy,
  work on the stream, an async D2H copy and one wait on the slot's event (blocking-sync by
  default: the waiting thread sleeps instead of spinning a core).
- :class:`StreamBackend`: a :class:`~inference.backend.Backend` over N slots per GPU, fed
  round-robin, up to N batches in flight (one per stream). Subclasses implement
  ``_execute(slot, n)``: TensorRT enqueues its engine; torch_backend runs the torch program (a CUDA
  graph replay) on the slot's buffers in place; :class:`GpuNormaliser` runs the
  feature-normalisation kernel.
- :class:`DeviceFeaturizer`: dsp.features' binning and normalisation for a whole batch on the
  GPU (same formulas; float32 on the device against float64 on the host). ``bin_device`` and
  ``normalise_device`` write any device buffer on any stream: the torch backend points them at
  its slot's network input, so GPU features never return to the host.

Kernels are compiled at run time with NVRTC (cuda-python, present wherever CUDA is) or, failing
that, pycuda's SourceModule (needs nvcc).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import numpy as np

from inference.backend import Backend, BackendError, BackendUnavailable, Pending

log = logging.getLogger("ionstream.inference")


class GpuUnavailable(BackendUnavailable):
    """pycuda or a GPU is missing (the message says which)."""


def import_pycuda():
    """``pycuda.driver``, initialised; GpuUnavailable (with the reason) if it cannot be had."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        raise GpuUnavailable(f"pycuda does not import ({type(exc).__name__}: {exc})") from None
    try:
        cuda.init()
        n = cuda.Device.count()
    except Exception as exc:
        raise GpuUnavailable(f"CUDA driver not usable ({type(exc).__name__}: {exc})") from None
    if n < 1:
        raise GpuUnavailable("no CUDA GPU present")
    return cuda


# ----------------------------------------------------------------------------------------
# Contexts and buffers
# ----------------------------------------------------------------------------------------

class CudaContext:
    """The primary CUDA context of GPU ``device``, owned by the creating thread.

    ``with ctx.active():`` makes it current for the block (push/pop; nests). Close it in the
    same thread after freeing what was allocated under it.
    """

    def __init__(self, device: int = 0):
        cuda = import_pycuda()
        if not 0 <= device < cuda.Device.count():
            raise GpuUnavailable(f"GPU {device} does not exist ({cuda.Device.count()} present)")
        self._cuda = cuda
        self.index = device
        self.device = cuda.Device(device)
        self.name = self.device.name()
        major, minor = self.device.compute_capability()
        self.compute_capability = f"{major}.{minor}"
        self.total_memory = self.device.total_memory()
        self.owner = threading.get_ident()
        self._ctx = self.device.retain_primary_context()
        self._closed = False

    @contextlib.contextmanager
    def active(self):
        if self._closed:
            raise BackendError(f"CUDA context of GPU {self.index} is closed")
        self._ctx.push()
        try:
            yield self
        finally:
            self._cuda.Context.pop()

    def synchronize(self) -> None:
        with self.active():
            self._cuda.Context.synchronize()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        if threading.get_ident() != self.owner:
            log.warning("CUDA context of GPU %d closed from a thread that does not own it", self.index)
        self._closed = True
        self._ctx = None   # drops the retained primary context

    def describe(self) -> dict[str, Any]:
        return {"gpu": self.index, "gpu_name": self.name, "compute_capability": self.compute_capability,
                "gpu_memory_gib": round(self.total_memory / 2**30, 1)}


class StreamSlot:
    """One CUDA stream with page-locked host and device buffers for batches up to ``max_batch``.

    ``host_in``/``host_out`` are pinned NumPy arrays ``(max_batch, n_in)``/``(max_batch, n_out)``;
    ``dev_in``/``dev_out`` the device buffers of the same sizes. Create, use and free it with
    ``ctx`` active, in ``ctx``'s thread.
    """

    def __init__(self, ctx: CudaContext, max_batch: int, n_in: int, n_out: int,
                 in_dtype=np.float32, out_dtype=np.float32, index: int = 0, blocking_sync: bool = True):
        cuda = ctx._cuda
        self.ctx = ctx
        self.index = index
        self.max_batch = int(max_batch)
        self.stream = cuda.Stream()
        # Waiting on a blocking-sync event sleeps in the driver; stream.synchronize() on the primary
        # context (scheduling "auto") spins a core for the whole batch, CPU the daemon's DSP needs.
        flags = cuda.event_flags.DISABLE_TIMING | (cuda.event_flags.BLOCKING_SYNC if blocking_sync else 0)
        self.done = cuda.Event(flags)
        self.blocking_sync = bool(blocking_sync)
        self.host_in = cuda.pagelocked_empty((self.max_batch, n_in), np.dtype(in_dtype))
        self.host_out = cuda.pagelocked_empty((self.max_batch, n_out), np.dtype(out_dtype))
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.pending: "SlotPending | None" = None
        self._cuda = cuda

    def upload(self, batch: np.ndarray) -> int:
        """Copy ``batch`` into the pinned input buffer and start its H2D copy; returns n."""
        n = batch.shape[0]
        np.copyto(self.host_in[:n], batch, casting="same_kind")
        self._cuda.memcpy_htod_async(self.dev_in, self.host_in[:n], self.stream)
        return n

    def download(self, n: int) -> None:
        """Start the D2H copy of the first ``n`` output rows into the pinned output buffer, and mark
        the end of the batch with the slot's event (what ``SlotPending.wait`` waits for)."""
        self._cuda.memcpy_dtoh_async(self.host_out[:n], self.dev_out, self.stream)
        self.done.record(self.stream)

    def free(self) -> None:
        for buf in (self.dev_in, self.dev_out):
            buf.free()
        for arr in (self.host_in, self.host_out):
            arr.base.free()
        self.stream = self.done = None


class SlotPending(Pending):
    """A batch running on a slot's stream; ``wait()`` waits once for the slot's end-of-batch event."""

    __slots__ = ("slot", "n")

    def __init__(self, slot: StreamSlot, n: int):
        super().__init__(None)
        self.slot, self.n = slot, n

    def wait(self) -> np.ndarray:
        if self._result is None:
            slot = self.slot
            with slot.ctx.active():
                slot.done.synchronize()
            self._result = slot.host_out[:self.n].copy()
            if slot.pending is self:
                slot.pending = None
        return self._result


class StreamBackend(Backend):
    """A Backend over ``slots_per_gpu`` stream slots on each GPU in ``gpus``, round-robin.

    Subclasses call :meth:`_setup` from ``__init__`` (with their per-GPU state made in
    :meth:`_prepare_gpu`) and implement :meth:`_execute`. Create, use and close it in one thread.
    """

    def _setup(self, gpus: list[int], slots_per_gpu: int, max_batch: int, n_in: int, n_out: int,
               in_dtype=np.float32, out_dtype=np.float32, blocking_sync: bool = True) -> None:
        if not gpus:
            raise ValueError("`gpus` must list at least one GPU index")
        if slots_per_gpu < 1:
            raise ValueError(f"`slots_per_gpu` must be >= 1, got {slots_per_gpu}")
        self.max_batch = int(max_batch)
        self.contexts: list[CudaContext] = []
        self.slots: list[StreamSlot] = []
        per_gpu: list[list[StreamSlot]] = []
        try:
            for g in gpus:
                ctx = CudaContext(g)
                self.contexts.append(ctx)
                with ctx.active():
                    self._prepare_gpu(ctx)
                    mine = [StreamSlot(ctx, max_batch, n_in, n_out, in_dtype, out_dtype, index=i,
                                       blocking_sync=blocking_sync) for i in range(slots_per_gpu)]
                    for slot in mine:
                        self._prepare_slot(slot)
                per_gpu.append(mine)
        except BaseException:
            self._teardown(per_gpu)
            raise
        # Interleave GPUs so round-robin spreads consecutive batches over them.
        for i in range(slots_per_gpu):
            for mine in per_gpu:
                self.slots.append(mine[i])
        self.max_in_flight = len(self.slots)
        self._next = 0

    def _prepare_gpu(self, ctx: CudaContext) -> None:
        """Per-GPU state (engine, kernels), with ``ctx`` active."""

    def _prepare_slot(self, slot: StreamSlot) -> None:
        """Per-slot state (execution context, tensor addresses), with the slot's context active."""

    def _execute(self, slot: StreamSlot, n: int) -> None:
        """Enqueue the work for ``n`` rows on ``slot.stream`` (input already on its way to dev_in)."""
        raise NotImplementedError

    def _next_slot(self) -> StreamSlot:
        """The next slot round-robin, its previous batch finished (the caller kept more in flight than slots)."""
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if slot.pending is not None:
            slot.pending.wait()
        return slot

    def submit(self, batch: np.ndarray) -> SlotPending:
        batch = self.check_batch(batch)
        slot = self._next_slot()
        with slot.ctx.active():
            n = slot.upload(batch)
            self._execute(slot, n)
            slot.download(n)
        slot.pending = SlotPending(slot, n)
        return slot.pending

    def _teardown(self, per_gpu=None) -> None:
        groups = per_gpu if per_gpu is not None else [[s for s in self.slots if s.ctx is c] for c in self.contexts]
        for ctx, mine in zip(self.contexts, groups):
            try:
                with ctx.active():
                    for slot in mine:
                        if slot.stream is not None:
                            slot.stream.synchronize()
                        self._release_slot(slot)
                        slot.free()
                    self._release_gpu(ctx)
            except Exception:
                log.exception("freeing GPU %d resources failed", ctx.index)
        for ctx in self.contexts:
            ctx.close()
        self.slots = []

    def _release_slot(self, slot: StreamSlot) -> None:
        """Drop per-slot state (with its context active)."""

    def _release_gpu(self, ctx: CudaContext) -> None:
        """Drop per-GPU state (with ``ctx`` active)."""

    def close(self) -> None:
        if not self._closed:
            self._teardown()
        super().close()


# ----------------------------------------------------------------------------------------
# Kernels: feature binning and normalisation (dsp.features on the device)
# ----------------------------------------------------------------------------------------

KERNEL_SOURCE = r"""
// ionstream feature kernels: the formulas of dsp/features.py, float32 on the device.

template <typename T>
__device__ __forceinline__ float seg_area(const T* y, const float* dmz, int i) {
    return 0.5f * ((float)y[i] + (float)y[i + 1]) * dmz[i];
}

// One thread per (row, bin): mean intensity over the bin (trapezoid integral / bin width).
template <typename T>
__device__ void bin_rows(const T* __restrict__ y, int n, const int* __restrict__ idx,
                         const float* __restrict__ frac, const float* __restrict__ dmz,
                         const float* __restrict__ width, int bins, float* __restrict__ out) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y;
    if (b >= bins) return;
    const T* yr = y + (size_t)row * n;
    int i0 = idx[b], i1 = idx[b + 1];
    float acc = 0.0f;
    for (int i = i0; i < i1; ++i) acc += seg_area(yr, dmz, i);
    acc += frac[b + 1] * seg_area(yr, dmz, i1) - frac[b] * seg_area(yr, dmz, i0);
    out[(size_t)row * bins + b] = acc / width[b];
}

extern "C" __global__ void bin_f32(const float* y, int n, const int* idx, const float* frac,
                                   const float* dmz, const float* width, int bins, float* out) {
    bin_rows<float>(y, n, idx, frac, dmz, width, bins, out);
}

extern "C" __global__ void bin_u16(const unsigned short* y, int n, const int* idx, const float* frac,
                                   const float* dmz, const float* width, int bins, float* out) {
    bin_rows<unsigned short>(y, n, idx, frac, dmz, width, bins, out);
}

// op: 0 max, 1 min, 2 sum
__device__ __forceinline__ float combine(float a, float b, int op) {
    return op == 0 ? fmaxf(a, b) : (op == 1 ? fminf(a, b) : a + b);
}

__device__ float block_reduce(float v, int op, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, o), op);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        float identity = op == 0 ? -3.402823466e38f : (op == 1 ? 3.402823466e38f : 0.0f);
        v = lane < nw ? red[lane] : identity;
        for (int o = 16; o > 0; o >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, o), op);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    float r = red[0];
    __syncthreads();
    return r;
}

// One block per row, in place. baseline: 0 none, 1 tophat(window), 2 min.
// scale: 0 none, 1 max, 2 sum. transform: 0 none, 1 sqrt. Shared memory: 2 * bins floats.
extern "C" __global__ void normalise(float* x, int bins, int baseline, int window, int scale,
                                     int transform) {
    extern __shared__ float sh[];
    __shared__ float red[32];
    float* v = sh;
    float* t = sh + bins;
    float* row = x + (size_t)blockIdx.x * bins;
    for (int b = threadIdx.x; b < bins; b += blockDim.x) v[b] = row[b];
    __syncthreads();
    if (baseline == 1) {
        int h = window / 2;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) {
            float m = 3.402823466e38f;
            for (int k = b - h; k <= b + h; ++k) m = fminf(m, v[min(max(k, 0), bins - 1)]);
            t[b] = m;
        }
        __syncthreads();
        for (int b = threadIdx.x; b < bins; b += blockDim.x) {
            float m = -3.402823466e38f;
            for (int k = b - h; k <= b + h; ++k) m = fmaxf(m, t[min(max(k, 0), bins - 1)]);
            v[b] -= m;
        }
        __syncthreads();
    } else if (baseline == 2) {
        float m = 3.402823466e38f;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) m = fminf(m, v[b]);
        m = block_reduce(m, 1, red);
        for (int b = threadIdx.x; b < bins; b += blockDim.x) v[b] -= m;
        __syncthreads();
    }
    if (scale == 1) {
        float m = 0.0f;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) m = fmaxf(m, fabsf(v[b]));
        m = fmaxf(block_reduce(m, 0, red), 1e-30f);
        for (int b = threadIdx.x; b < bins; b += blockDim.x) v[b] /= m;
    } else if (scale == 2) {
        float s = 0.0f;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) s += v[b];
        s = block_reduce(s, 2, red);
        if (fabsf(s) > 1e-30f)
            for (int b = threadIdx.x; b < bins; b += blockDim.x) v[b] /= s;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) {
        float val = v[b];
        if (transform == 1) val = sqrtf(fmaxf(val, 0.0f));
        row[b] = val;
    }
}
"""

_BASELINE = {"none": 0, "tophat": 1, "min": 2}
_SCALE = {"none": 0, "max": 1, "sum": 2}
_TRANSFORM = {"none": 0, "sqrt": 1}


def _nvrtc_cubin(source: str, ctx: CudaContext) -> bytes:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        from cuda import nvrtc  # cuda-python < 12.6
    arch = "sm_" + ctx.compute_capability.replace(".", "")

    def check(res, what):
        err = res[0] if isinstance(res, tuple) else res
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"{what}: {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"ionstream_features.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            raise RuntimeError(f"NVRTC compile failed for {arch}: {buf.decode(errors='replace').strip()}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_kernels(ctx: CudaContext, source: str = KERNEL_SOURCE):
    """A pycuda Module of ``source`` for ``ctx``'s GPU (call with ``ctx`` active).

    NVRTC through cuda-python first (no nvcc needed), pycuda's SourceModule (nvcc) second.
    Raises GpuUnavailable naming both failures.
    """
    cuda = ctx._cuda
    try:
        module = cuda.module_from_buffer(_nvrtc_cubin(source, ctx))
        log.debug("GPU kernels compiled with NVRTC for sm_%s", ctx.compute_capability)
        return module
    except Exception as exc:
        first = f"NVRTC: {type(exc).__name__}: {exc}"
    try:
        from pycuda.compiler import SourceModule

        module = SourceModule(source, no_extern_c=True, options=["-std=c++17"])
        log.debug("GPU kernels compiled with nvcc (pycuda SourceModule)")
        return module
    except Exception as exc:
        second = f"nvcc: {type(exc).__name__}: {str(exc)[:300]}"
    raise GpuUnavailable(f"cannot compile the GPU kernels ({first}; {second})")


class DeviceFeaturizer:
    """dsp.features for a batch of spectra on one m/z axis, on the GPU.

    ``featurizer(intensities)`` takes ``(rows, n)`` float32 or uint16 intensities and returns
    ``(rows, bins)`` float32 feature vectors, computed by the ``bin_*`` and ``normalise``
    kernels on ``stream``: one H2D copy, two kernels, one D2H copy, one synchronisation.
    :meth:`normalise_device` normalises already-binned rows in device memory (for a GPU
    pipeline that bins elsewhere). Create, use and :meth:`free` it with ``ctx`` active.
    """

    def __init__(self, ctx: CudaContext, spec, mz: np.ndarray, max_rows: int, dtype=np.float32, module=None,
                 stream=None):
        from dsp.features import BinPlan

        cuda = ctx._cuda
        self._cuda = cuda
        self.ctx, self.spec = ctx, spec
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.uint16)):
            raise ValueError(f"`dtype` must be float32 or uint16, got {self.dtype}")
        plan = BinPlan(spec, mz)
        mz = np.asarray(mz, dtype=np.float64)
        self.n_samples, self.bins, self.max_rows = plan.n_samples, spec.bins, int(max_rows)
        if 2 * self.bins * 4 > 48 * 1024:
            raise ValueError(f"normalise kernel keeps a row in shared memory: bins must be <= 6144, got {self.bins}")
        self.module = module or compile_kernels(ctx)
        self._bin = self.module.get_function("bin_f32" if self.dtype == np.float32 else "bin_u16")
        self._norm = self.module.get_function("normalise")
        self._consts = [cuda.to_device(a) for a in (
            plan.index.astype(np.int32), plan.frac.astype(np.float32), np.diff(mz).astype(np.float32),
            plan.width.astype(np.float32))]
        self.stream = stream or cuda.Stream()
        self.host_in = cuda.pagelocked_empty((self.max_rows, self.n_samples), self.dtype)
        self.host_out = cuda.pagelocked_empty((self.max_rows, self.bins), np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)

    def bin_device(self, dev_in, dev_out, rows: int, stream=None) -> None:
        idx, frac, dmz, width = self._consts
        threads = 128
        self._bin(dev_in, np.int32(self.n_samples), idx, frac, dmz, width, np.int32(self.bins), dev_out,
                  block=(threads, 1, 1), grid=((self.bins + threads - 1) // threads, int(rows)),
                  stream=stream or self.stream)

    def normalise_device(self, dev_rows, rows: int, stream=None) -> None:
        """Normalise ``rows`` binned vectors (float32, ``(rows, bins)``) in device memory, in place."""
        s = self.spec
        self._norm(dev_rows, np.int32(self.bins), np.int32(_BASELINE[s.baseline]), np.int32(s.baseline_window),
                   np.int32(_SCALE[s.scale]), np.int32(_TRANSFORM[s.transform]),
                   block=(256, 1, 1), grid=(int(rows), 1), shared=2 * self.bins * 4, stream=stream or self.stream)

    def __call__(self, intensities: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = np.asarray(intensities)
        if y.ndim != 2 or y.shape[1] != self.n_samples or not 1 <= y.shape[0] <= self.max_rows:
            raise ValueError(f"`intensities` must be (rows <= {self.max_rows}, {self.n_samples}), got {y.shape}")
        rows = y.shape[0]
        cuda = self._cuda
        np.copyto(self.host_in[:rows], y, casting="same_kind")
        cuda.memcpy_htod_async(self.dev_in, self.host_in[:rows], self.stream)
        self.bin_device(self.dev_in, self.dev_out, rows)
        self.normalise_device(self.dev_out, rows)
        cuda.memcpy_dtoh_async(self.host_out[:rows], self.dev_out, self.stream)
        self.stream.synchronize()
        if out is None:
            return self.host_out[:rows].copy()
        out[:rows] = self.host_out[:rows]
        return out[:rows]

    def free(self) -> None:
        """Release everything (with ``ctx`` active, in its thread)."""
        self.stream.synchronize()
        for buf in [self.dev_in, self.dev_out, *self._consts]:
            buf.free()
        for arr in (self.host_in, self.host_out):
            arr.base.free()
        self.stream = self.module = self._bin = self._norm = None
        self._consts = []


class GpuNormaliser(StreamBackend):
    """Feature normalisation of binned vectors on the GPU, as a StreamBackend.

    ``predict(batch)`` maps ``(n, bins)`` binned (un-normalised) vectors to normalised feature
    vectors, through exactly the machinery the TensorRT backend uses (thread-owned contexts,
    pinned buffers, N streams round-robin, async copies, one sync per batch), with the
    ``normalise`` kernel as the work. Used by the GPU tests and ``ionstream bench gpu``; it is
    not a classifier.
    """

    name = "gpu-normalise"

    def __init__(self, spec, *, gpus: list[int] | None = None, streams_per_gpu: int = 2, max_batch: int = 64):
        super().__init__()
        self.spec = spec
        self.input_name, self.output_name = "binned", "features"
        self.n_features = self.n_classes = spec.bins
        self._modules: dict[int, Any] = {}
        self._setup(list(gpus or [0]), streams_per_gpu, max_batch, spec.bins, spec.bins)

    def _prepare_gpu(self, ctx: CudaContext) -> None:
        module = compile_kernels(ctx)
        self._modules[ctx.index] = module.get_function("normalise")

    def _release_gpu(self, ctx: CudaContext) -> None:
        self._modules.pop(ctx.index, None)

    def _execute(self, slot: StreamSlot, n: int) -> None:
        s = self.spec
        cuda = slot.ctx._cuda
        cuda.memcpy_dtod_async(slot.dev_out, slot.dev_in, n * self.n_features * 4, slot.stream)
        self._modules[slot.ctx.index](
            slot.dev_out, np.int32(s.bins), np.int32(_BASELINE[s.baseline]), np.int32(s.baseline_window),
            np.int32(_SCALE[s.scale]), np.int32(_TRANSFORM[s.transform]),
            block=(256, 1, 1), grid=(int(n), 1), shared=2 * s.bins * 4, stream=slot.stream)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "streams": len(self.slots),
                **(self.contexts[0].describe() if self.contexts else {})}
