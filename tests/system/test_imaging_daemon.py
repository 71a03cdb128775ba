"""The `image` topic from a real daemon on the simulator's imaging mode, validated against the wire schema."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import IONSTREAM, free_port

from ionstream import Subscriber

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "wire.schema.json").read_text())


def test_daemon_publishes_growing_ion_images_until_complete(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(endpoint, topics=["image"], timeout=60.0) as sub:
        proc = subprocess.Popen(IONSTREAM + ["run", "--source", "sim://?imaging=16x16&samples=4096&rate=0",
                                             "--endpoint", endpoint, "--control", "", "--backend", "none",
                                             "--no-status-line", "--wait-subscribers", "1"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            messages = []
            while not (messages and messages[-1].header["complete"]):
                messages.append(sub.recv())
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    validator = jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/image"})
    for m in messages:
        assert not list(validator.iter_errors(m.header)), m.header
    filled = [m.header["filled"] for m in messages]
    assert filled == sorted(filled) and filled[-1] == 256 == messages[-1].header["pixels"]
    images = messages[-1]["images"]
    assert images.shape == (1, 16, 16) and images.dtype == np.float32     # tic only (no dsp.xic)
    assert np.isfinite(images).all() and (images > 0).all()
    assert "Traceback" not in err
