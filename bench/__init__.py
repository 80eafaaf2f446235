"""The benchmark behind ./scripts/bench (see README, "Benchmark")."""
