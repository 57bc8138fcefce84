"""windowgate's benchmarks: `make bench` (`python -m bench`, `--quick` for a short run)."""
