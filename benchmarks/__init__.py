"""Benchmarks that print numbers (recorded in docs/bench-*.md), never timed tests."""
