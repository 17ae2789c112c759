"""Screens of the provtrace TUI: runs, one run, lineage."""
