/* dispatch.bpf.c: one pair of syscall hooks for every syscall program.
 *
 * Hooks:  raw_tp/sys_enter (struct pt_regs *regs, long id)
 *         raw_tp/sys_exit  (struct pt_regs *regs, long ret)
 * Emits:  nothing itself; tail-calls the program in slot `nr` of
 *         sys_enter_progs / sys_exit_progs, which userspace fills from
 *         tracer/capture/syscalls.py (sysenter_* and sysexit_* programs).
 *
 * Why not one syscall tracepoint per syscall: attaching ~90 perf-event
 * tracepoints and detaching them (each detach waits for a tracepoint RCU
 * grace period) took seconds, and every event built a perf record first.
 * Two raw tracepoints attach and detach at once; an empty slot costs a failed
 * tail call. The number is checked before the traced map: most syscalls of
 * every process have no program at all.
 */
#include "common.h"

BPF_PROG_ARRAY(sys_enter_progs, PT_NR_SLOTS); /* -D from syscalls.PROG_ARRAY_SIZE */
BPF_PROG_ARRAY(sys_exit_progs, PT_NR_SLOTS);

RAW_TRACEPOINT_PROBE(sys_enter)
{
	sys_enter_progs.call(ctx, (__u32)ctx->args[1]);
	return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
	/* sys_exit passes the return value, not the number: take orig_ax. A
	 * skipped syscall has -1 there, which no slot matches. */
	__u64 nr = sys_arg(ctx, OFF_REGS_ORIG_AX);

	sys_exit_progs.call(ctx, (__u32)nr);
	return 0;
}
