"""Publisher and Subscriber on real ZeroMQ sockets (127.0.0.1 and ipc:// in a tmp dir).

No sleeps as synchronisation: the publisher reports subscriptions (XPUB), so a test waits
for the subscriber's subscription to arrive before publishing (ZeroMQ's slow joiner).
"""
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from ionstream import Message, Subscriber
from ionstream.client import wire
from ionstream.daemon.buffers import BufferPool
from ionstream.daemon.publisher import Publisher, PublisherError
from ionstream.daemon.security import EndpointError, check_bind_endpoint
from support import wait_until

ANY_PORT = "tcp://127.0.0.1:*"


def peaks(n=4, scale=1.0):
    mz = np.linspace(100.0, 1000.0, n)
    rest = [np.full(n, scale * k, np.float32) for k in (1, 2, 3, 4)]
    return [mz, *rest]


@pytest.fixture
def pub():
    with Publisher(ANY_PORT, source="test://") as p:
        yield p


def wait_subscribed(pub, sub, topic=None, count=1, timeout=10.0):
    """Wait until the publisher has ``count`` subscriptions to ``topic``.

    The subscriber's socket is polled meanwhile: a ZeroMQ socket handles (re)connections
    only when its owning thread calls into it, as any receiving application does.
    """
    deadline = time.monotonic() + timeout
    while not pub.wait_for_subscribers(count, topic, timeout=0.005):
        assert time.monotonic() < deadline, "subscription never reached the publisher"
        sub.socket.poll(5)


def connect(pub, topics=None, **kw):
    sub = Subscriber(pub.endpoint, topics, timeout=5.0, **kw)
    topic = None if topics in (None, "all") else ([topics] if isinstance(topics, str) else list(topics))[0]
    wait_subscribed(pub, sub, topic)
    return sub


