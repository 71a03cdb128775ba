"""Default DSP worker count: CPU affinity and cgroup quota (real files in tmp_path as the cgroup)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ionstream.config import Config
from ionstream.cores import cgroup_quota_cores, default_dsp_workers, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


def test_no_quota_means_affinity(tmp_path: Path) -> None:
    none = tmp_path / "absent"
    assert cgroup_quota_cores(_cpu_max(tmp_path, "max 100000\n"), none) is None
    assert usable_cores(_cpu_max(tmp_path, "max 100000\n"), none) == AFFINITY


def test_v2_quota_bounds_the_count(tmp_path: Path) -> None:
    # docker --cpus=1.5 on any host: 2 cores usable at most (rounded up), so 1 worker
    cpu_max = _cpu_max(tmp_path, "150000 100000\n")
    assert cgroup_quota_cores(cpu_max, tmp_path) == pytest.approx(1.5)
    assert usable_cores(cpu_max, tmp_path) == min(AFFINITY, 2)
    assert default_dsp_workers(cpu_max, tmp_path) == 1


def test_v1_quota_when_no_v2_file(tmp_path: Path) -> None:
    (tmp_path / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota_cores(tmp_path / "absent", tmp_path) == pytest.approx(1.0)
    assert default_dsp_workers(tmp_path / "absent", tmp_path) == 1
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota_cores(tmp_path / "absent", tmp_path) is None


def test_malformed_file_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota_cores(_cpu_max(tmp_path, "garbage"), tmp_path) is None


def test_cap_and_floor(tmp_path: Path) -> None:
    big = _cpu_max(tmp_path, "12800000 100000\n")  # a 128-core quota: the affinity still bounds it
    assert default_dsp_workers(big, tmp_path, cap=8) == max(1, min(AFFINITY - 1, 8))
    assert default_dsp_workers(big, tmp_path, cap=1) == 1


@pytest.mark.skipif(AFFINITY < 2, reason="needs 2 CPUs in the affinity mask")
def test_affinity_bounds_the_count_in_a_child() -> None:
    # A real affinity mask of one CPU, set in a child so this process keeps its own.
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from ionstream.cores import usable_cores, default_dsp_workers; "
            "print(usable_cores(), default_dsp_workers())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.split() == ["1", "1"]


def test_config_uses_it_unless_set() -> None:
    config = Config()
    assert config.dsp_workers() == default_dsp_workers()
    config.dsp.workers = 5
    assert config.dsp_workers() == 5
