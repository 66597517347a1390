"""Benchmarks: latency and throughput of every backend side by side (`python benchmarks/run.py`)."""
