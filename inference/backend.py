"""The classifier backend interface, and choosing a backend.

Every backend (onnxruntime_backend.OnnxRuntimeBackend, tensorrt_backend.TensorRTBackend,
torch_backend.TorchCudaBackend / TorchCpuBackend) has the same small surface, after ONNX
Runtime's own ``InferenceSession``:

``get_inputs()`` / ``get_outputs()``
    :class:`TensorInfo` (name, shape with ``"batch"`` for the dynamic axis, NumPy dtype).
``run(output_names, feed) -> list[np.ndarray]``
    ``feed`` maps input names to arrays; the feed is checked before anything runs.
``predict(batch) -> np.ndarray``
    ``(n, bins)`` float32 features to ``(n, classes)`` float32 probabilities.
``submit(batch) -> Pending`` / ``pending.wait() -> np.ndarray``
    The same, split so a caller can keep up to ``max_in_flight`` batches running (TensorRT: one
    per execution context / CUDA stream). ONNX Runtime runs synchronously in ``submit``.
``close()``, ``closed``, context manager; ``describe()`` returns settings as a flat dict, with at
least ``backend``, ``device`` (``cpu``, ``cuda:0``, ...) and ``precision`` (the daemon's status).

A backend must be created, used and closed by one thread (TensorRT's CUDA context is current
in that thread); the micro-batcher does all three in its own thread.
"""
from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("ionstream.inference")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


class BackendError(RuntimeError):
    """A backend that cannot start or run (the message says which and why)."""


class BackendUnavailable(BackendError):
    """The backend's library or hardware is not present on this machine."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple            # ints, "batch" for the dynamic axis
    dtype: np.dtype


class Pending:
    """A submitted batch; ``wait()`` returns its ``(n, classes)`` probabilities (owned by the caller)."""

    __slots__ = ("_result",)

    def __init__(self, result: np.ndarray | None = None):
        self._result = result

    def wait(self) -> np.ndarray:
        return self._result


class Backend(abc.ABC):
    """Base class; subclasses set ``name``, ``input_name``, ``output_name``, ``n_features``, ``n_classes``."""

    name = "backend"
    max_in_flight = 1            # batches that may be submitted before the oldest is waited on
    max_batch: int | None = None  # largest batch predict() accepts (None: any)

    input_name: str
    output_name: str
    n_features: int
    n_classes: int

    def __init__(self) -> None:
        self._closed = False

    # -- the ONNX Runtime-like surface -------------------------------------------------------
    def get_inputs(self) -> list[TensorInfo]:
        return [TensorInfo(self.input_name, ("batch", self.n_features), np.dtype(np.float32))]

    def get_outputs(self) -> list[TensorInfo]:
        return [TensorInfo(self.output_name, ("batch", self.n_classes), np.dtype(np.float32))]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch: ``feed`` = ``{input_name: (n, bins) float32}``; returns the named outputs."""
        if len(feed) != 1:
            raise ValueError(f"Model requires 1 input. Input Feed contains {len(feed)}")
        if self.input_name not in feed:
            raise ValueError(f"Input {next(iter(feed))!r} is not the model's input {self.input_name!r}")
        for name in output_names or []:
            if name != self.output_name:
                raise ValueError(f"Output {name!r} is not the model's output {self.output_name!r}")
        return [self.predict(feed[self.input_name])]

    # -- batches ----------------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BackendError(f"{self.name} backend is closed")
        if not isinstance(batch, np.ndarray) or batch.ndim != 2 or batch.shape[1] != self.n_features:
            shape = getattr(batch, "shape", None)
            raise ValueError(f"`batch` must be (n, {self.n_features}) float32 features, got shape {shape}")
        if batch.shape[0] < 1:
            raise ValueError("`batch` must hold at least one feature vector")
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise ValueError(f"`batch` has {batch.shape[0]} rows; this backend's max_batch is {self.max_batch}")
        if batch.dtype != np.float32 or not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        return batch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(n, bins)`` features to ``(n, classes)`` probabilities (float32, owned by the caller)."""
        return self.submit(batch).wait()

    @abc.abstractmethod
    def submit(self, batch: np.ndarray) -> Pending:
        """Start one batch; returns a :class:`Pending`."""

    # -- lifetime ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensorrt_available() -> tuple[bool, str]:
    """(True, why) when TensorRT imports and pycuda sees a GPU; else (False, the reason)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install raising OSError on its libs
        return False, f"tensorrt does not import ({type(exc).__name__}: {exc})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        n = cuda.Device.count()
    except Exception as exc:
        return False, f"tensorrt {trt.__version__} imports but no usable GPU via pycuda ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, f"tensorrt {trt.__version__} imports but no CUDA GPU is present"
    return True, f"tensorrt {trt.__version__} imports and {n} GPU(s) are present"


