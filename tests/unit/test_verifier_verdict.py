"""The verifier's reason for refusing a probe reaches the one-line error (doctor, run)."""

from __future__ import annotations

from provtrace.tracer.capture.ebpf import verifier_verdict

# The tail of what bcc printed when Debian's 6.1.0-50-amd64 refused
# raw_tracepoint__sched_process_exec (vm/run-matrix, docs/kernels.md).
LOG_6_1 = """bpf: Failed to load program: Bad address
0: R1=ctx(off=0,imm=0) R10=fp0
; RAW_TRACEPOINT_PROBE(sched_process_exec)
0: (bf) r6 = r1                       ; R1=ctx(off=0,imm=0) R6_w=ctx(off=0,imm=0)
; for (__s32 fd = 0; fd < PT_FLUSH_FDS; fd++) {
25: (b7) r8 = 0                       ; R8_w=0
The sequence of 8193 jumps is too complex.
processed 173446 insns (limit 1000000) max_states_per_insn 19 total_states 1945 peak_states 1608 mark_read 84

"""


def test_the_line_before_the_summary_is_the_verdict():
    assert verifier_verdict(LOG_6_1) == "The sequence of 8193 jumps is too complex."


def test_no_verifier_log_gives_no_verdict():
    assert verifier_verdict("") == ""
    assert verifier_verdict("/virtual/main.c:3:1: error: unknown type name 'foo'\n1 error generated.\n") == ""
