"""Hold empty eBPF programs on the raw tracepoints provtrace hooks, until SIGTERM or SIGINT.

Run as ``python bench/hookfloor.py`` (root, bcc) by the ``ebpf-hook-floor``
benchmark configuration. It prints ``ready`` once every program is attached,
waits for SIGTERM/SIGINT, detaches and exits 0; if loading or attaching fails
it prints one error line to stderr and exits 1.

Why: the cost a traced syscall pays for merely having a program on raw
``sys_exit`` (plus the sched hooks) is the least any design like provtrace's
can cost, whatever the programs do. bpftrace's per-syscall perf tracepoints
with count maps are a different mechanism, so they are not that floor.

Standalone on purpose, like progs.py: it imports nothing from bench.
"""

from __future__ import annotations

import argparse
import signal
import sys

# The raw tracepoints provtrace's probes attach (probes/dispatch.bpf.c,
# probes/process.bpf.c). provtrace hooks nothing on sys_enter.
HOOKS = ("sys_exit", "sched_process_fork", "sched_process_exec", "sched_process_exit")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def program_text(hooks: tuple[str, ...] = HOOKS) -> str:
    """BPF C source: one empty RAW_TRACEPOINT_PROBE per hook (bcc attaches them on load)."""
    return "".join(f"RAW_TRACEPOINT_PROBE({hook})\n{{\n\treturn 0;\n}}\n\n" for hook in hooks)


def _load(text: str):
    """Compile and attach; returns the bcc BPF object. bcc is imported here, not at import time."""
    from bcc import BPF

    return BPF(text=text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/hookfloor.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--print-program", action="store_true", help="print the BPF C source and exit")
    args = p.parse_args(argv)
    text = program_text()
    if args.print_program:
        print(text, end="")
        return 0
    # Block the stop signals before loading, so one sent during the (slow)
    # compile waits for sigwait below instead of killing us before cleanup.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        bpf = _load(text)
    except ImportError as e:
        print(f"hookfloor: cannot import bcc: {e} (apt-get install python3-bpfcc)", file=sys.stderr)
        return 1
    except Exception as e:  # bcc reports compile and attach failures as bare Exception
        why = " ".join(str(e).split())  # one line: the bench prints the last stderr line
        print(f"hookfloor: loading empty programs on raw {', '.join(HOOKS)} failed: {why}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    signal.sigwait(STOP_SIGNALS)
    bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
