"""Real components started for tests and benchmarks (pcscd with virtual cards): used by tests/
and loadtest/, never by the product."""
