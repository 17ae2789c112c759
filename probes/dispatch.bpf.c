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
 * A 32-bit (ia32) image's syscalls have other numbers: each one of a traced
 * process is counted as lost (LOST_COMPAT) here, never decoded, as the
 * ptrace backend counts them; its code segment says so at no extra read.
 * An ia32 syscall from a 64-bit image (int $0x80) is counted by sys_traced
 * where its number has a program.
 *
 * This file is joined last (ebpf.PROBE_FILES): it calls io_done from
 * files.bpf.c.
 */
#include "common.h"

#if OFF_REGS_ORIG_AX != OFF_REGS_DI + 8 || OFF_REGS_CS != OFF_REGS_DI + 24
#error "pt_regs: di, orig_ax, ip, cs are not in a row; the dispatcher reads them at once"
#endif

#define NR_READ 0
#define NR_WRITE 1
#define USER32_CS 0x23 /* __USER32_CS: the code segment of a 32-bit image */
/* Counted once per call, as the ptrace backend counts them at entry:
 * - fork, clone, vfork, clone3 also return (0) in the child: not counted there;
 * - execve, execveat: an exec is recorded by sched_process_exec whatever its
 *   ABI, and the exec that starts a 32-bit image returns in it as an ia32
 *   execve (or, on older kernels, as x32's, with X32_SYSCALL_BIT): not counted;
 * - exit, exit_group never return: the ptrace side does not count them. */
#define IA32_FORKS(nr) ((nr) == 2 || (nr) == 120 || (nr) == 190 || (nr) == 435)
#define IA32_EXECS(nr) ((nr) == 11 || (nr) == 358)
#define X32_SYSCALL_BIT 0x40000000

/* A syscall of a 32-bit image: not decoded; counted as lost if the task is traced. */
static __always_inline int ia32_image_call(__u64 nr, long ret)
{
	__u32 tgid;
	struct traced_val *tv;

	if (nr & X32_SYSCALL_BIT || IA32_EXECS(nr) || (ret == 0 && IA32_FORKS(nr)))
		return 0;
	tv = trace_allowed(&tgid);
	if (tv && !(tv->flags & TV_PRIVILEGED))
		count_lost(LOST_COMPAT);
	return 0;
}

BPF_PROG_ARRAY(sys_exit_progs, PT_NR_SLOTS); /* -D from syscalls.PROG_ARRAY_SIZE */

RAW_TRACEPOINT_PROBE(sys_exit)
{
	/* sys_exit passes the return value, not the number: take orig_ax, di
	 * (argument 0, the fd of read and write) and cs in one read. A skipped
	 * syscall has -1 in orig_ax, which no slot matches. */
	struct { __u64 di; __u64 orig_ax; __u64 ip; __u64 cs; } r = {};

	bpf_probe_read_kernel(&r, sizeof(r), (void *)ctx->args[0] + OFF_REGS_DI);
	if ((__u16)r.cs == USER32_CS)
		return ia32_image_call(r.orig_ax, (long)ctx->args[1]);
	if (r.orig_ax == NR_READ || r.orig_ax == NR_WRITE)
		return io_done((long)ctx->args[1], (__s32)r.di, r.orig_ax == NR_WRITE);
	sys_exit_progs.call(ctx, (__u32)r.orig_ax);
	return 0;
}
