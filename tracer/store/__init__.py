"""provtrace: tracer/store."""
