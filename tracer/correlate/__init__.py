"""provtrace: tracer/correlate -- kernels, cells and clocks.

kernels.py + connection.py (discovery), iopub.py + tracker.py (IOPub ->
cell windows), follower.py (every kernel on the host), notebook.py
(headless runs), cells.py (attribution), clock.py (monotonic <-> UTC),
windows.py (the CellWindow record).
"""
