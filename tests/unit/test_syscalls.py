"""The syscall dispatch table (tracer/capture/syscalls.py) against its two sources of truth.

The numbers must be the x86_64 ABI's, read here from the installed uapi header;
the program names must be exactly the sysexit_* programs defined in
probes/*.bpf.c, so that no program is written and never dispatched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provtrace.tracer.capture import syscalls as S

ROOT = Path(__file__).resolve().parents[2]
UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def _probe_programs() -> set[str]:
    names = set()
    for src in (ROOT / "probes").glob("*.bpf.c"):
        names |= set(re.findall(r"^int\s+(sys(?:enter|exit)_\w+)\s*\(struct bpf_raw_tracepoint_args \*ctx\)",
                                src.read_text(), re.M))
    return names


def test_numbers_are_the_x86_64_abi():
    if not UNISTD_64.exists():
        pytest.fail(f"{UNISTD_64} is missing: apt-get install linux-libc-dev")
    abi = {m[0]: int(m[1]) for m in re.findall(r"^#define __NR_(\w+)\s+(\d+)$", UNISTD_64.read_text(), re.M)}
    for name, nr in S.NR_X86_64.items():
        assert abi.get(name) == nr, name


def test_every_program_in_the_probes_is_dispatched_and_vice_versa():
    in_probes = _probe_programs()
    assert in_probes, "no sysexit_ programs found in probes/"
    assert in_probes == set(S.EXIT_PROGRAMS)
    assert all(n.startswith("sysexit_") for n in S.EXIT_PROGRAMS)


def test_each_syscall_has_at_most_one_program_per_side_and_fits_the_array():
    nrs = [nr for _prog, nr in S.slots(S.EXIT_PROGRAMS)]
    assert len(nrs) == len(set(nrs))
    assert all(0 <= nr < S.PROG_ARRAY_SIZE for nr in nrs)
    named = [n for names in S.EXIT_PROGRAMS.values() for n in names]
    named += list(S.INLINE) + list(S.NOT_DISPATCHED)
    assert len(named) == len(set(named)), "a syscall both inline or undispatched and in a program"
    assert set(named) == set(S.NR_X86_64), "a number nobody handles, or a syscall without a number"


def test_the_dispatcher_inlines_exactly_read_and_write():
    """dispatch.bpf.c compares orig_ax with NR_READ/NR_WRITE itself; INLINE must say the same."""
    src = (ROOT / "probes" / "dispatch.bpf.c").read_text()
    inline = {int(v) for v in re.findall(r"^#define NR_(?:READ|WRITE) (\d+)$", src, re.M)}
    assert inline == {S.NR_X86_64[n] for n in S.INLINE}
    assert "RAW_TRACEPOINT_PROBE(sys_enter)" not in src


def test_prog_array_size_is_what_the_probes_are_compiled_with():
    from provtrace.tracer.capture.ebpf import cflags  # noqa: PLC0415 - imports no bcc

    assert f"-DPT_NR_SLOTS={S.PROG_ARRAY_SIZE}" in cflags({}, 64)
