"""skelfast benchmarks: python -m benchmarks.bench_<op>."""
