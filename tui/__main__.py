"""`python -m provtrace.tui`: the same as `provtrace-tui` and `provtrace tui`."""

from .entry import main

main()
