"""Model bundle: a directory holding ``model.onnx`` and ``model.json``, checked at load.

``model.json`` (format version 1)::

    {
      "format": "ionstream-model", "format_version": 1,
      "name": "default", "version": "1.0.0",
      "labels": ["...", ...],                       # output index -> class label
      "input": {"name": "features", "mz_min": 50.0, "mz_max": 1050.0, "bins": 1024,
                "spacing": "linear", "dtype": "float32", "version": 1,
                "normalisation": {"baseline": "min", "scale": "max", "transform": "sqrt"}},
      "output": {"name": "probs", "kind": "probabilities"},
      "files": {"fp32": {"path": "model.onnx", "sha256": "..."},
                "fp16": {"path": "model.fp16.onnx", "sha256": "...", "top1": 0.99},   # optional
                "int8": {"path": "model.int8.onnx", "sha256": "...", "top1": 0.99}},  # optional
      "torch_program": {"path": "model.pt2", "sha256": "...", "format": "torch.export",   # optional
                        "torch": "2.13.0", "check": {...}},
      "training": {...}, "provenance": {...}, "evaluation": {"held_out_top1": ..., ...}
    }

The ``input`` object is a :class:`dsp.features.FeatureSpec` (the feature vector the DSP stage
computes); ``files`` lists one ONNX graph per precision, all with the same input and output.
Every problem (missing file, bad JSON, checksum mismatch, an ONNX graph that does not load, an
input or output shape that disagrees with the spec or the labels) raises :class:`BundleError`
naming the file and the mismatch, at load time, i.e. at daemon start-up.

``torch_program`` (optional) is the same FP32 network as a ``torch.export`` program, written by
``tools/train_model.py`` (``--export-torch`` for an existing bundle) after checking it against
``model.onnx`` on the same spectra; the torch backend runs it. Its checksum is checked at load
like the ONNX graphs'; it is deserialised only by the torch backend.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsp.features import FeatureSpec, FeatureSpecError

log = logging.getLogger("ionstream.inference")

FORMAT = "ionstream-model"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
TORCH_PROGRAM_FORMAT = "torch.export"
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "default"
"""The bundle shipped with ionstream (trained by tools/train_model.py)."""


class BundleError(Exception):
    """A model bundle that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, checked model bundle. Paths are absolute."""

    path: Path
    json_path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    feature_spec: FeatureSpec
    input_name: str
    output_name: str
    files: dict[str, Path]             # precision -> ONNX path (fp32 always present)
    sha256: dict[str, str]             # precision -> SHA-256 of that file
    meta: dict[str, Any] = field(repr=False)   # the whole model.json
    torch_program: Path | None = None  # the torch.export program (model.pt2), if the bundle has one

    @property
    def onnx_path(self) -> Path:
        """The FP32 graph (``model.onnx``)."""
        return self.files["fp32"]

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def onnx_for(self, precision: str) -> Path:
        """The ONNX graph for ``precision`` (fp32, fp16 or int8); BundleError if the bundle has none."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision not in self.files:
            raise BundleError(
                f"{self.json_path}: no {precision} model in this bundle (it has {', '.join(self.files)}); "
                f"make one with `python tools/quantize_model.py {self.path} --precision {precision}`")
        return self.files[precision]

    def torch_program_path(self) -> Path:
        """The bundle's ``torch.export`` program; BundleError saying how to make one if it has none."""
        if self.torch_program is None:
            raise BundleError(
                f"{self.json_path}: no torch program in this bundle (model.json has no 'torch_program'), "
                f"so the torch backend cannot run it; make one with "
                f"`python tools/train_model.py --export-torch {self.path}` (needs torch and onnx: "
                f"pip install '.[train]')")
        return self.torch_program

    def describe(self) -> dict[str, Any]:
        """Settings as a flat dict (status, capture headers)."""
        return {"model": self.name, "model_version": self.version, "model_path": str(self.path),
                "model_sha256": self.sha256["fp32"][:16], "labels": list(self.labels),
                "precisions": list(self.files)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dims(shape) -> list:
    return [d if isinstance(d, int) else (d or "?") for d in shape]


def check_onnx(path: Path, spec: FeatureSpec, n_classes: int, input_name: str, output_name: str,
               json_path: Path) -> None:
    """Load ``path`` with ONNX Runtime (CPU) and check its I/O against the spec and labels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # parse only
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: not a loadable ONNX model ({msg[:300]})") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1:
        raise BundleError(f"{path}: model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          f"ionstream feeds exactly one feature vector")
    i = inputs[0]
    if i.name != input_name:
        raise BundleError(f"{path}: input is named {i.name!r} but {json_path.name} says input.name = {input_name!r}")
    if i.type != "tensor(float)":
        raise BundleError(f"{path}: input {i.name!r} has type {i.type}; the feature vector is float32")
    if len(i.shape) != 2:
        raise BundleError(f"{path}: input {i.name!r} has shape {_dims(i.shape)}; expected [batch, {spec.bins}]")
    if isinstance(i.shape[0], int):
        raise BundleError(f"{path}: input {i.name!r} has a fixed batch size {i.shape[0]} "
                          f"(shape {_dims(i.shape)}); the batch axis must be dynamic")
    if i.shape[1] != spec.bins:
        raise BundleError(f"{path}: input {i.name!r} has shape {_dims(i.shape)} but {json_path.name} "
                          f"input.bins = {spec.bins}: the feature vector would not fit the model")
    o = {o.name: o for o in outputs}.get(output_name)
    if o is None:
        raise BundleError(f"{path}: no output named {output_name!r} (outputs: "
                          f"{', '.join(o.name for o in outputs)}) as {json_path.name} output.name says")
    if o.type != "tensor(float)" or len(o.shape) != 2 or o.shape[1] != n_classes:
        raise BundleError(f"{path}: output {o.name!r} is {o.type} {_dims(o.shape)} but {json_path.name} "
                          f"has {n_classes} labels; expected tensor(float) [batch, {n_classes}]")


def load_bundle(path: str | Path | None = None, *, check_graphs: bool = True) -> ModelBundle:
    """Load and check a model bundle directory (``None`` or ``""``: the shipped default).

    ``path`` may also name the bundle's ``model.json`` or ``model.onnx``. With ``check_graphs``
    every listed ONNX file is parsed by ONNX Runtime and its I/O checked (a few tens of ms).

    Raises
    ------
    BundleError
        Naming the file and the problem.
    """
    root = Path(path) if path else DEFAULT_BUNDLE
    if root.is_file() and root.suffix in (".json", ".onnx"):
        root = root.parent
    root = root.resolve()
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle directory not found")
    json_path = root / "model.json"
    if not json_path.is_file():
        raise BundleError(f"{json_path}: missing (a model bundle is a directory with model.onnx and model.json)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{json_path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{json_path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{json_path}: expected a JSON object at the top level")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{json_path}: format is {meta.get('format')!r} version {meta.get('format_version')!r}; "
                          f"this ionstream reads {FORMAT!r} version {FORMAT_VERSION}")
    missing = [k for k in ("labels", "input", "output", "files", "version") if k not in meta]
    if missing:
        raise BundleError(f"{json_path}: missing key(s) {', '.join(missing)}")

    labels = meta["labels"]
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)):
        raise BundleError(f"{json_path}: labels must be a list of >= 2 distinct non-empty strings, got {labels!r}")
    try:
        spec = FeatureSpec.from_dict(meta["input"], source=f"{json_path}: input")
    except FeatureSpecError as exc:
        raise BundleError(str(exc)) from None
    input_name = meta["input"].get("name", "features")
    output = meta["output"]
    if not isinstance(output, dict) or not isinstance(output.get("name"), str):
        raise BundleError(f"{json_path}: output must be an object with a 'name', got {output!r}")
    if output.get("kind", "probabilities") != "probabilities":
        raise BundleError(f"{json_path}: output.kind must be 'probabilities' (softmax in the graph), "
                          f"got {output.get('kind')!r}")

    files_meta = meta["files"]
    if not isinstance(files_meta, dict) or "fp32" not in files_meta:
        raise BundleError(f"{json_path}: files must be an object with at least an 'fp32' entry")
    files: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for precision, entry in files_meta.items():
        if precision not in PRECISIONS:
            raise BundleError(f"{json_path}: files.{precision}: unknown precision (known: {', '.join(PRECISIONS)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise BundleError(f"{json_path}: files.{precision} must be an object with a 'path'")
        p = (root / entry["path"]).resolve()
        if root not in p.parents:
            raise BundleError(f"{json_path}: files.{precision}.path {entry['path']!r} leaves the bundle directory")
        if not p.is_file():
            raise BundleError(f"{p}: missing (listed in {json_path.name} as files.{precision})")
        digest = sha256_file(p)
        want = entry.get("sha256")
        if want is not None and want != digest:
            raise BundleError(f"{p}: SHA-256 {digest[:16]}... does not match {json_path.name} files.{precision}.sha256 "
                              f"{str(want)[:16]}... (corrupted or replaced file)")
        files[precision] = p
        digests[precision] = digest
    if check_graphs:
        for p in files.values():
            check_onnx(p, spec, len(labels), input_name, output["name"], json_path)
    torch_program = _torch_program(meta.get("torch_program"), root, json_path)
    bundle = ModelBundle(path=root, json_path=json_path, name=str(meta.get("name", root.name)),
                         version=str(meta["version"]), labels=tuple(labels), feature_spec=spec,
                         input_name=input_name, output_name=output["name"], files=files, sha256=digests,
                         meta=meta, torch_program=torch_program)
    log.debug("model bundle %s: %s v%s, %d classes, %d bins, precisions %s", root, bundle.name, bundle.version,
              bundle.n_classes, spec.bins, ", ".join(files))
    return bundle


def _torch_program(entry: Any, root: Path, json_path: Path) -> Path | None:
    """The checked path of ``model.json``'s ``torch_program`` entry (None when absent)."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise BundleError(f"{json_path}: torch_program must be an object with a 'path'")
    if entry.get("format", TORCH_PROGRAM_FORMAT) != TORCH_PROGRAM_FORMAT:
        raise BundleError(f"{json_path}: torch_program.format is {entry.get('format')!r}; this ionstream runs "
                          f"{TORCH_PROGRAM_FORMAT!r} programs (re-export with tools/train_model.py --export-torch)")
    p = (root / entry["path"]).resolve()
    if root not in p.parents:
        raise BundleError(f"{json_path}: torch_program.path {entry['path']!r} leaves the bundle directory")
    if not p.is_file():
        raise BundleError(f"{p}: missing (listed in {json_path.name} as torch_program)")
    want = entry.get("sha256")
    if want is not None and want != sha256_file(p):
        raise BundleError(f"{p}: SHA-256 does not match {json_path.name} torch_program.sha256 "
                          f"(corrupted or replaced file)")
    return p
