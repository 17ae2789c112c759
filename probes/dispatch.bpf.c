/* dispatch.bpf.c: the one syscall hook.
 *
 * Hook:   raw_tp/sys_exit (struct pt_regs *regs, long ret)
 * Emits:  nothing itself for most syscalls: it tail-calls the program in
 *         slot `nr` of sys_exit_progs, which userspace fills from
 *         tracer/capture/syscalls.py (the sysexit_* programs). read and write,
 *         the most frequent by far, are counted here without a tail call.
 *
 * Why not one syscall tracepoint per syscall: attaching ~90 perf-event
 * tracepoints and detaching them (each detach waits for a tracepoint RCU
 * grace period) took seconds, and every event built a perf record first.
 * A raw tracepoint attaches and detaches at once; an empty slot costs a failed
 * tail call. The number is checked before the traced map: most syscalls of
 * every process have no program at all.
 *
 * Why nothing on sys_enter: every attached syscall hook costs every syscall
 * of every process on the machine (measured: ~65 ns for an empty raw
 * sys_enter program, plus its tail call). What used to need the entry (close,
 * whose fd number another thread may reuse before sys_exit; execve's argv,
 * gone after exec) is handled at exit and at sched_process_exec instead.
 *
 * This file is joined last (ebpf.PROBE_FILES): it calls io_done from
 * files.bpf.c.
 */
#include "common.h"

#if OFF_REGS_ORIG_AX != OFF_REGS_DI + 8
#error "pt_regs: orig_ax does not follow di; the dispatcher reads both at once"
#endif

#define NR_READ 0
#define NR_WRITE 1

BPF_PROG_ARRAY(sys_exit_progs, PT_NR_SLOTS); /* -D from syscalls.PROG_ARRAY_SIZE */

RAW_TRACEPOINT_PROBE(sys_exit)
{
	/* sys_exit passes the return value, not the number: take orig_ax, and
	 * di (argument 0, the fd of read and write) in the same read. A skipped
	 * syscall has -1 in orig_ax, which no slot matches. */
	struct { __u64 di; __u64 orig_ax; } r = {};

	bpf_probe_read_kernel(&r, sizeof(r), (void *)ctx->args[0] + OFF_REGS_DI);
	if (r.orig_ax == NR_READ || r.orig_ax == NR_WRITE)
		return io_done((long)ctx->args[1], (__s32)r.di, r.orig_ax == NR_WRITE);
	sys_exit_progs.call(ctx, (__u32)r.orig_ax);
	return 0;
}
