"""ember's benchmarks against torch: ``python -m bench`` (not part of the test suite)."""
