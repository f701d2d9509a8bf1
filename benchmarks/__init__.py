"""Benchmarks run by ``make bench``; figures go to ``bench-results/`` (ignored by git)."""
