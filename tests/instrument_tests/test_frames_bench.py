"""`ionstream bench decode` runs, agrees with its reference, and prints its figures (no timed asserts)."""
import json

from ionstream.cli import main


def test_bench_decode_json(capsys):
    assert main(["bench", "decode", "--json", "--frames", "200", "--samples", "512", "--chunk", "4096",
                 "--repeat", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("decode_GBps", "decode_corrupt_GBps", "reference_GBps", "ratio"):
        assert isinstance(result[key], float) and result[key] > 0
    assert result["agree"] == 1 and result["frames"] == 200
    assert result["frames_corrupted"] == 2 and result["frames_corrupt_stream"] == 198
    assert result["payload_crc_errors"] == 2
