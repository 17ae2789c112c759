"""provtrace: tracer/correlate."""
