"""Model bundle checks, the ONNX Runtime backend, backend selection, engine cache and precision graphs.

Everything here runs on the real ONNX Runtime with the shipped bundle (or copies of it, damaged on
purpose). TensorRT cannot be installed on these machines; its tests are in test_inference_tensorrt.py
and skip with that reason.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from dsp.features import FeatureSpec
from inference.backend import BackendUnavailable, open_backend, tensorrt_available
from inference.bundle import DEFAULT_BUNDLE, BundleError, load_bundle, sha256_file
from inference.engine_cache import EngineCache, EngineKey
from inference.onnxruntime_backend import OnnxRuntimeBackend, choose_providers


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture
def bundle_copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dst)
    return dst


def rewrite_json(path, **changes):
    meta = json.loads((path / "model.json").read_text())
    for dotted, value in changes.items():
        d = meta
        keys = dotted.split("__")
        for k in keys[:-1]:
            d = d[k]
        if value is None:
            d.pop(keys[-1], None)
        else:
            d[keys[-1]] = value
    (path / "model.json").write_text(json.dumps(meta))


class TestBundle:
    def test_default_bundle(self, bundle):
        assert bundle.path == DEFAULT_BUNDLE
        assert isinstance(bundle.feature_spec, FeatureSpec)
        assert len(bundle.labels) == bundle.n_classes >= 2
        assert bundle.onnx_path.stat().st_size < 1024 * 1024          # shipped inside the package: small
        meta = bundle.meta
        for key in ("version", "training", "provenance", "evaluation"):
            assert key in meta
        assert "seed" in meta["training"] and "held_out_top1" in meta["evaluation"]

    def test_default_graph_io(self, bundle):
        import onnx

        model = onnx.load(str(bundle.onnx_path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value          # dynamic batch axis
        assert dims[1].dim_value == bundle.feature_spec.bins

    def test_path_may_name_a_file(self, bundle):
        assert load_bundle(bundle.onnx_path).path == bundle.path
        assert load_bundle(bundle.json_path).path == bundle.path

    def test_missing_directory(self, tmp_path):
        with pytest.raises(BundleError, match="model bundle directory not found"):
            load_bundle(tmp_path / "nope")

    def test_missing_json(self, bundle_copy):
        (bundle_copy / "model.json").unlink()
        with pytest.raises(BundleError, match=r"model\.json: missing"):
            load_bundle(bundle_copy)

    def test_missing_onnx(self, bundle_copy):
        (bundle_copy / "model.onnx").unlink()
        with pytest.raises(BundleError, match=r"model\.onnx: missing \(listed in model\.json as files\.fp32\)"):
            load_bundle(bundle_copy)

    def test_bad_json(self, bundle_copy):
        (bundle_copy / "model.json").write_text('{"format": ')
        with pytest.raises(BundleError, match=r"model\.json: not valid JSON \(line 1"):
            load_bundle(bundle_copy)

    def test_corrupted_onnx_detected_by_checksum(self, bundle_copy):
        data = bytearray((bundle_copy / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle_copy / "model.onnx").write_bytes(bytes(data))
        with pytest.raises(BundleError, match=r"model\.onnx: SHA-256 .* does not match model\.json"):
            load_bundle(bundle_copy)

    def test_corrupted_onnx_without_checksum(self, bundle_copy):
        (bundle_copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
        rewrite_json(bundle_copy, files__fp32__sha256=None)
        with pytest.raises(BundleError, match=r"model\.onnx: not a loadable ONNX model"):
            load_bundle(bundle_copy)

    def test_bins_mismatch(self, bundle_copy, bundle):
        rewrite_json(bundle_copy, input__bins=bundle.feature_spec.bins // 2)
        with pytest.raises(BundleError, match=rf"input 'features' has shape \['?batch'?, {bundle.feature_spec.bins}\] "
                                              rf"but model\.json input\.bins = {bundle.feature_spec.bins // 2}"):
            load_bundle(bundle_copy)

    def test_labels_mismatch(self, bundle_copy, bundle):
        rewrite_json(bundle_copy, labels=list(bundle.labels) + ["extra"])
        with pytest.raises(BundleError, match=rf"has {bundle.n_classes + 1} labels"):
            load_bundle(bundle_copy)

    def test_input_name_mismatch(self, bundle_copy):
        rewrite_json(bundle_copy, input__name="spectrum")
        with pytest.raises(BundleError, match=r"input is named 'features' but model\.json says input\.name = 'spectrum'"):
            load_bundle(bundle_copy)

    def test_unsupported_normalisation(self, bundle_copy):
        rewrite_json(bundle_copy, input__normalisation__scale="l2")
        with pytest.raises(BundleError, match=r"model\.json: input: scale must be one of"):
            load_bundle(bundle_copy)

    def test_format_version(self, bundle_copy):
        rewrite_json(bundle_copy, format_version=2)
        with pytest.raises(BundleError, match="this ionstream reads 'ionstream-model' version 1"):
            load_bundle(bundle_copy)

    def test_path_escape(self, bundle_copy):
        rewrite_json(bundle_copy, files__fp32__path="../../etc/passwd")
        with pytest.raises(BundleError, match="leaves the bundle directory"):
            load_bundle(bundle_copy)

    def test_missing_precision(self, bundle_copy):
        rewrite_json(bundle_copy, files__fp16=None)
        b = load_bundle(bundle_copy)
        with pytest.raises(BundleError, match="no fp16 model in this bundle"):
            b.onnx_for("fp16")


def fresh_features(bundle, n, seed):
    """n fresh simulator spectra as features, with their labels (the benchmark's own generator)."""
    from instrument.spectrum_model import CLASS_LABELS
    from ionstream.benchmarks.infer import _features

    assert tuple(CLASS_LABELS) == bundle.labels
    return _features(bundle, n, seed)


class TestOnnxRuntimeBackend:
    def test_interface(self, bundle):
        with open_backend(bundle, "onnxruntime", max_batch=16) as be:
            assert isinstance(be, OnnxRuntimeBackend)
            (i,), (o,) = be.get_inputs(), be.get_outputs()
            assert (i.name, i.shape) == ("features", ("batch", bundle.feature_spec.bins))
            assert (o.name, o.shape) == ("probs", ("batch", bundle.n_classes))
            x = np.random.default_rng(0).random((5, bundle.feature_spec.bins), dtype=np.float32)
            p = be.predict(x)
            assert p.shape == (5, bundle.n_classes) and p.dtype == np.float32
            assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
            (q,) = be.run(["probs"], {"features": x})
            assert np.array_equal(p, q)
            assert np.array_equal(be.submit(x).wait(), p)
            assert be.describe()["providers"] == "CPUExecutionProvider"
        assert be.closed

    def test_io_binding_matches_plain_run(self, bundle):
        x = np.random.default_rng(1).random((7, bundle.feature_spec.bins), dtype=np.float32)
        with open_backend(bundle, "onnxruntime", io_binding=False) as a, \
                open_backend(bundle, "onnxruntime", io_binding=True) as b:
            pa, pb = a.predict(x), b.predict(x)
            out = np.empty((16, bundle.n_classes), np.float32)
            pc = b.predict(x, out=out)
            assert np.shares_memory(pc, out)
        assert np.allclose(pa, pb, atol=1e-7) and np.allclose(pb, pc, atol=0)

    def test_results_are_owned(self, bundle):
        rng = np.random.default_rng(2)
        with open_backend(bundle, "onnxruntime") as be:
            x1, x2 = (rng.random((3, bundle.feature_spec.bins), dtype=np.float32) for _ in range(2))
            p1 = be.predict(x1)
            keep = p1.copy()
            be.predict(x2)
            assert np.array_equal(p1, keep)

    def test_feed_checked(self, bundle):
        with open_backend(bundle, "onnxruntime", max_batch=4) as be:
            F = bundle.feature_spec.bins
            with pytest.raises(ValueError, match="Model requires 1 input. Input Feed contains 2"):
                be.run(None, {"features": np.zeros((1, F), np.float32), "x": np.zeros(1)})
            with pytest.raises(ValueError, match="is not the model's input 'features'"):
                be.run(None, {"spectrum": np.zeros((1, F), np.float32)})
            with pytest.raises(ValueError, match=rf"`batch` must be \(n, {F}\)"):
                be.predict(np.zeros((1, F + 1), np.float32))
            with pytest.raises(ValueError, match="max_batch is 4"):
                be.predict(np.zeros((5, F), np.float32))
            p = be.predict(np.zeros((2, F), np.float64))          # converted, not refused
            assert p.shape == (2, bundle.n_classes)

    def test_unknown_provider_lists_available(self):
        with pytest.raises(ValueError, match="available: .*CPUExecutionProvider"):
            choose_providers(["NoSuchExecutionProvider"])

    def test_auto_says_which_and_why(self, bundle, caplog):
        ok, why = tensorrt_available()
        with caplog.at_level(logging.INFO, logger="ionstream.inference"):
            with open_backend(bundle, "auto") as be:
                pass
        if not ok:
            messages = [r.getMessage() for r in caplog.records]
            assert any(m.startswith("backend auto: not tensorrt (tensorrt") for m in messages), messages
            assert any(m.startswith("backend auto: not torch (") for m in messages) or be.name == "torch"
            if be.name == "onnxruntime":
                assert "backend auto: onnxruntime" in messages
                assert be.describe()["device"] == "cpu"

    @pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT is present here")
    def test_explicit_tensorrt_unavailable_is_an_error(self, bundle):
        with pytest.raises(BackendUnavailable, match="backend tensorrt: tensorrt"):
            open_backend(bundle, "tensorrt")

    def test_bad_options(self, bundle):
        with pytest.raises(ValueError, match="backend must be one of"):
            open_backend(bundle, "cuda")
        with pytest.raises(ValueError, match="unknown backend option"):
            open_backend(bundle, "onnxruntime", threads=3)


class TestAccuracy:
    """The shipped model on fresh spectra (a seed never used in training), through the real backend."""

    N = 500

    @pytest.fixture(scope="class")
    @classmethod
    def fresh(cls, bundle):
        return fresh_features(bundle, cls.N, seed=987654321)

    def test_top1_fp32(self, bundle, fresh):
        X, y = fresh
        with open_backend(bundle, "onnxruntime", max_batch=self.N) as be:
            top1 = float((be.predict(X).argmax(axis=1) == y).mean())
        assert top1 >= 0.98, f"top-1 {top1:.3f} on {self.N} fresh spectra"

    @pytest.mark.parametrize("precision", ["fp16", "int8"])
    def test_reduced_precision_close_to_fp32(self, bundle, fresh, precision):
        if precision not in bundle.files:
            pytest.skip(f"bundle has no {precision} graph")
        X, y = fresh
        with open_backend(bundle, "onnxruntime", max_batch=self.N) as ref, \
                open_backend(bundle, "onnxruntime", precision=precision, max_batch=self.N) as be:
            p32, p = ref.predict(X), be.predict(X)
        top1_32 = float((p32.argmax(1) == y).mean())
        top1 = float((p.argmax(1) == y).mean())
        assert top1 >= top1_32 - 0.01, f"{precision} top-1 {top1:.3f} vs fp32 {top1_32:.3f}"
        agree = float((p.argmax(1) == p32.argmax(1)).mean())
        assert agree >= 0.98
        if precision == "fp16":
            assert np.abs(p - p32).max() < 1e-2


class TestEngineCache:
    def key(self, **kw):
        base = dict(onnx_sha256="ab" * 32, trt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                    compute_capability="9.0", precision="fp16", profiles=2, min_batch=1, opt_batch=32,
                    max_batch=64, n_features=2048)
        base.update(kw)
        return EngineKey(**base)

    def test_round_trip_and_key_fields_in_name(self, tmp_path):
        cache = EngineCache(tmp_path)
        k = self.key()
        assert cache.load(k) is None
        path = cache.store(k, b"plan-bytes" * 100)
        assert path.name.startswith("abababababababab-fp16-b1_32_64x2-f2048-trt10.13.0-nvidia-h100-80gb-hbm3-sm90")
        assert cache.load(k) == b"plan-bytes" * 100
        assert not list(tmp_path.glob("*.tmp"))

    @pytest.mark.parametrize("field, value", [("trt_version", "11.4.0"), ("precision", "int8"),
                                              ("max_batch", 128), ("gpu_name", "NVIDIA H200"), ("profiles", 3)])
    def test_each_key_field_selects_another_entry(self, tmp_path, field, value):
        cache = EngineCache(tmp_path)
        cache.store(self.key(), b"x")
        assert cache.load(self.key(**{field: value})) is None

    def test_corrupt_entry_is_rebuilt_with_a_log_line(self, tmp_path, caplog):
        cache = EngineCache(tmp_path)
        k = self.key()
        path = cache.store(k, b"0123456789" * 50)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="ionstream.inference"):
            assert cache.load(k) is None
        assert "corrupt (plan checksum mismatch); rebuilding" in caplog.text
        path.write_bytes(b"not an engine at all")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ionstream.inference"):
            assert cache.load(k) is None
        assert "corrupt (no ionstream engine header); rebuilding" in caplog.text
        path.write_bytes(bytes(data[:40]))
        assert cache.load(k) is None

    def test_stale_entry_under_the_right_name(self, tmp_path, caplog):
        cache = EngineCache(tmp_path)
        k, other = self.key(), self.key(trt_version="10.0.1")
        cache.store(other, b"old")
        cache.path(other).rename(cache.path(k))       # e.g. copied by hand from another machine
        with caplog.at_level(logging.WARNING, logger="ionstream.inference"):
            assert cache.load(k) is None
        assert "stale (trt_version '10.0.1' != '10.13.0')" in caplog.text

    def test_timing_cache(self, tmp_path):
        cache = EngineCache(tmp_path)
        k = self.key()
        assert cache.load_timing_cache(k) == b""
        cache.store_timing_cache(k, b"timing")
        assert cache.load_timing_cache(self.key(precision="fp32", onnx_sha256="cd" * 32)) == b"timing"


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
