"""Execution context of a run: host, libraries, packages, interpreters, GPUs, env.

Entry points (collect.py): ``collect_run_context(...)`` builds the
``context`` object of provtrace.run/1, ``gpu_sample(pids)`` takes a
timestamped GPU snapshot for run and cell boundaries, and
``ContextCollector`` holds the caches for callers that manage their own.
Redaction rules for env and argv are in redact.py (docs/redaction.md).
"""
