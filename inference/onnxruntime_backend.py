"""ONNX Runtime backend: CPU by default, the CUDA provider where onnxruntime-gpu is installed.

Session options are chosen for a daemon that shares the CPU with acquisition and DSP threads:

- ``intra_op_num_threads`` = 1 by default: the model is small (a batch of 32 takes well under a
  millisecond), so extra threads add synchronisation and steal cores from the DSP workers;
  raise it (``intra_op_threads``) for large batches on a machine with cores to spare.
- ``session.intra_op.allow_spinning`` = 0: idle ORT threads sleep instead of spinning, which
  would otherwise burn a core between batches.
- ``inter_op_num_threads`` = 1 and sequential execution: the graph is a chain.
- ``graph_optimization_level`` = ORT_ENABLE_ALL (constant folding, fusions, layout transforms).
- Log severity WARNING, so the daemon's log is not flooded.

Output goes through an IO binding into a preallocated ``(max_batch, classes)`` buffer, so a run
allocates nothing for its output; the input array is bound in place (no copy) when it is
C-contiguous float32. The bound arrays are referenced by the backend for the duration of the run,
because native code reads their memory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from inference.backend import Backend, BackendError, Pending

log = logging.getLogger("ionstream.inference")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(requested: list[str] | str | None) -> list[str]:
    """The ordered provider list: ``None``/"auto" = CUDA first when available, then CPU.

    An unknown or unavailable provider name raises ValueError listing the available ones.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested in (None, "auto"):
        return [CUDA, CPU] if CUDA in available else [CPU]
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    for p in requested:
        if p not in available:
            raise ValueError(f"ONNX Runtime provider {p!r} is not available; available: {', '.join(available)}")
    return list(requested)


class OnnxRuntimeBackend(Backend):
    """One ``onnxruntime.InferenceSession`` over one ONNX graph."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, input_name: str, output_name: str, n_features: int,
                 n_classes: int, precision: str = "fp32", max_batch: int = 64, intra_op_threads: int = 1,
                 providers: list[str] | str | None = None, io_binding: bool = True, device_id: int = 0):
        super().__init__()
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.input_name, self.output_name = input_name, output_name
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self.precision = precision
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
        if intra_op_threads < 0:
            raise ValueError(f"`intra_op_threads` must be >= 0 (0 = ONNX Runtime's default), got {intra_op_threads}")
        self.providers = choose_providers(providers)

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 2
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_options = [{"device_id": str(device_id)} if p == CUDA else {} for p in self.providers]
        try:
            self._session = ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=self.providers,
                                                 provider_options=provider_options)
        except Exception as exc:
            raise BackendError(f"onnxruntime could not load {self.onnx_path}: {exc}") from None
        used = self._session.get_providers()
        if self.providers[0] == CUDA and CUDA not in used:
            log.warning("onnxruntime: CUDA provider requested but the session runs on %s", ", ".join(used))
        self.providers = used
        self.intra_op_threads = int(intra_op_threads)
        self.device_id = device_id

        self._io = self._session.io_binding() if io_binding else None
        self._out = np.empty((self.max_batch, self.n_classes), dtype=np.float32)
        self._bound_input: np.ndarray | None = None   # kept referenced while native code reads it
        log.info("onnxruntime %s: %s (%s) on %s, %d intra-op thread(s), io binding %s", ort.__version__,
                 self.onnx_path.name, precision, ", ".join(used), self.intra_op_threads, "on" if self._io else "off")

    @property
    def session(self):
        """The underlying ``onnxruntime.InferenceSession``."""
        return self._session

    def submit(self, batch: np.ndarray) -> Pending:
        return Pending(self._predict(batch, out=None))

    def predict(self, batch: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``(n, classes)``; with ``out`` (float32, at least ``(n, classes)``) written there."""
        return self._predict(batch, out)

    def _predict(self, batch: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        batch = self.check_batch(batch)
        n = batch.shape[0]
        if self._io is None:
            res = self._session.run([self.output_name], {self.input_name: batch})[0]
            if out is not None:
                out[:n] = res
                return out[:n]
            return res
        io = self._io
        self._bound_input = batch
        io.bind_cpu_input(self.input_name, batch)
        io.bind_output(self.output_name, device_type="cpu", device_id=0, element_type=np.float32,
                       shape=(n, self.n_classes), buffer_ptr=self._out.ctypes.data)
        self._session.run_with_iobinding(io)
        self._bound_input = None
        if out is not None:
            out[:n] = self._out[:n]
            return out[:n]
        return self._out[:n].copy()

    def describe(self) -> dict[str, Any]:
        device = f"cuda:{self.device_id}" if self.providers and self.providers[0] == CUDA else "cpu"
        return {"backend": self.name, "device": device, "precision": self.precision, "model_file": self.onnx_path.name,
                "providers": ",".join(self.providers), "intra_op_threads": self.intra_op_threads,
                "io_binding": self._io is not None, "max_batch": self.max_batch}

    def close(self) -> None:
        if not self._closed:
            self._io = None
            self._session = None
        super().close()
