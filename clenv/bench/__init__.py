"""Benchmarks: ``python -m clenv.bench.<name>`` prints figures measured in one run.

Each module exposes ``main()``. They compare ratios measured side by side (interleaved
in one process), never absolute timings across runs: the machines are shared.
"""
