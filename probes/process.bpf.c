/* process.bpf.c: the process tree.
 *
 * Hooks:  raw_tp/sched_process_fork, tp/sched/sched_process_exec,
 *         tp/sched/sched_process_exit, tp/syscalls/sys_enter_execve(at)
 * Emits:  EV_FORK, EV_EXEC, EV_EXEC_ARGV, EV_EXIT, and EV_FDIO flushes at
 *         exec and exit.
 *
 * Children join `traced` in sched_process_fork, which runs in the parent
 * before the child is first scheduled: a child's first syscall is always seen.
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
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	union big_event *b;
	struct exec_event *e;
	unsigned short loc;
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
	e->old_tid = args->old_pid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	loc = args->data_loc_filename & 0xFFFF;
	n = bpf_probe_read_kernel_str(e->filename, PT_PATH_MAX, (void *)args + loc);
	e->filename_len = n > 0 ? n : 0;
	emit(e, offsetof(struct exec_event, filename) + e->filename_len, sizeof(*e));
	return 0;
}

static __always_inline int emit_argv(const char *const *argv)
{
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	union big_event *b;
	struct argv_event *e;
	__u32 off = 0;

	if (!tv)
		return 0;
	b = scratch_get();
	if (!b)
		return 0;
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
		if (n == PT_ARG_MAX)
			e->truncated = 1;
		off += n;
		e->argc++;
	}
	e->truncated = 1; /* more than PT_MAX_ARGS */
done:
	e->len = off;
	emit(e, offsetof(struct argv_event, args) + (off & (PT_ARGV_MAX * 2 - 1)), sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	return emit_argv((const char *const *)args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
	return emit_argv((const char *const *)args->argv);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	__u32 tgid;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct traced_val *tv = trace_allowed(&tgid);
	struct exit_event *e;
	void *task;
	__s32 code = 0;
	__u32 max_fd;

	stash.delete(&tid);
	if (!tv || !args->group_dead)
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
		events.ringbuf_submit(e, 0);
	} else {
		count_lost(LOST_RINGBUF);
	}
	traced.delete(&tgid);
	return 0;
}
