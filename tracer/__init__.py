"""provtrace's daemon and library: capture -> decode -> correlate -> store -> query/serve/export."""

__version__ = "0.1.0"
