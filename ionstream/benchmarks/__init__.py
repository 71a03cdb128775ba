"""`ionstream bench` benchmarks, one module each (see ionstream/cli/bench.py)."""
