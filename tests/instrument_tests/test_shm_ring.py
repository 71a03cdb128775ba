"""Shared-memory ring slots and worker-process lifecycle (issue 17 step 4 building blocks):
real segments in /dev/shm, real processes, real SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.ring import RingBuffer
from instrument.shm_ring import PREFIX, SHM_DIR, SharedSlots, sweep_stale
from test_ring import _frame

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs POSIX shared memory in /dev/shm")
ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _ours() -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{PREFIX}{os.getpid()}-*")}


def _wait_until(predicate, deadline_s: float = 10.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_child_process_reads_the_frame_the_ring_wrote_without_a_copy_in_between():
    ring = RingBuffer(slots=4, slot_bytes=4096, shared=True)
    try:
        assert ring.shared.name in _ours()
        reader = ring.add_reader("r")
        header, raw = _frame(5, n=64)
        ring.put(header, raw, host_time_ns=0)
        slot = reader.get(timeout=0)
        assert np.shares_memory(slot.raw, ring.shared.views[slot.index])
        code = ("import sys; from instrument.shm_ring import SharedSlots; "
                f"s = SharedSlots.attach({ring.shared.name!r}, 4, 4096); "
                f"sys.stdout.buffer.write(bytes(s.views[{slot.index}][:{len(raw)}]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, timeout=60, check=True)
        assert out.stdout == raw
        assert ring.shared.name in _ours()  # the child's exit did not unlink the owner's segment
    finally:
        ring.close()
        ring.free()
    assert not _ours()


def test_sweep_removes_the_segment_of_a_sigkilled_owner_only():
    code = ("import os, sys, time; from multiprocessing import resource_tracker; "
            "from instrument.shm_ring import SharedSlots; s = SharedSlots.create(2, 1024); "
            # as if the resource tracker died with the daemon (kill of the whole process group)
            "resource_tracker.unregister(s.shm._name, 'shared_memory'); "
            "print(s.name, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    name = child.stdout.readline().strip()
    mine = SharedSlots.create(2, 1024)  # a live owner's segment must survive the sweep
    try:
        assert (SHM_DIR / name).exists()
        assert name not in sweep_stale()  # its owner is alive
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert (SHM_DIR / name).exists()  # SIGKILL left it behind
        assert name in sweep_stale()      # the next start removes it
        assert not (SHM_DIR / name).exists() and (SHM_DIR / mine.name).exists()
    finally:
        child.stdout.close()
        mine.unlink()


def test_a_worker_dies_with_its_sigkilled_parent():
    # parent -> worker; the worker arms die_with_parent; SIGKILL the parent; the worker must go.
    worker = ("import os, sys, time; from ionstream.daemon.workers_mp import die_with_parent; "
              "armed = die_with_parent(int(sys.argv[1])); print(os.getpid(), armed, flush=True); time.sleep(60)")
    parent = ("import os, subprocess, sys, time; "
              f"w = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True); "
              "print(w.stdout.readline().strip(), flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        worker_pid, armed = proc.stdout.readline().split()
        assert armed == "True"
        os.kill(int(worker_pid), 0)  # alive while the parent is
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _wait_until(lambda: not _alive(int(worker_pid))), "the worker outlived its SIGKILLed parent"
    finally:
        proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped by init) is dead too
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
