"""Benchmarks: run by ``scripts/benchmark`` (not collected by the test suite)."""
