/* process.bpf.c: the process tree.
 *
 * Hooks:  raw_tp/sched_process_fork, raw_tp/sched_process_exec,
 *         raw_tp/sched_process_exit, sysenter_execve(at) (syscall programs
 *         tail-called at sys_enter by dispatch.bpf.c)
 * Emits:  EV_FORK, EV_EXEC, EV_EXEC_ARGV, EV_EXIT, and EV_FDIO flushes at
 *         exec and exit.
 *
 * Children join `traced` in sched_process_fork, which runs in the parent
 * before the child is first scheduled: a child's first syscall is always seen.
 * Raw tracepoints throughout: they attach and detach without the RCU wait
 * that each perf-event tracepoint costs at detach, and build no perf record.
 */
#include "common.h"

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* args: (struct task_struct *parent, struct task_struct *child) */
	void *child = (void *)ctx->args[1];
	__u32 tgid, child_tgid = 0, child_tid = 0;
	struct traced_val *tv = trace_allowed(&tgid);
	struct fork_event *e;

	if (!tv)
		return 0;
	bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), child + OFF_TASK_TGID);
	bpf_probe_read_kernel(&child_tid, sizeof(child_tid), child + OFF_TASK_PID);
	if (child_tgid != tgid) {
		struct traced_val ctv = {.tag = tv->tag, .max_fd = 0};
		if (traced.update(&child_tgid, &ctv))
			count_lost(LOST_TRACED);
	}
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count_lost(LOST_RINGBUF);
		return 0;
	}
	fill_hdr(&e->h, EV_FORK, tv->tag);
	e->child_pid = child_tgid;
	e->child_tid = child_tid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->is_thread = child_tgid == tgid;
	events.ringbuf_submit(e, rb_flags());
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	/* args: (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
	void *bprm = (void *)ctx->args[2];
	const char *filename = 0;
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	union big_event *b;
	struct exec_event *e;
	long n;

	if (!tv)
		return 0;
	/* Counts so far belong to the old image; fds may live on. */
	flush_all(tv, tgid, FLUSH_EXEC);
	b = scratch_get();
	if (!b)
		return 0;
	e = &b->exec;
	fill_hdr(&e->h, EV_EXEC, tv->tag);
	e->old_tid = (__u32)ctx->args[1];
	e->uid = (__u32)bpf_get_current_uid_gid();
	/* what the tracepoint's filename field holds: bprm->filename */
	bpf_probe_read_kernel(&filename, sizeof(filename), bprm + OFF_BPRM_FILENAME);
	n = bpf_probe_read_kernel_str(e->filename, PT_PATH_MAX, filename);
	e->filename_len = n > 0 ? n : 0;
	emit(e, offsetof(struct exec_event, filename) + e->filename_len, sizeof(*e));
	return 0;
}

static __always_inline int emit_argv(struct bpf_raw_tracepoint_args *ctx, __u32 argv_arg)
{
	__u32 tgid;
	struct traced_val *tv = sys_traced(&tgid);
	const char *const *argv;
	union big_event *b;
	struct argv_event *e;
	__u32 off = 0;

	if (!tv)
		return 0;
	b = scratch_get();
	if (!b)
		return 0;
	argv = (const char *const *)sys_arg(ctx, argv_arg);
	e = &b->argv;
	fill_hdr(&e->h, EV_EXEC_ARGV, tv->tag);
	e->argc = 0;
	e->truncated = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < PT_MAX_ARGS; i++) {
		const char *arg = 0;
		long n;

		bpf_probe_read_user(&arg, sizeof(arg), &argv[i]);
		if (!arg)
			goto done;
		if (off >= PT_ARGV_MAX) {
			e->truncated = 1;
			goto done;
		}
		n = bpf_probe_read_user_str(&e->args[off & (PT_ARGV_MAX - 1)], PT_ARG_MAX, arg);
		if (n <= 0)
			goto done;
		/* 1 <= n <= PT_ARG_MAX: n / PT_ARG_MAX is 1 only for a cut argument.
		 * Branch-free on purpose: an if here doubled the paths the verifier
		 * walks per iteration (650 ms to load this program). */
		e->truncated |= (__u32)((__u64)n / PT_ARG_MAX);
		off += n;
		e->argc++;
	}
	e->truncated = 1; /* more than PT_MAX_ARGS */
done:
	e->len = off;
	emit(e, offsetof(struct argv_event, args) + (off & (PT_ARGV_MAX * 2 - 1)), sizeof(*e));
	return 0;
}

/* execve(path, argv, envp) */
int sysenter_execve(struct bpf_raw_tracepoint_args *ctx) { return emit_argv(ctx, SYS_ARG1); }
/* execveat(dirfd, path, argv, envp, flags) */
int sysenter_execveat(struct bpf_raw_tracepoint_args *ctx) { return emit_argv(ctx, SYS_ARG2); }

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	/* args: (struct task_struct *p, bool group_dead), p == current */
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	struct exit_event *e;
	void *task;
	__s32 code = 0;
	__u32 max_fd;

	if (!tv || !(__u8)ctx->args[1])
		return 0;
	max_fd = tv->max_fd;
	flush_all(tv, tgid, FLUSH_EXIT);
	task = (void *)bpf_get_current_task();
	bpf_probe_read_kernel(&code, sizeof(code), task + OFF_TASK_EXIT_CODE);
	e = events.ringbuf_reserve(sizeof(*e));
	if (e) {
		fill_hdr(&e->h, EV_EXIT, tv->tag);
		e->exit_code = code;
		e->max_fd = max_fd;
		events.ringbuf_submit(e, rb_flags());
	} else {
		count_lost(LOST_RINGBUF);
	}
	traced.delete(&tgid);
	return 0;
}
