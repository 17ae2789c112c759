"""Benchmarks: tracer overhead, loss and throughput, side by side with peers.

Run ``.venv/bin/python -m bench.run --help``. Layout:

- ``workloads.py``  what is run (data generated deterministically in a temp dir)
- ``configs.py``    how it is traced (untraced, provtrace, strace, ReproZip, bpftrace,
                    and the empty-hook floor run by hookfloor.py)
- ``measure.py``    quiet wait, wall/CPU via wait4 rusage, daemon CPU and RSS
- ``report.py``     paired medians, ratios, targets, table, JSON, plot
- ``throughput.py`` start-up cost and the zero-loss syscall-rate ceiling
- ``gen/``          the C syscall generator used by the ceiling search
"""
