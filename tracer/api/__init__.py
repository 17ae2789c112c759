"""provtrace: tracer/api."""
