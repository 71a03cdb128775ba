"""The torch backend's CPU path, the bundle's torch program and its export (no GPU needed).

Everything runs the real torch CPU build on the shipped bundle (or copies of it, damaged on
purpose). The CUDA path (pycuda slots, streams, CUDA graphs, FP16) is in test_gpu.py
(``pytest -m gpu`` on the device machine). Skips with the reason where torch is not installed.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]' or '.[test]')")

from inference.backend import BackendError, BackendUnavailable, open_backend  # noqa: E402
from inference.bundle import DEFAULT_BUNDLE, BundleError, load_bundle  # noqa: E402
from inference.torch_backend import TorchCpuBackend, torch_cuda_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def fresh(bundle):
    from ionstream.benchmarks.infer import _features

    return _features(bundle, 300, seed=246810)


@pytest.fixture
def bundle_copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dst)
    return dst


def drop_torch_program(path: Path) -> None:
    meta = json.loads((path / "model.json").read_text())
    del meta["torch_program"]
    (path / "model.json").write_text(json.dumps(meta))
    (path / "model.pt2").unlink()


class TestBundleProgram:
    def test_shipped_bundle_has_a_checked_program(self, bundle):
        assert bundle.torch_program == DEFAULT_BUNDLE / "model.pt2"
        entry = bundle.meta["torch_program"]
        assert entry["format"] == "torch.export"
        assert entry["check"]["top1_agreement"] >= 0.999 and entry["check"]["max_abs_prob_diff"] <= 1e-3

    def test_corrupted_program_is_refused_at_load(self, bundle_copy):
        data = bytearray((bundle_copy / "model.pt2").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle_copy / "model.pt2").write_bytes(bytes(data))
        with pytest.raises(BundleError, match=r"model\.pt2: SHA-256 does not match model\.json torch_program"):
            load_bundle(bundle_copy)

    def test_missing_program_file_is_named(self, bundle_copy):
        (bundle_copy / "model.pt2").unlink()
        with pytest.raises(BundleError, match=r"model\.pt2: missing \(listed in model\.json as torch_program\)"):
            load_bundle(bundle_copy)

    def test_bundle_without_program_says_how_to_make_one(self, bundle_copy, caplog):
        drop_torch_program(bundle_copy)
        b = load_bundle(bundle_copy)
        assert b.torch_program is None
        with pytest.raises(BundleError, match=r"no torch program .* tools/train_model\.py --export-torch"):
            open_backend(b, "torch")
        with caplog.at_level(logging.INFO, logger="ionstream.inference"), open_backend(b, "auto") as be:
            assert be.name != "torch"
        assert any("backend auto: not torch (the bundle has no torch program" in r.getMessage()
                   for r in caplog.records)


class TestCpuBackend:
    def test_agrees_with_onnxruntime(self, bundle, fresh):
        X, y = fresh
        with open_backend(bundle, "onnxruntime", max_batch=len(X)) as ref_be:
            ref = ref_be.predict(X)
        with open_backend(bundle, "torch", max_batch=len(X)) as be:
            assert isinstance(be, TorchCpuBackend)
            got = np.concatenate([be.predict(X[i:i + n]) for i, n in ((0, 1), (1, 99), (100, 200))])
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert (got.argmax(1) == ref.argmax(1)).all()
        assert np.abs(got - ref).max() <= 1e-3
        assert float((got.argmax(1) == y).mean()) >= 0.97

    def test_interface_and_status_fields(self, bundle):
        with open_backend(bundle, "torch", max_batch=8) as be:
            info = be.describe()
            (i,), (o,) = be.get_inputs(), be.get_outputs()
            x = np.random.default_rng(0).random((3, bundle.feature_spec.bins), dtype=np.float32)
            p = be.predict(x)
            keep = p.copy()
            (q,) = be.run(["probs"], {"features": x})
            be.predict(x[::-1].copy())
            with pytest.raises(ValueError, match="max_batch is 8"):
                be.predict(np.zeros((9, bundle.feature_spec.bins), np.float32))
        assert be.closed
        assert (info["backend"], info["device"], info["precision"]) == ("torch", "cpu", "fp32")
        assert (i.name, o.name) == ("features", "probs")
        assert np.array_equal(p, q) and np.array_equal(p, keep)      # results are the caller's
        with pytest.raises(BackendError, match="closed"):
            be.predict(x)

    @pytest.mark.parametrize("precision, match", [("fp16", "fp16 needs a CUDA GPU"),
                                                  ("int8", "int8 runs on onnxruntime or tensorrt")])
    def test_unsupported_precision_is_a_clear_error(self, bundle, precision, match):
        with pytest.raises(BackendError, match=match):
            open_backend(bundle, "torch", precision=precision, device="cpu")

    @pytest.mark.skipif(torch_cuda_available()[0], reason="a CUDA GPU is usable here")
    def test_cuda_asked_for_without_a_gpu(self, bundle):
        with pytest.raises(BackendUnavailable, match="backend torch on cuda: .*(no CUDA GPU|pycuda)"):
            open_backend(bundle, "torch", device="cuda")

    @pytest.mark.skipif(torch_cuda_available()[0], reason="a CUDA GPU is usable here")
    def test_auto_device_falls_back_to_the_cpu_and_says_why(self, bundle, caplog):
        with caplog.at_level(logging.WARNING, logger="ionstream.inference"), open_backend(bundle, "torch") as be:
            assert be.describe()["device"] == "cpu"
        assert any(r.getMessage().startswith("torch: no usable GPU (") for r in caplog.records)

    def test_through_the_batcher_in_order(self, bundle, fresh):
        from inference.batcher import MicroBatcher

        X = fresh[0][:120]
        with open_backend(bundle, "onnxruntime", max_batch=len(X)) as ref_be:
            ref = ref_be.predict(X)
        results = []
        b = MicroBatcher(lambda: open_backend(bundle, "torch", max_batch=16), n_features=X.shape[1],
                         max_batch=16, max_delay_ms=1.0, on_result=results.append, labels=bundle.labels)
        with b:
            for i in range(len(X)):
                b.submit(i, X[i])
        assert [r.key for r in results] == list(range(len(X)))
        assert np.abs(np.stack([r.probs for r in results]) - ref).max() <= 1e-3
        assert b.stats()["backend"]["device"] == "cpu" and b.stats()["errors"] == 0


def test_pipeline_classifies_every_scan_with_torch():
    """The daemon's pipeline with inference.backend = torch: every scan classified, status says torch."""
    from ionstream.config import Config
    from ionstream.daemon.pipeline import Pipeline

    config = Config()
    config.source.url = "sim://?rate=100&samples=16384&seed=5"
    config.inference.backend = "torch"
    config.publish.endpoint = "inproc://torch-pipeline-test"
    config.publish.control = ""
    pipeline = Pipeline(config).start()
    try:
        deadline = time.monotonic() + 60
        while pipeline.snapshot()["classified"] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        info = dict(pipeline.batcher.backend_info)
    finally:
        pipeline.stop()
    snap = pipeline.snapshot()
    assert snap["backend"] == "torch" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert snap["classified"] >= 50
    assert snap["classified"] == snap["scans"], (snap["classified"], snap["scans"])


