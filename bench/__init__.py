"""Benchmarks that print a table: `python -m bench.NAME [ARGS]` from the repository root (or `python bench/NAME.py`,
which puts the repository, not `bench/`, first on the path, so that no file here shadows an installed package)."""
