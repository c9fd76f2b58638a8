"""Benchmark harness: the SDK against raw PostgreSQL doing the same work (SPEC §8)."""
