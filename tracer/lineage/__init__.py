"""provtrace: tracer/lineage."""
