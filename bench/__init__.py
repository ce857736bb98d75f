"""Benchmarks: timing reports that print and save figures (never asserted in tests)."""
