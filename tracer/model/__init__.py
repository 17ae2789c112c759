"""provtrace: tracer/model."""
