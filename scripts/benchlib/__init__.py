"""Helpers of scripts/bench.py for the benchmarks that need more than a few functions: one module
per job, imported by bench.py (run as a script, so this folder's parent is on sys.path)."""
