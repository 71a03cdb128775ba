"""`ionstream bench zmq` runs end to end (tiny sizes; the figures themselves are not asserted)."""
import json
import subprocess
import sys


def test_bench_zmq_json_smoke():
    proc = subprocess.run([sys.executable, "-P", "-m", "ionstream.cli", "bench", "zmq", "--json", "--points", "4096",
                           "--peaks", "20", "--scans", "30", "--latency-scans", "20", "--rate", "500", "--repeat", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("overhead_pct", "msgs_per_s", "raw_msgs_per_s", "p99_latency_ms", "MBps", "raw_MBps",
                "p50_latency_ms", "cpu_overhead_pct", "copy_msgs_per_s"):
        assert isinstance(result[key], float), key
    assert result["missed"] == 0 and result["msgs_per_s"] > 0 and result["raw_msgs_per_s"] > 0
