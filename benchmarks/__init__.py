"""Benchmark suites (pytest-benchmark) and the report writer of fcos_fast."""
