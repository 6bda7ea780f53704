"""Benchmarks: see ``python -m flowlib.bench --help``."""
