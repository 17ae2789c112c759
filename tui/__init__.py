"""provtrace: tui."""
