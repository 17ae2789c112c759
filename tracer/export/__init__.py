"""provtrace: tracer/export."""