class TestPublishSubscribe:
    def test_basic(self, pub):
        with connect(pub, ["peaks", "class"]) as sub:
            t0 = time.time_ns()
            assert pub.publish("peaks", {"scan": 10, "t_acq_ns": t0}, peaks(3))
            assert pub.publish("class", {"scan": 10, "label": "b", "labels": ["a", "b"]},
                               [np.array([0.25, 0.75], np.float32)])
            msg = sub.recv()
            assert isinstance(msg, Message)
            assert msg.topic == "peaks" and msg.seq == 0 and msg.scan == 10 and msg.gap == 0
            assert msg.source == "test://" and msg.session == pub.session
            assert msg.header["t_pub_ns"] >= t0 and msg.latency_ms() >= 0
            np.testing.assert_array_equal(msg["mz"], peaks(3)[0])
            assert msg["snr"].dtype == np.float32
            msg = sub.recv()
            assert msg.topic == "class" and msg.header["label"] == "b"
            np.testing.assert_array_equal(msg["probabilities"], [0.25, 0.75])
            with pytest.raises(KeyError, match="class message has no buffer 'mz'; it has probabilities"):
                msg["mz"]

    def test_topics_are_filtered_exactly(self, pub):
        with connect(pub, "peaks") as sub:
            pub.publish("peaksx", {}, {"v": np.zeros(1)})   # shares the prefix: must not come out
            pub.publish("class", {}, [np.zeros(2, np.float32)])
            pub.publish("peaks", {"scan": 1}, peaks())
            assert sub.recv().topic == "peaks"
            with pytest.raises(TimeoutError):
                sub.recv(timeout=0.05)

    def test_all_topics(self, pub):
        with connect(pub, None) as sub:
            for topic in ("status", "trace", "spectrum"):
                arrays = {"status": [], "trace": [np.ones(3)], "spectrum": [np.ones(8), np.ones(8, np.float32)]}[topic]
                pub.publish(topic, {}, arrays)
            assert [m.topic for m in (sub.recv(), sub.recv(), sub.recv())] == ["status", "trace", "spectrum"]

    def test_iteration_and_timeout(self, pub):
        with connect(pub, "trace") as sub:
            for i in range(5):
                pub.publish("trace", {"scan": i}, [np.array([float(i)])])
            got = []
            with pytest.raises(TimeoutError, match="no message from tcp://127.0.0.1:"):
                sub.timeout = 0.2
                for msg in sub:
                    got.append(msg.scan)
            assert got == [0, 1, 2, 3, 4]
            assert sub.stats()["topics"]["trace"] == {"received": 5, "missed": 0, "restarts": 0}

    def test_ipc_endpoint(self, tmp_path):
        endpoint = f"ipc://{tmp_path}/pub.sock"
        with Publisher(endpoint) as pub, connect(pub, "spectrum") as sub:
            intensity = np.arange(100_000, dtype=np.float32)
            pub.publish("spectrum", {"scan": 1, "kind": "raw"}, [np.arange(100_000.0), intensity])
            msg = sub.recv()
            np.testing.assert_array_equal(msg["intensity"], intensity)
            assert pub.endpoint == endpoint

    def test_arrays_are_zero_copy_views_on_received_frames(self, pub):
        with connect(pub, "spectrum") as sub:
            pub.publish("spectrum", {}, [np.arange(70_000.0), np.ones(70_000, np.float32)])
            msg = sub.recv()
            a = msg["mz"]
            assert not a.flags.owndata
            base = a
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview) and isinstance(base.obj, zmq.Frame)  # a view over the frame

    def test_publish_validates_at_the_call_site(self, pub):
        with pytest.raises(ValueError, match="seq"):
            pub.publish("peaks", {"seq": 3}, peaks())
        with pytest.raises(TypeError, match="dtype object cannot travel"):
            pub.publish("class", {}, [np.array([None])])
        with pytest.raises(ValueError, match="topic 'peaks' carries 5 buffer"):
            pub.publish("peaks", {}, [np.zeros(2)])
        assert pub.stats()["pub_published"] == 0

    def test_subscriptions_in_stats(self, pub):
        with connect(pub, ["peaks", "class"]), connect(pub, "peaks") as sub2:
            wait_subscribed(pub, sub2, "peaks", count=2)
            assert pub.stats()["pub_subscriptions"] == {"peaks": 2, "class": 1}
        assert wait_until(lambda: pub.stats()["pub_subscriptions"] == {})  # closing them unsubscribed them


