"""Classifiers: model bundle, backends (onnxruntime, tensorrt), engine cache, micro-batcher.

What the daemon uses (docs/inference.md)::

    from inference import load_bundle, open_backend, MicroBatcher, ClassResult, BundleError, BackendError
"""
from inference.backend import Backend, BackendError, BackendUnavailable, open_backend, tensorrt_available
from inference.batcher import ClassResult, MicroBatcher
from inference.bundle import DEFAULT_BUNDLE, BundleError, ModelBundle, load_bundle

__all__ = ["Backend", "BackendError", "BackendUnavailable", "BundleError", "ClassResult", "DEFAULT_BUNDLE",
           "MicroBatcher", "ModelBundle", "load_bundle", "open_backend", "tensorrt_available"]
