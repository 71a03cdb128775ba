"""Torch backend: the bundle's ``torch.export`` program on CUDA GPUs (pycuda buffers) or the CPU.

Why a torch program in the bundle (``model.pt2``, written by tools/train_model.py and checked
against ``model.onnx`` at export) rather than converting the ONNX graph at load time: it needs
no converter package beside torch (onnx2torch also pulls torchvision), the network that runs is
the one that was trained, exported by torch itself, and its SHA-256 is checked at load like the
ONNX graphs'. A bundle without it gets a BundleError naming the command that makes it.

On CUDA (:class:`TorchCudaBackend`) it runs on inference.gpu's machinery, as TensorRT does:

- the GPU's *primary* context, retained by pycuda (torch's runtime uses that same context), one
  :class:`~inference.gpu.StreamSlot` per stream with pinned host buffers and pycuda device
  buffers sized for ``max_batch``; batches round-robin over all slots of all GPUs;
- the network reads the slot's pycuda input buffer and writes its output buffer in place: both are
  wrapped as torch tensors through ``__cuda_array_interface__`` (no copies), and it runs on the
  slot's pycuda stream (``torch.cuda.ExternalStream``);
- CUDA graphs: per slot, one graph per batch bucket (powers of two up to ``max_batch``) captured
  at start; a batch of n replays the smallest bucket >= n (rows beyond n are ignored);
- a batch ends with the slot's blocking-sync event: the waiting thread sleeps rather than spins
  (``blocking_sync=False`` spins, for the lowest latency of one spectrum at a time);
- precision ``fp32`` (TF32 off, so results match ONNX Runtime CPU) or ``fp16`` (half weights and
  activations, float32 in and out);
- :meth:`TorchCudaBackend.submit_spectra`: raw spectra binned and normalised on the GPU by
  :class:`~inference.gpu.DeviceFeaturizer` straight into the slot's input buffer, then classified:
  features never return to the host.

Without a usable GPU (:class:`TorchCpuBackend`) it runs the same program on the CPU, and says so
in ``describe()`` (``device: cpu``), which ``ionstream status`` shows.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from inference.backend import Backend, BackendError, BackendUnavailable, Pending
from inference.gpu import CudaContext, GpuUnavailable, SlotPending, StreamBackend, StreamSlot, import_pycuda

log = logging.getLogger("ionstream.inference")

TORCH_PRECISIONS = ("fp32", "fp16")


def import_torch():
    """``torch``, or BackendUnavailable saying how to install it."""
    try:
        import torch
    except Exception as exc:  # ImportError, or OSError from a broken install's libraries
        raise BackendUnavailable(f"torch does not import ({type(exc).__name__}: {exc}); "
                                 f"pip install 'ionstream[torch]'") from None
    return torch


def torch_cuda_available() -> tuple[bool, str]:
    """(True, why) when torch imports, sees a CUDA GPU and pycuda works; else (False, the reason)."""
    try:
        torch = import_torch()
    except BackendUnavailable as exc:
        return False, str(exc)
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} imports but sees no CUDA GPU"
    try:
        cuda = import_pycuda()
    except GpuUnavailable as exc:
        return False, f"torch {torch.__version__} sees a GPU but {exc}"
    return True, f"torch {torch.__version__} and pycuda see {cuda.Device.count()} GPU(s)"


def load_program(path: Path):
    """The ``torch.export`` program at ``path`` as an eval-mode module (on the CPU)."""
    torch = import_torch()
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # serde version or op mismatch between torch releases
        raise BackendError(f"torch {torch.__version__} cannot load {path} ({type(exc).__name__}: "
                           f"{str(exc)[:300]}); re-export it with this torch: "
                           f"python tools/train_model.py --export-torch {path.parent}") from None
    return program.module()


def _check_precision(precision: str) -> None:
    if precision not in TORCH_PRECISIONS:
        raise BackendError(f"the torch backend runs precision fp32 or fp16, not {precision!r} "
                           f"(int8 runs on onnxruntime or tensorrt)")


class TorchCpuBackend(Backend):
    """The bundle's torch program on the CPU (machines without CUDA; tests)."""

    name = "torch"

    def __init__(self, program_path: str | Path, *, input_name: str, output_name: str, n_features: int,
                 n_classes: int, precision: str = "fp32", max_batch: int = 64, intra_op_threads: int = 1):
        super().__init__()
        _check_precision(precision)
        if precision != "fp32":
            raise BackendError("torch on the CPU runs fp32 only (fp16 needs a CUDA GPU)")
        self.torch = import_torch()
        self.program_path = Path(program_path)
        self.input_name, self.output_name = input_name, output_name
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self.precision = precision
        self.max_batch = int(max_batch)
        self.intra_op_threads = int(intra_op_threads)
        if self.intra_op_threads > 0:
            # Process-wide in torch; 1 by default so the DSP workers keep their cores (as onnxruntime).
            self.torch.set_num_threads(self.intra_op_threads)
        self.module = load_program(self.program_path)
        log.info("torch %s: %s (%s) on the CPU, %d thread(s)", self.torch.__version__, self.program_path.name,
                 precision, self.torch.get_num_threads())

    def submit(self, batch: np.ndarray) -> Pending:
        batch = self.check_batch(batch)
        with self.torch.inference_mode():
            probs = self.module(self.torch.from_numpy(batch)).numpy()
        return Pending(np.array(probs, dtype=np.float32, copy=True))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "precision": self.precision,
                "torch": self.torch.__version__, "model_file": self.program_path.name,
                "threads": self.torch.get_num_threads(), "max_batch": self.max_batch}

    def close(self) -> None:
        self.module = None
        super().close()


