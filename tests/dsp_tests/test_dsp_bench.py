"""`ionstream bench dsp` runs, asserts identical peaks against SciPy, and prints its figures (no timed asserts)."""
import json

from ionstream.cli import main

KEYS = ("peaks_speedup", "dsp_ns_per_sample", "dsp_MSps_per_core", "scans_per_s_64k", "thread_scaling_2v1",
        "median_ppm_error", "recall", "false_peak_rate")


def test_bench_dsp_json(capsys):
    assert main(["bench", "dsp", "--json", "--peaks-samples", "65536", "--peaks-spectra", "1", "--scans", "4",
                 "--reference-scans", "1", "--truth-spectra", "5", "--thread-passes", "1", "--repeat", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in KEYS:
        assert isinstance(result[key], float) and result[key] == result[key], key
    assert result["peaks_identical"] == 1
    assert result["peaks_speedup"] > 0 and result["dsp_ns_per_sample"] > 0
    assert 0.9 <= result["recall"] <= 1.0 and 0 <= result["false_peak_rate"] <= 0.05
