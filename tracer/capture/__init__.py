"""provtrace: tracer/capture."""
