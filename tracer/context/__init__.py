"""provtrace: tracer/context."""
