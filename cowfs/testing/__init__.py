"""Helpers for testing cowfs against real services, shared by the test suite and benchmarks."""
