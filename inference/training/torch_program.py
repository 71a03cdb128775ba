"""The bundle's torch program (model.pt2): the trained network as a torch.export program for the
torch backend, checked against model.onnx through ONNX Runtime before model.json records it.

Every bundle ``ionstream train`` and ``tools/train_model.py`` write gets one; ``tools/train_model.py
--export-torch BUNDLE`` adds it to an older bundle (the network rebuilt from model.onnx's weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inference.training.export import INPUT_NAME

TORCH_PROGRAM = "model.pt2"
MAX_PROB_DIFF = 1e-3      # the backends' agreement rule (DESIGN: FP32 within 1e-4 probability; 1e-3 allowed here)
MIN_TOP1_AGREEMENT = 0.999


class TorchProgramError(RuntimeError):
    """The exported program disagrees with model.onnx (it is then not written)."""


def export_torch(model, bins: int, path: Path) -> None:
    """Write ``model`` (features -> probabilities) as a torch.export program with a dynamic batch axis."""
    import torch
    from torch.export import Dim

    model = model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(4, bins),),
                                      dynamic_shapes={"x": {0: Dim("batch", min=1, max=1 << 20)}})
    torch.export.save(program, str(path))


def net_from_onnx(onnx_path: Path, bins: int, n_classes: int):
    """The training network with ``model.onnx``'s weights (the initializers carry the state_dict names)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from inference.training.net import build_net

    graph = onnx.load(str(onnx_path)).graph
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    net, wrap = build_net(bins, n_classes)
    model = wrap(net)
    model.load_state_dict(state, strict=True)   # any architecture change fails here, by name
    return model.eval()


def check_torch_program(pt2: Path, onnx_path: Path, X: np.ndarray) -> dict[str, Any]:
    """The saved program against ONNX Runtime CPU on the same spectra: top-1 agreement, max |dp|."""
    import onnxruntime as ort
    import torch

    module = torch.export.load(str(pt2)).module()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {INPUT_NAME: X[i:i + 500]})[0] for i in range(0, len(X), 500)])
    with torch.inference_mode():
        got = np.concatenate([module(torch.from_numpy(X[i:i + 500])).numpy() for i in range(0, len(X), 500)])
        one = module(torch.from_numpy(X[:1])).numpy()      # batch 1 too: the axis is really dynamic
    return {"spectra": len(X), "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_prob_diff": float(max(np.abs(got - ref).max(), np.abs(one - ref[:1]).max())),
            "against": f"model.onnx on onnxruntime {ort.__version__} CPU"}


def write_torch_program(model, bundle_dir: Path, bins: int, X: np.ndarray) -> dict[str, Any]:
    """Export ``model`` to ``bundle_dir/model.pt2`` and check it against model.onnx on ``X`` (features,
    float32); returns the ``torch_program`` entry for model.json. TorchProgramError if they disagree."""
    import torch

    from inference.bundle import TORCH_PROGRAM_FORMAT, sha256_file

    path = bundle_dir / TORCH_PROGRAM
    export_torch(model, bins, path)
    check = check_torch_program(path, bundle_dir / "model.onnx", np.ascontiguousarray(X, np.float32))
    if check["top1_agreement"] < MIN_TOP1_AGREEMENT or check["max_abs_prob_diff"] > MAX_PROB_DIFF:
        path.unlink()
        raise TorchProgramError(f"torch program disagrees with model.onnx: {check}; not written")
    return {"path": TORCH_PROGRAM, "sha256": sha256_file(path), "format": TORCH_PROGRAM_FORMAT,
            "torch": torch.__version__.split("+")[0], "check": check}
