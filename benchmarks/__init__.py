"""S2I benchmarks: ``python -m benchmarks store|latency [options]``."""
