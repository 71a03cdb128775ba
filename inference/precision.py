"""Precision lives in the ONNX graph: FP16 and INT8 versions of a bundle's FP32 model.

TensorRT 11 removed the FP16/INT8 builder flags and INT8 calibrators; a strongly typed network
runs each layer in the precision its ONNX graph says. So (../shared/TENSORRT.md):

- FP16: ``onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)``:
  weights and activations in FP16, inputs and outputs still float32 (the feature vector and
  the probabilities keep their dtype, so the backends' buffers do not change).
- INT8: ``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)``: explicit
  QuantizeLinear/DequantizeLinear pairs (symmetric signed INT8 weights per channel and
  activations), with activation ranges calibrated on representative feature vectors (simulator
  spectra, see tools/quantize_model.py).

Both graphs also run on ONNX Runtime's CPU provider, which is how their accuracy is measured on
machines without a GPU. onnxconverter-common is optional (``pip install 'ionstream[train]'``).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("ionstream.inference")


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write an FP16 (mixed-precision, float32 I/O) version of the ONNX model ``src`` to ``dst``."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise RuntimeError(f"FP16 conversion needs onnx and onnxconverter-common "
                           f"(pip install 'ionstream[train]'): {exc}") from None
    model = onnx.load(str(src))
    # (Blocking Softmax from conversion would be nicer for probabilities near 1, but
    # onnxconverter-common 1.16 then leaves the graph output in float16 despite keep_io_types.)
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    out_types = {o.name: o.type.tensor_type.elem_type for o in converted.graph.output}
    if any(t != onnx.TensorProto.FLOAT for t in out_types.values()):
        raise RuntimeError(f"FP16 conversion left non-float32 outputs: {out_types}")
    converted.doc_string = (model.doc_string + " [fp16: onnxconverter-common, keep_io_types]").strip()
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return Path(dst)


class _ArrayReader:
    """onnxruntime.quantization CalibrationDataReader over a (n, bins) float32 array."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 64):
        self.name, self.data, self.batch, self.pos = name, data, batch, 0

    def get_next(self):
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self):
        self.pos = 0


def quantize_int8(src: str | Path, dst: str | Path, calibration: np.ndarray, input_name: str = "features",
                  method: str = "minmax") -> Path:
    """Write an explicitly quantized (Q/DQ, INT8) version of ``src`` to ``dst``.

    ``calibration``: ``(n, bins)`` representative float32 feature vectors (a few hundred suffice).
    ``method``: ``minmax`` or ``percentile`` (activation range estimation).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"`method` must be one of {', '.join(methods)}, got {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=methods[method],
            # Symmetric activations are what TensorRT's explicit quantization expects; the
            # Softmax and its input stay float (probabilities need more than 8 bits).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            op_types_to_quantize=["Conv", "MatMul", "Gemm", "MaxPool", "Relu"],
        )
    return Path(dst)
