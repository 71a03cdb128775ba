"""`ionstream bench soak`: the RSS slope is a least-squares fit after warm-up, and a short real run reports it."""
import math

from ionstream.benchmarks.soak import slope_per_min, soak


def test_slope_is_least_squares_per_minute():
    assert slope_per_min([]) == 0.0 and slope_per_min([(1.0, 5.0)]) == 0.0
    # 0.5 MB per 30 s = 1 MB/min, with symmetric noise that a first-to-last difference would misread
    pts = [(30.0 * i, 100.0 + 0.5 * i + (0.3 if i % 2 else -0.3)) for i in range(11)]
    assert math.isclose(slope_per_min(pts), 1.0, rel_tol=0.05)
    assert slope_per_min([(0.0, 7.0), (10.0, 7.0), (20.0, 7.0)]) == 0.0


def test_short_soak_run_reports_the_slope_and_feeds_a_subscriber():
    r = soak(minutes=0.08, rate=50, samples=512, workers=1, sample_s=0.25, warmup_s=1.0, backend="none")
    assert r["scans"] > 50 and r["messages_received"] > 0 and r["drops"] == 0
    assert r["rss_samples_after_warmup"] >= 2 and math.isfinite(r["rss_slope_mb_per_min"])
    assert r["rss_slope_goal_mb_per_min"] == 0.01
