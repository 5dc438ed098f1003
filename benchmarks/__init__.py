"""Benchmarks: consoled beside the bare pty ("raw") and conmon, on real runc containers.

``python -m benchmarks`` runs every scenario of docs/performance.md, prints a
table of figures with their targets, and can write the raw samples as JSON.
Timings are not tests: only a quick smoke run of this package is part of the
test suite (tests/test_benchmarks_smoke.py), so that it cannot rot.
"""