def open_backend(bundle, backend: str = "auto", *, precision: str = "fp32", max_batch: int = 64,
                 **options: Any) -> Backend:
    """Create a backend for ``bundle`` (call it in the thread that will use it).

    Parameters
    ----------
    bundle : inference.bundle.ModelBundle
    backend : "auto" | "onnxruntime" | "tensorrt" | "torch"
        ``auto`` picks TensorRT when it imports and a GPU is present, else torch on CUDA when torch
        and pycuda see a GPU and the bundle has a torch program, else ONNX Runtime on the CPU, and
        logs which and why. A GPU backend picked by ``auto`` that fails to start falls back to the
        next one, with a warning. ``torch`` alone runs on the CPU where no GPU is usable.
    precision : "fp32" | "fp16" | "int8"
        onnxruntime/tensorrt: the bundle's graph of that precision. torch: fp32 or fp16 (half
        weights of the same program, CUDA only).
    max_batch : int
        Largest batch (spectra); GPU backends size their buffers (and TensorRT its profile) for it.
    options
        Passed to the backend that takes them (others are ignored; unknown names are an error):
        onnxruntime ``intra_op_threads``, ``providers``, ``io_binding``, ``device_id``; tensorrt
        ``gpus``, ``contexts_per_gpu``, ``engine_cache``, ``profile``, ``opt_batch``, ...; torch
        ``gpus``, ``contexts_per_gpu`` (streams per GPU), ``cuda_graphs``, ``blocking_sync``, ``device``
        (auto/cuda/cpu), ``intra_op_threads`` (CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    unknown = set(options) - set().union(*_OPTIONS.values())
    if unknown:
        raise ValueError(f"unknown backend option(s): {', '.join(sorted(unknown))}")
    if backend != "auto":
        if backend == "tensorrt":
            ok, why = tensorrt_available()
            if not ok:
                raise BackendUnavailable(f"backend tensorrt: {why}; install the gpu extra (pip install "
                                         "'ionstream[gpu]': TensorRT, pycuda) on a machine with an NVIDIA GPU, "
                                         "or use --backend auto (falls back to ONNX Runtime), torch or onnxruntime")
        return _OPENERS[backend](bundle, precision, max_batch, _options_for(backend, options))
    for name in ("tensorrt", "torch"):
        ok, why = _gpu_candidate(name, bundle, precision)
        if not ok:
            log.info("backend auto: not %s (%s)", name, why)
            continue
        log.info("backend auto: %s (%s)", name, why)
        opts = _options_for(name, options)
        if name == "torch":
            opts["device"] = "cuda"
        try:
            return _OPENERS[name](bundle, precision, max_batch, opts)
        except Exception as exc:
            log.warning("backend auto: %s failed to start (%s: %s); trying the next backend",
                        name, type(exc).__name__, exc)
    log.info("backend auto: onnxruntime")
    return _open_onnxruntime(bundle, precision, max_batch, _options_for("onnxruntime", options))


def _gpu_candidate(name: str, bundle, precision: str) -> tuple[bool, str]:
    """Whether ``auto`` should try GPU backend ``name``, and why (not)."""
    if name == "tensorrt":
        return tensorrt_available()
    from inference.torch_backend import TORCH_PRECISIONS, torch_cuda_available

    if bundle.torch_program is None:
        return False, "the bundle has no torch program (tools/train_model.py --export-torch makes one)"
    if precision not in TORCH_PRECISIONS:
        return False, f"torch runs fp32 or fp16, not {precision}"
    return torch_cuda_available()


_OPTIONS = {
    "onnxruntime": {"intra_op_threads", "providers", "io_binding", "device_id"},
    "tensorrt": {"gpus", "contexts_per_gpu", "engine_cache", "profile", "opt_batch", "workspace_bytes",
                 "progress", "rebuild"},
    "torch": {"gpus", "contexts_per_gpu", "cuda_graphs", "blocking_sync", "device", "intra_op_threads"},
}


def _options_for(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in _OPTIONS[backend]}


def _open_onnxruntime(bundle, precision, max_batch, opts) -> Backend:
    from inference.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle.onnx_for(precision), input_name=bundle.input_name,
                              output_name=bundle.output_name, n_features=bundle.feature_spec.bins,
                              n_classes=bundle.n_classes, precision=precision, max_batch=max_batch, **opts)


def _open_tensorrt(bundle, precision, max_batch, opts) -> Backend:
    from inference.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(bundle.onnx_for(precision), input_name=bundle.input_name,
                           output_name=bundle.output_name, n_features=bundle.feature_spec.bins,
                           n_classes=bundle.n_classes, precision=precision, max_batch=max_batch, **opts)


def _open_torch(bundle, precision, max_batch, opts) -> Backend:
    from inference.torch_backend import open_torch

    opts = dict(opts)
    if "contexts_per_gpu" in opts:      # the config's name; a torch "context" is a stream slot
        opts["streams_per_gpu"] = opts.pop("contexts_per_gpu")
    return open_torch(bundle.torch_program_path(), input_name=bundle.input_name, output_name=bundle.output_name,
                      n_features=bundle.feature_spec.bins, n_classes=bundle.n_classes, precision=precision,
                      max_batch=max_batch, **opts)


_OPENERS = {"onnxruntime": _open_onnxruntime, "tensorrt": _open_tensorrt, "torch": _open_torch}
