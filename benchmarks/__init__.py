"""Benchmark scripts (a package, so they can share the standard workload)."""
