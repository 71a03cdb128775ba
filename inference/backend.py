"""The classifier backend interface, and choosing a backend.

Every backend (onnxruntime_backend.OnnxRuntimeBackend, tensorrt_backend.TensorRTBackend) has the
same small surface, after ONNX Runtime's own ``InferenceSession``:

``get_inputs()`` / ``get_outputs()``
    :class:`TensorInfo` (name, shape with ``"batch"`` for the dynamic axis, NumPy dtype).
``run(output_names, feed) -> list[np.ndarray]``
    ``feed`` maps input names to arrays; the feed is checked before anything runs.
``predict(batch) -> np.ndarray``
    ``(n, bins)`` float32 features to ``(n, classes)`` float32 probabilities.
``submit(batch) -> Pending`` / ``pending.wait() -> np.ndarray``
    The same, split so a caller can keep up to ``max_in_flight`` batches running (TensorRT: one
    per execution context / CUDA stream). ONNX Runtime runs synchronously in ``submit``.
``close()``, ``closed``, context manager; ``describe()`` returns settings as a flat dict.

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

BACKENDS = ("auto", "onnxruntime", "tensorrt")


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
    backend : "auto" | "onnxruntime" | "tensorrt"
        ``auto`` picks TensorRT when it imports and a GPU is present, otherwise ONNX Runtime, and
        logs which and why. If TensorRT was picked by ``auto`` and then fails to start, it falls
        back to ONNX Runtime once, with a warning.
    precision : "fp32" | "fp16" | "int8"
        Selects the bundle's graph of that precision (precision lives in the ONNX graph).
    max_batch : int
        Largest batch (spectra); TensorRT sizes its optimisation profile and buffers for it.
    options
        Passed to the backend: onnxruntime ``intra_op_threads``, ``providers``, ``io_binding``;
        tensorrt ``gpus``, ``contexts_per_gpu``, ``engine_cache``, ``profile``, ``opt_batch``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    onnx_path = bundle.onnx_for(precision)
    if backend == "auto":
        ok, why = tensorrt_available()
        if ok:
            log.info("backend auto: tensorrt (%s)", why)
            try:
                return _open_tensorrt(bundle, onnx_path, precision, max_batch, options)
            except Exception as exc:
                log.warning("backend auto: tensorrt failed to start (%s: %s); falling back to onnxruntime",
                            type(exc).__name__, exc)
        else:
            log.info("backend auto: onnxruntime (%s)", why)
        return _open_onnxruntime(bundle, onnx_path, precision, max_batch, options)
    if backend == "tensorrt":
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(f"backend tensorrt: {why}; install the gpu extra (pip install "
                                     "'ionstream[gpu]': TensorRT, pycuda) on a machine with an NVIDIA GPU, "
                                     "or use --backend auto (falls back to ONNX Runtime) or onnxruntime")
        return _open_tensorrt(bundle, onnx_path, precision, max_batch, options)
    return _open_onnxruntime(bundle, onnx_path, precision, max_batch, options)


_ORT_OPTIONS = {"intra_op_threads", "providers", "io_binding", "device_id"}
_TRT_OPTIONS = {"gpus", "contexts_per_gpu", "engine_cache", "profile", "opt_batch", "workspace_bytes",
                "progress", "rebuild"}


def _open_onnxruntime(bundle, onnx_path, precision, max_batch, options) -> Backend:
    from inference.onnxruntime_backend import OnnxRuntimeBackend

    opts = {k: v for k, v in options.items() if k in _ORT_OPTIONS}
    unknown = set(options) - _ORT_OPTIONS - _TRT_OPTIONS
    if unknown:
        raise ValueError(f"unknown backend option(s): {', '.join(sorted(unknown))}")
    return OnnxRuntimeBackend(onnx_path, input_name=bundle.input_name, output_name=bundle.output_name,
                              n_features=bundle.feature_spec.bins, n_classes=bundle.n_classes,
                              precision=precision, max_batch=max_batch, **opts)


def _open_tensorrt(bundle, onnx_path, precision, max_batch, options) -> Backend:
    from inference.tensorrt_backend import TensorRTBackend

    opts = {k: v for k, v in options.items() if k in _TRT_OPTIONS}
    unknown = set(options) - _ORT_OPTIONS - _TRT_OPTIONS
    if unknown:
        raise ValueError(f"unknown backend option(s): {', '.join(sorted(unknown))}")
    return TensorRTBackend(onnx_path, input_name=bundle.input_name, output_name=bundle.output_name,
                           n_features=bundle.feature_spec.bins, n_classes=bundle.n_classes,
                           precision=precision, max_batch=max_batch, **opts)
