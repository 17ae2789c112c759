"""The capture pipeline and the run lifecycle, shared by every driver (pipeline.py, run.py),
and the standalone drivers: `provtrace run` (command.py), `provtrace notebook run` (notebook.py)."""
