"""`ionstream bench` benchmarks, one module each (see ionstream/commands/bench.py)."""