class TestExport:
    def run_tool(self, *args):
        import importlib.util

        # Loaded from its file, so neither tools/ nor the checkout lands on sys.path: a later
        # test's Dask workers would import the checkout's unbuilt cext/ instead of the installed one.
        spec = importlib.util.spec_from_file_location("train_model", ROOT / "tools" / "train_model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_export_torch_adds_a_checked_program(self, bundle_copy):
        tm = self.run_tool()
        drop_torch_program(bundle_copy)
        assert tm.export_torch_only(bundle_copy, workers=1, spectra=100) == 0
        b = load_bundle(bundle_copy)
        entry = b.meta["torch_program"]
        assert b.torch_program == bundle_copy.resolve() / "model.pt2"
        assert entry["check"]["spectra"] == 100 and entry["check"]["top1_agreement"] == 1.0
        assert entry["check"]["max_abs_prob_diff"] <= 1e-5
        with open_backend(b, "torch", max_batch=4) as be:
            assert be.predict(np.ones((2, b.feature_spec.bins), np.float32)).shape == (2, b.n_classes)

    def test_a_program_that_disagrees_is_not_written(self, bundle_copy):
        from inference.training.torch_program import TorchProgramError, net_from_onnx, write_torch_program

        tm = self.run_tool()
        drop_torch_program(bundle_copy)
        b = load_bundle(bundle_copy)
        model = net_from_onnx(b.onnx_path, b.feature_spec.bins, b.n_classes)
        with torch.no_grad():
            model.net.head[4].bias += torch.tensor([4.0, 0, 0, 0, -4.0])   # not the network model.onnx has
        X, _ = tm.make_dataset(100, 1, b.feature_spec, workers=1, variants=False, desc="check")
        with pytest.raises(TorchProgramError, match="torch program disagrees with model.onnx"):
            write_torch_program(model, bundle_copy, b.feature_spec.bins, X)
        assert not (bundle_copy / "model.pt2").exists()
