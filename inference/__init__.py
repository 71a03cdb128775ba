"""Classifiers: model bundle, backends (onnxruntime, tensorrt), engine cache, micro-batcher."""