class TestGapsAndRestarts:
    def test_queue_drops_are_counted_and_seen_as_gaps(self):
        stall, stalled = threading.Event(), threading.Event()

        def blocking_release():  # runs on the publisher thread: stalls it, so the queue fills
            stalled.set()
            stall.wait(10)

        with Publisher(ANY_PORT, queue_size=4) as pub, connect(pub, "spectrum") as sub:
            big = [np.zeros(10, np.float64), np.zeros(100_000, np.float32)]
            assert pub.publish("spectrum", {"scan": 0}, big, release=blocking_release)
            assert stalled.wait(5)
            results = [pub.publish("spectrum", {"scan": i}, [np.zeros(1), np.zeros(1, np.float32)])
                       for i in range(1, 8)]
            assert results == [True] * 4 + [False] * 3  # never blocks: full queue -> False
            stats = pub.stats()
            assert stats["pub_drops_queue"] == 3 and stats["pub_per_topic"]["spectrum"] == {"published": 5, "dropped": 3}
            stall.set()
            assert wait_until(lambda: pub.stats()["pub_sent"] == 5)
            pub.publish("spectrum", {"scan": 8}, [np.zeros(1), np.zeros(1, np.float32)])
            got = [sub.recv() for _ in range(6)]
            assert [m.scan for m in got] == [0, 1, 2, 3, 4, 8]
            assert [m.gap for m in got] == [0, 0, 0, 0, 0, 3]
            assert sub.missed == 3

    def test_hwm_drops_for_a_slow_subscriber_are_seen_as_gaps(self):
        n = 60
        with Publisher(ANY_PORT, sndhwm=2) as pub:
            sub = Subscriber(pub.endpoint, "spectrum", timeout=5.0, rcvhwm=2)
            wait_subscribed(pub, sub, "spectrum")
            payload = [np.zeros(1), np.zeros(256 * 1024, np.float32)]  # 1 MiB: beyond socket buffers soon
            for i in range(n):
                assert pub.publish("spectrum", {"scan": i}, payload)  # never waits for the subscriber
            assert wait_until(lambda: pub.stats()["pub_sent"] == n)
            got = []
            while True:
                try:
                    got.append(sub.recv(timeout=0.3))
                except TimeoutError:
                    break
            pub.publish("spectrum", {"scan": n}, payload)
            got.append(sub.recv())
            sub.close()
        assert got[-1].scan == n
        assert sum(m.gap for m in got) > 0, "nothing was dropped: make the messages larger"
        assert len(got) + sum(m.gap for m in got) == n + 1
        assert [m.seq for m in got] == sorted(m.seq for m in got)

    def test_publisher_restart_is_a_restart_not_a_gap(self, tmp_path):
        endpoint = f"ipc://{tmp_path}/restart.sock"
        with Subscriber(endpoint, "peaks", timeout=5.0) as sub:
            with Publisher(endpoint) as pub1:
                wait_subscribed(pub1, sub, "peaks")
                for i in range(3):
                    pub1.publish("peaks", {"scan": i}, peaks())
                assert [sub.recv().seq for _ in range(3)] == [0, 1, 2]
            with Publisher(endpoint) as pub2:   # the daemon came back: ZeroMQ reconnects by itself
                wait_subscribed(pub2, sub, "peaks")
                pub2.publish("peaks", {"scan": 100}, peaks())
                msg = sub.recv()
            assert msg.seq == 0 and msg.restarted and msg.gap == 0 and msg.session == pub2.session
            assert sub.stats()["restarts"] == 1 and sub.missed == 0

    def test_newer_major_version_raises_clearly(self):
        ctx = zmq.Context.instance()
        with ctx.socket(zmq.XPUB) as raw:
            raw.bind(ANY_PORT)
            with Subscriber(raw.last_endpoint.decode(), "peaks", timeout=5.0) as sub:
                assert raw.recv() == b"\x01peaks"
                raw.send_multipart([b"peaks", json.dumps({"schema": [2, 0], "seq": 0, "buffers": []}).encode()])
                raw.send_multipart([b"peaks", b"garbage"])
                raw.send_multipart([b"peaks", json.dumps({"schema": [1, 4], "seq": 0, "buffers": [], "new": 1}).encode()])
                with pytest.raises(wire.WireVersionError, match="upgrade ionstream"):
                    sub.recv()
                with pytest.raises(wire.WireError, match="not UTF-8 JSON"):
                    sub.recv()
                assert sub.recv().header["new"] == 1  # the subscriber goes on after an error
                assert sub.stats()["errors"] == 2


