"""Widgets of the provtrace TUI."""