class _DeviceArray:
    """A pycuda device buffer seen through ``__cuda_array_interface__`` (torch wraps it without a copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype=np.float32):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str, "data": (int(ptr), False),
                                         "version": 3, "strides": None, "stream": None}


def graph_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a CUDA graph: powers of two below ``max_batch``, and ``max_batch``."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class TorchCudaBackend(StreamBackend):
    """See the module docstring. Create, use and close it in one thread (the batcher's)."""

    name = "torch"

    def __init__(self, program_path: str | Path, *, input_name: str, output_name: str, n_features: int,
                 n_classes: int, precision: str = "fp32", max_batch: int = 64, gpus: list[int] | None = None,
                 streams_per_gpu: int = 2, cuda_graphs: bool = True, blocking_sync: bool = True):
        super().__init__()
        _check_precision(precision)
        self.torch = import_torch()
        self.program_path = Path(program_path)
        self.input_name, self.output_name = input_name, output_name
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self.precision = precision
        self.cuda_graphs = bool(cuda_graphs)
        self.streams_per_gpu = int(streams_per_gpu)
        self._program = load_program(self.program_path)
        self._modules: dict[int, Any] = {}
        self._featurize = False
        self.blocking_sync = bool(blocking_sync)
        self._setup(list(gpus or [0]), self.streams_per_gpu, int(max_batch), self.n_features, self.n_classes,
                    blocking_sync=self.blocking_sync)
        log.info("torch %s: %s (%s) on %s, %d stream(s) per GPU, max batch %d, CUDA graphs %s",
                 self.torch.__version__, self.program_path.name, precision,
                 ", ".join(f"cuda:{c.index} {c.name}" for c in self.contexts), self.streams_per_gpu,
                 self.max_batch, "on" if self.cuda_graphs else "off")

    # -- per GPU / per slot (called with the context active) ---------------------------------
    def _flags(self):
        """cuDNN settings around every run and capture: no TF32 for fp32 (ONNX Runtime agreement),
        autotuned algorithms (the batch sizes are few and fixed)."""
        return self.torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                               allow_tf32=False)

    def _prepare_gpu(self, ctx: CudaContext) -> None:
        torch = self.torch
        if ctx.index >= torch.cuda.device_count():
            raise BackendError(f"torch sees {torch.cuda.device_count()} GPU(s); GPU {ctx.index} is not one of them")
        module = load_program(self.program_path).to(f"cuda:{ctx.index}")
        if self.precision == "fp16":
            module = module.half()
        self._modules[ctx.index] = module

    def _prepare_slot(self, slot: StreamSlot) -> None:
        torch = self.torch
        dev = torch.device(f"cuda:{slot.ctx.index}")
        slot._cuda.memset_d32(slot.dev_in, 0, slot.max_batch * self.n_features)   # graphs read whole buckets
        slot.x = torch.as_tensor(_DeviceArray(slot.dev_in, (slot.max_batch, self.n_features)), device=dev)
        slot.y = torch.as_tensor(_DeviceArray(slot.dev_out, (slot.max_batch, self.n_classes)), device=dev)
        if slot.x.data_ptr() != int(slot.dev_in) or slot.y.data_ptr() != int(slot.dev_out):
            raise BackendError("torch copied the pycuda buffers instead of wrapping them")
        slot.torch_stream = torch.cuda.ExternalStream(int(slot.stream.handle), device=dev)
        slot.graphs = {}
        if self.cuda_graphs:
            self._capture(slot)

    def _forward(self, module, slot: StreamSlot, n: int) -> None:
        x = slot.x[:n]
        if self.precision == "fp16":
            x = x.half()
        slot.y[:n].copy_(module(x))     # fp16 output is widened to float32 by the copy

    def _capture(self, slot: StreamSlot) -> None:
        """One CUDA graph per bucket on the slot's stream, sharing one memory pool (largest first)."""
        torch = self.torch
        module = self._modules[slot.ctx.index]
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode(), self._flags(), torch.cuda.device(slot.ctx.index), \
                torch.cuda.stream(slot.torch_stream):
            for b in sorted(graph_buckets(slot.max_batch), reverse=True):
                for _ in range(2):          # warm-up outside capture: cuDNN autotuning, lazy init
                    self._forward(module, slot, b)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=slot.torch_stream, capture_error_mode="thread_local"):
                    self._forward(module, slot, b)
                slot.graphs[b] = graph
        slot.buckets = sorted(slot.graphs)
        slot.stream.synchronize()

    def _execute(self, slot: StreamSlot, n: int) -> None:
        torch = self.torch
        with torch.cuda.device(slot.ctx.index), torch.cuda.stream(slot.torch_stream):
            if slot.graphs:
                bucket = next(b for b in slot.buckets if b >= n)
                slot.graphs[bucket].replay()
            else:
                with torch.inference_mode(), self._flags():
                    self._forward(self._modules[slot.ctx.index], slot, n)

    def _release_slot(self, slot: StreamSlot) -> None:
        featurizer = getattr(slot, "featurizer", None)
        if featurizer is not None:
            featurizer.free()
        slot.featurizer = None
        slot.graphs, slot.x, slot.y, slot.torch_stream = {}, None, None, None

    def _release_gpu(self, ctx: CudaContext) -> None:
        self._modules.pop(ctx.index, None)
        with self.torch.cuda.device(ctx.index):
            self.torch.cuda.empty_cache()

    # -- GPU features straight into the network -----------------------------------------------
    def enable_featurizer(self, spec, mz: np.ndarray, dtype=np.uint16) -> None:
        """Give every slot a :class:`~inference.gpu.DeviceFeaturizer` for spectra on the m/z axis ``mz``
        (``spec``: the bundle's FeatureSpec), for :meth:`submit_spectra`."""
        from inference.gpu import DeviceFeaturizer, compile_kernels

        if spec.bins != self.n_features:
            raise ValueError(f"feature spec has {spec.bins} bins; the network takes {self.n_features}")
        for ctx in self.contexts:
            with ctx.active():
                module = compile_kernels(ctx)
                for slot in (s for s in self.slots if s.ctx is ctx):
                    slot.featurizer = DeviceFeaturizer(ctx, spec, mz, max_rows=self.max_batch, dtype=dtype,
                                                       module=module, stream=slot.stream)
        self._featurize = True

    def submit_spectra(self, intensities: np.ndarray) -> SlotPending:
        """Classify raw spectra ``(n, samples)``: one H2D copy of the spectra, binning and normalisation
        kernels writing the slot's input buffer, the network, one D2H copy of the probabilities."""
        if not self._featurize:
            raise BackendError("call enable_featurizer(spec, mz) before submit_spectra")
        if self._closed:
            raise BackendError(f"{self.name} backend is closed")
        slot = self._next_slot()
        f = slot.featurizer
        y = np.asarray(intensities)
        if y.ndim != 2 or y.shape[1] != f.n_samples or not 1 <= y.shape[0] <= self.max_batch:
            raise ValueError(f"`intensities` must be (rows <= {self.max_batch}, {f.n_samples}), got {y.shape}")
        n = y.shape[0]
        with slot.ctx.active():
            np.copyto(f.host_in[:n], y, casting="same_kind")
            slot._cuda.memcpy_htod_async(f.dev_in, f.host_in[:n], slot.stream)
            f.bin_device(f.dev_in, slot.dev_in, n, stream=slot.stream)
            f.normalise_device(slot.dev_in, n, stream=slot.stream)
            self._execute(slot, n)
            slot.download(n)
        slot.pending = SlotPending(slot, n)
        return slot.pending

    def describe(self) -> dict[str, Any]:
        d = {"backend": self.name, "device": ",".join(f"cuda:{c.index}" for c in self.contexts),
             "precision": self.precision, "torch": self.torch.__version__, "model_file": self.program_path.name,
             "streams_per_gpu": self.streams_per_gpu, "cuda_graphs": self.cuda_graphs,
             "blocking_sync": self.blocking_sync, "max_batch": self.max_batch}
        if self.contexts:
            d.update(self.contexts[0].describe())
        return d


def open_torch(program_path: Path, *, device: str = "auto", **kwargs) -> Backend:
    """A torch backend: ``device`` "cuda" (GPU or BackendUnavailable), "cpu", or "auto" (CUDA when
    torch and pycuda see a GPU, else the CPU with a log line saying why)."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"torch device must be auto, cuda or cpu, got {device!r}")
    cuda_opts = {k: kwargs.pop(k) for k in ("gpus", "streams_per_gpu", "cuda_graphs", "blocking_sync") if k in kwargs}
    cpu_opts = {k: kwargs.pop(k) for k in ("intra_op_threads",) if k in kwargs}
    if device != "cpu":
        ok, why = torch_cuda_available()
        if ok:
            return TorchCudaBackend(program_path, **kwargs, **cuda_opts)
        if device == "cuda":
            raise BackendUnavailable(f"backend torch on cuda: {why}")
        log.warning("torch: no usable GPU (%s); running on the CPU", why)
    return TorchCpuBackend(program_path, **kwargs, **cpu_opts)