class TestBufferLifetime:
    def test_pool_buffers_are_reused_only_after_zeromq_released_them(self, pub):
        pool = BufferPool((100_000,), np.float32, count=2)
        n = 40
        with connect(pub, "spectrum") as sub:
            mz = np.zeros(1)
            for i in range(n):
                buf, release = pool.acquire()
                buf.fill(i)          # the pipeline writes the next scan into a recycled buffer
                assert pub.publish("spectrum", {"scan": i}, [mz, buf], release=release)
            for i in range(n):
                msg = sub.recv()
                assert msg.scan == i
                assert (msg["intensity"] == i).all(), f"scan {i}: its buffer was overwritten before it was sent"
        pub.stop()
        assert pool.in_use == 0 and pub.stats()["pub_pending_release"] == 0

    def test_release_is_called_once_for_every_outcome(self, pub):
        calls = []
        big = [np.zeros(1), np.zeros(100_000, np.float32)]
        small = [np.zeros(1), np.zeros(10, np.float32)]
        pub.publish("spectrum", {}, small, release=lambda: calls.append("small"))  # copied: released at once
        assert calls == ["small"]
        pub.publish("spectrum", {}, big, release=lambda: calls.append("big"))     # no subscriber: dropped by ZeroMQ
        pub.stop()
        assert calls == ["small", "big"]
        assert not pub.publish("spectrum", {}, big, release=lambda: calls.append("after-stop"))
        assert calls[-1] == "after-stop" and pub.stats()["pub_drops_stopped"] == 1

    def test_pool_allocates_rather_than_waits(self):
        pool = BufferPool(8, np.float64, count=1)
        a, release_a = pool.acquire()
        b, release_b = pool.acquire()
        assert a is not b and pool.misses == 1 and pool.in_use == 2
        release_a()
        release_a()  # idempotent
        release_b()
        assert pool.in_use == 0 and pool.stats() == {"pool_size": 1, "pool_in_use": 0, "pool_misses": 1}

    def test_stop_sends_what_was_queued(self):
        with Publisher(ANY_PORT) as pub:
            sub = connect(pub, "trace")
            for i in range(200):
                pub.publish("trace", {"scan": i}, [np.array([float(i)])])
        assert not pub.alive and pub.closed
        assert [sub.recv().scan for _ in range(200)] == list(range(200))
        sub.close()


class TestLifecycle:
    def test_bind_failure_is_raised_by_start(self, pub):
        with pytest.raises(PublisherError, match="cannot publish on tcp://127.0.0.1:.*Address already in use"):
            Publisher(pub.endpoint).start()

    def test_publish_before_start(self):
        with pytest.raises(PublisherError, match="before start"):
            Publisher(ANY_PORT).publish("peaks", {}, peaks())

    def test_refuses_plain_tcp_beyond_loopback(self):
        with pytest.raises(EndpointError, match="refusing to bind plain TCP on '\\*'.*allow_remote"):
            Publisher("tcp://*:5556")
        with pytest.raises(EndpointError, match="'0.0.0.0'"):
            Publisher("tcp://0.0.0.0:5556")
        with pytest.raises(EndpointError, match="eth0"):
            check_bind_endpoint("tcp://eth0:5556")
        for ok in ("tcp://127.0.0.1:5556", "tcp://127.0.0.2:1", "tcp://[::1]:5556", "tcp://localhost:*",
                   "ipc:///tmp/x", "inproc://x"):
            check_bind_endpoint(ok)
        check_bind_endpoint("tcp://0.0.0.0:5556", allow_remote=True)
        check_bind_endpoint("tcp://*:5556", curve=True)
        with pytest.raises(EndpointError, match="needs HOST:PORT"):
            check_bind_endpoint("tcp://127.0.0.1")

    def test_allow_remote_binds(self):
        with Publisher("tcp://0.0.0.0:*", allow_remote=True) as pub:
            assert pub.endpoint.startswith("tcp://0.0.0.0:")


