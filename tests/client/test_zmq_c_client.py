"""A subscriber in another language: tests/clients/subscriber.c (libzmq + jansson), built with gcc
and run against a live ionstream Publisher. It was written from docs/wire.md alone; here it must
decode headers and arrays to exactly the values the Python side sent.

Needs gcc and the Debian packages libzmq3-dev, libjansson-dev (and pkg-config); skips, naming
them, when they are missing.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from ionstream.daemon.publisher import Publisher

SOURCE = Path(__file__).parents[1] / "clients" / "subscriber.c"
APT = "apt-get install gcc libc6-dev libzmq3-dev libjansson-dev pkg-config"


@pytest.fixture(scope="module")
def csub(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip(f"no C compiler ({APT})")
    flags = ["-lzmq", "-ljansson"]
    if shutil.which("pkg-config"):
        probe = subprocess.run(["pkg-config", "--cflags", "--libs", "libzmq", "jansson"], capture_output=True, text=True)
        if probe.returncode == 0:
            flags = probe.stdout.split()
    exe = tmp_path_factory.mktemp("cclient") / "subscriber"
    build = subprocess.run([gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(SOURCE), *flags],
                           capture_output=True, text=True)
    if build.returncode != 0:
        missing = [h for h in ("zmq.h", "jansson.h", "-lzmq", "-ljansson") if h in build.stderr]
        if missing:
            pytest.skip(f"C subscriber not built: {', '.join(missing)} missing ({APT})")
        pytest.fail(f"C subscriber does not compile:\n{build.stderr}")
    return exe


def start(csub, endpoint, count, *topics, keys=()):
    return subprocess.Popen([str(csub), "-t", "20", *keys, endpoint, str(count), *topics],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


def wait_subscribed(pub, proc, topics):
    for topic in topics:
        assert pub.wait_for_subscribers(1, topic, timeout=20), f"C subscriber never subscribed: {proc.stderr.read()}"


def test_decodes_what_the_publisher_sent(csub):
    rng = np.random.default_rng(5)
    sent = []
    with Publisher("tcp://127.0.0.1:*", source="sim://") as pub:
        proc = start(csub, pub.endpoint, 7, "peaks", "class", "spectrum")
        wait_subscribed(pub, proc, ["peaks", "class", "spectrum"])
        for scan in range(3):
            n = int(rng.integers(0, 12))
            arrays = [np.sort(rng.uniform(50, 2000, n)), *(rng.uniform(0, 1e6, n).astype(np.float32) for _ in range(4))]
            pub.publish("peaks", {"scan": scan, "t_acq_ns": 1_700_000_000_000_000_000 + scan}, arrays)
            sent.append(("peaks", scan, arrays))
            probs = rng.dirichlet(np.ones(3)).astype(np.float32)
            pub.publish("class", {"scan": scan, "label": "β-alanine", "labels": ["a", "β-alanine", "c"]}, [probs])
            sent.append(("class", scan, [probs]))
            if scan == 1:
                pub._seq["peaks"] += 4  # four peaks messages lost at the queue: the C side must see the gap
        pub.publish("peaksx", {}, {"v": np.zeros(2)})  # shares the prefix "peaks": must be skipped
        spectrum = [np.linspace(100, 1000, 100_000), rng.uniform(0, 1, 100_000).astype(np.float32)]  # zero-copy path
        pub.publish("spectrum", {"scan": 9, "kind": "processed"}, spectrum)
        code, lines, err = finish(proc)
    assert code == 0, err
    assert [(d["topic"], d["scan"]) for d in lines] == [(t, s) for t, s, _ in sent] + [("spectrum", 9)]
    for d, (topic, scan, arrays) in zip(lines, sent):
        assert d["schema"] == [1, 0] and d["header"]["source"] == "sim://"
        names = ["mz", "intensity", "area", "fwhm", "snr"] if topic == "peaks" else ["probabilities"]
        assert list(d["buffers"]) == names
        for name, array in zip(names, arrays):
            got = d["buffers"][name]
            assert got["dtype"] == array.dtype.str and got["shape"] == list(array.shape)
            assert got["values"] == array.astype(np.float64).tolist()  # bit-exact through %.17g
        if topic == "class":
            assert d["header"]["label"] == "β-alanine"
    assert [d["gap"] for d in lines if d["topic"] == "peaks"] == [0, 0, 4]
    assert [d["seq"] for d in lines if d["topic"] == "peaks"] == [0, 1, 6]
    big = lines[-1]["buffers"]
    assert big["intensity"]["count"] == 100_000 and "values" not in big["intensity"]
    assert big["intensity"]["sum"] == pytest.approx(float(spectrum[1].astype(np.float64).sum()), rel=1e-12)
    assert big["mz"]["sum"] == pytest.approx(float(spectrum[0].sum()), rel=1e-12)


def test_decodes_the_worked_example_of_the_document(csub):
    try:
        from test_wire import _doc_example
    except ImportError:  # tests/ collected as a package
        from test_wire import _doc_example

    frames = _doc_example()
    with zmq.Context.instance().socket(zmq.XPUB) as raw:
        raw.bind("tcp://127.0.0.1:*")
        proc = start(csub, raw.last_endpoint.decode(), 1, "peaks")
        assert raw.poll(20_000) and raw.recv() == b"\x01peaks"
        raw.send_multipart(frames)
        code, lines, err = finish(proc)
    assert code == 0, err
    (d,) = lines
    assert d["seq"] == 41 and d["scan"] == 1042
    assert d["buffers"]["mz"]["values"] == [195.0877, 524.2648, 1022.0232]
    assert d["buffers"]["intensity"]["values"] == [1250.5, 88000.0, 310.25]
    assert d["buffers"]["snr"]["values"] == [12.5, 880.0, 3.25]


def test_rejects_a_newer_major_version(csub):
    with zmq.Context.instance().socket(zmq.XPUB) as raw:
        raw.bind("tcp://127.0.0.1:*")
        proc = start(csub, raw.last_endpoint.decode(), 1, "peaks")
        assert raw.poll(20_000) and raw.recv() == b"\x01peaks"
        raw.send_multipart([b"peaks", json.dumps({"schema": [2, 0], "seq": 0, "buffers": []}).encode()])
        code, lines, err = finish(proc)
    assert code == 3 and lines == []
    assert "schema 2.0 is not understood by this reader (schema 1.x)" in err


def test_curve(csub, tmp_path):
    from ionstream.client.keys import generate_keypair
    from ionstream.daemon.security import CurveServer

    generate_keypair(tmp_path, "server")
    generate_keypair(tmp_path / "clients", "c-client")
    curve = CurveServer(tmp_path / "server.key_secret", tmp_path / "clients")
    with Publisher("tcp://127.0.0.1:*", curve=curve) as pub:
        keys = ["-k", str(tmp_path / "clients" / "c-client.key_secret"), "-s", str(tmp_path / "server.key")]
        proc = start(csub, pub.endpoint, 1, "trace", keys=keys)
        wait_subscribed(pub, proc, ["trace"])
        pub.publish("trace", {"scan": 3, "names": ["tic"], "events": []}, [np.array([1234.5])])
        code, lines, err = finish(proc)
    assert code == 0, err
    assert lines[0]["buffers"]["values"]["values"] == [1234.5]
