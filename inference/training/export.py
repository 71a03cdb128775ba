"""A trained network -> a model bundle like the shipped one (model.onnx + model.json), with its
FP16 and INT8 graphs made and scored by inference/precision.py, and its OOD statistics."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dsp.features import FeatureSpec
from inference.bundle import FORMAT, FORMAT_VERSION, load_bundle, sha256_file
from inference.ood import DEFAULT_MAX_SCORE, DEFAULT_MIN_COVERAGE, REFERENCE_PERCENTILE, OodStats

INPUT_NAME = "features"
OUTPUT_NAME = "probs"
OPSET = 17
VARIANT_FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def export_onnx(model, bins: int, path: Path, producer: str = "ionstream train") -> None:
    """Write the softmax-wrapped torch ``model`` as ONNX (dynamic batch axis) and check it."""
    import onnx
    import torch

    dummy = torch.zeros(2, bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    m = onnx.load(str(path))
    m.producer_name = producer
    m.doc_string = "ionstream spectrum classifier: (batch, bins) features -> (batch, classes) probabilities"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def predict(onnx_path: Path, X: np.ndarray, input_name: str = INPUT_NAME, batch: int = 512) -> np.ndarray:
    """Probabilities (n, classes) of an ONNX graph on ONNX Runtime's CPU provider, as the daemon runs it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    if not len(X):
        return np.zeros((0, sess.get_outputs()[0].shape[1]), np.float32)
    return np.concatenate([sess.run(None, {input_name: np.ascontiguousarray(X[i:i + batch], np.float32)})[0]
                           for i in range(0, len(X), batch)])


def make_variants(folder: Path, calib: np.ndarray, Xe: np.ndarray, ye: np.ndarray,
                  input_name: str = INPUT_NAME) -> dict[str, dict[str, Any]]:
    """FP16 and INT8 graphs beside ``folder/model.onnx``; each scored on (Xe, ye) against FP32.

    ``calib``: training feature vectors for the INT8 activation ranges. An entry for a variant that
    could not be made (e.g. onnxconverter-common missing) is omitted and its error returned under
    ``"errors"``."""
    from inference.precision import convert_fp16, quantize_int8

    src = folder / "model.onnx"
    p32 = predict(src, Xe, input_name)
    ref = float((p32.argmax(1) == ye).mean()) if len(ye) else None
    out: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for precision, name in VARIANT_FILES.items():
        dst = folder / name
        try:
            if precision == "fp16":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # onnxconverter-common's per-weight truncation notices
                    convert_fp16(src, dst)
                how = {"converter": "onnxconverter-common float16, keep_io_types=True"}
            else:
                quantize_int8(src, dst, calib, input_name=input_name)
                how = {"quantizer": f"onnxruntime quantize_static QDQ, QInt8 symmetric, per-channel weights, "
                                    f"minmax calibration on {len(calib)} training spectra"}
        except (RuntimeError, ImportError) as exc:
            errors[precision] = str(exc)
            continue
        p = predict(dst, Xe, input_name)
        entry: dict[str, Any] = {"path": name, "sha256": sha256_file(dst), "eval_spectra": int(len(ye)), **how}
        if len(ye):
            acc = float((p.argmax(1) == ye).mean())
            entry.update(top1=round(acc, 5), fp32_top1_same_spectra=round(ref, 5),
                         top1_loss_points=round(100 * (ref - acc), 3),
                         agreement_with_fp32=round(float((p.argmax(1) == p32.argmax(1)).mean()), 5),
                         max_abs_prob_diff=round(float(np.abs(p - p32).max()), 6))
        out[precision] = entry
    if errors:
        out["errors"] = errors  # type: ignore[assignment]
    return out


def write_bundle(folder: Path, *, name: str, version: str, description: str, labels: tuple[str, ...],
                 spec: FeatureSpec, ood: OodStats | None, variants: dict[str, dict[str, Any]],
                 training: dict[str, Any], evaluation: dict[str, Any], provenance: dict[str, Any],
                 torch_program: dict[str, Any] | None = None):
    """Write ood.npz and model.json next to model.onnx (+ variants) and load the result as a check."""
    onnx_path = folder / "model.onnx"
    files: dict[str, Any] = {"fp32": {"path": "model.onnx", "sha256": sha256_file(onnx_path)}}
    files.update({k: v for k, v in variants.items() if k in VARIANT_FILES})
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "version": version,
        "description": description, "labels": list(labels),
        "input": {"name": INPUT_NAME, **spec.to_dict()},
        "output": {"name": OUTPUT_NAME, "kind": "probabilities"},
        "files": files,
    }
    if ood is not None:
        ood.save(folder / "ood.npz")
        meta["ood"] = {"path": "ood.npz", "sha256": sha256_file(folder / "ood.npz"), "method": "pca-residual",
                       "components": int(ood.components.shape[0]), "reference_percentile": REFERENCE_PERCENTILE,
                       "max_score": DEFAULT_MAX_SCORE, "min_coverage": DEFAULT_MIN_COVERAGE}
    if torch_program is not None:
        meta["torch_program"] = torch_program
    meta.update(training=training, evaluation=evaluation, provenance=provenance)
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return load_bundle(folder)


def provenance(tool: str, command: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Who made the bundle, when, with what (versions)."""
    import onnx
    import torch

    return {"tool": tool, "command": " ".join(command),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET,
            "python": platform.python_version(), **(extra or {})}
