"""Benchmarks: `python -m edgesplit.bench NAME [args]` runs edgesplit.bench.NAME.main(argv)."""