class TestListenCommand:
    def _run_listen(self, argv):
        from ionstream.cli import build_parser

        args = build_parser().parse_args(["listen", *argv])
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("rc", args._main(args)))
        thread.start()
        return thread, result

    def test_table_with_gap_and_summary(self, pub, capsys):
        thread, result = self._run_listen(["--endpoint", pub.endpoint, "--count", "3", "--timeout", "10"])
        assert pub.wait_for_subscribers(1, "peaks", 5)
        now = time.time_ns()
        pub.publish("peaks", {"scan": 1, "t_acq_ns": now}, peaks(4, scale=10))
        pub.publish("class", {"scan": 1, "label": "caffeine", "labels": ["caffeine", "other"]},
                    [np.array([0.9, 0.1], np.float32)])
        pub._seq["peaks"] += 2  # as if two peaks messages had been dropped at the queue
        pub.publish("peaks", {"scan": 4, "t_acq_ns": now}, peaks(4))
        thread.join(10)
        assert result["rc"] == 0
        out, err = capsys.readouterr()
        assert "peaks" in out and "4 peaks  base m/z 100.0000" in out
        assert "caffeine p=0.900" in out
        assert "! missed 2 peaks message(s) (seq 1..2)" in out
        assert "3 message(s)" in err and "missed 2 (peaks 2)" in err and "latency acquisition->here p50" in err

    def test_json_lines(self, pub, capsys):
        thread, result = self._run_listen(["--endpoint", pub.endpoint, "--topics", "class", "--json",
                                           "--count", "2", "--timeout", "10"])
        assert pub.wait_for_subscribers(1, "class", 5)
        for i in range(2):
            pub.publish("class", {"scan": i, "label": "x"}, [np.array([1.0], np.float32)])
        thread.join(10)
        assert result["rc"] == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [d["header"]["scan"] for d in lines] == [0, 1]
        assert lines[0]["topic"] == "class" and lines[0]["arrays"] == {"probabilities": [1.0]} and lines[0]["gap"] == 0

    def test_timeout_exits_1(self, pub, capsys):
        thread, result = self._run_listen(["--endpoint", pub.endpoint, "--timeout", "0.2"])
        thread.join(10)
        assert result["rc"] == 1
        assert "0 message(s)" in capsys.readouterr().err

    def test_console_script(self, pub):
        proc = subprocess.Popen([sys.executable, "-P", "-m", "ionstream.cli", "listen", "--endpoint", pub.endpoint,
                                 "--topics", "peaks", "--json", "--no-arrays", "--count", "1", "--timeout", "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert pub.wait_for_subscribers(1, "peaks", 20)
            pub.publish("peaks", {"scan": 77}, peaks())
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        doc = json.loads(out)
        assert doc["header"]["scan"] == 77 and "arrays" not in doc


class TestWaitForSubscribers:
    """Issue 15 item 7: --wait-subscribers counts subscribers (connections), not subscriptions."""

    @staticmethod
    def _until(pub, subs, count, topic=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pub.wait_for_subscribers(count, topic, timeout=0.005):
            if time.monotonic() > deadline:
                return False
            for sub in subs:
                sub.socket.poll(5)
        return True

    def test_one_subscriber_to_two_topics_is_one(self, pub):
        with Subscriber(pub.endpoint, ["peaks", "class"], timeout=5.0) as sub:
            assert self._until(pub, [sub], 1, "peaks") and self._until(pub, [sub], 1, "class")
            # both subscriptions have arrived: still one subscriber
            assert pub.wait_for_subscribers(1, timeout=0)
            assert not pub.wait_for_subscribers(2, timeout=0)

    def test_two_subscribers_to_different_topics_are_two(self, pub):
        with Subscriber(pub.endpoint, ["peaks"], timeout=5.0) as a, \
                Subscriber(pub.endpoint, ["class"], timeout=5.0) as b:
            assert self._until(pub, [a, b], 2)
            assert pub.wait_for_subscribers(1, "peaks", timeout=0)
            assert not pub.wait_for_subscribers(2, "peaks", timeout=0)

    def test_a_subscriber_that_leaves_no_longer_counts(self, pub):
        with Subscriber(pub.endpoint, ["peaks", "class"], timeout=5.0) as a:
            with Subscriber(pub.endpoint, ["peaks"], timeout=5.0) as b:
                assert self._until(pub, [a, b], 2)
            deadline = time.monotonic() + 10
            while pub.wait_for_subscribers(2, timeout=0):
                assert time.monotonic() < deadline, "the closed subscriber is still counted"
                a.socket.poll(5)
            assert pub.wait_for_subscribers(1, timeout=0)
