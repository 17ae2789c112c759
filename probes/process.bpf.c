/* process.bpf.c: the process tree.
 *
 * Hooks:  raw_tp/sched_process_fork, raw_tp/sched_process_exec,
 *         raw_tp/sched_process_exit
 * Emits:  EV_FORK, EV_EXEC_ARGV then EV_EXEC, EV_EXIT (with the process's
 *         kernel-accounted CPU, peak RSS and I/O bytes), and EV_FDIO flushes
 *         at exec and exit.
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
		struct traced_val ctv = {.tag = tv->tag, .max_fd = 0, .flags = tv->flags};
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

/* argv of the image that exec just started: the NUL-separated strings between
 * mm->arg_start and arg_end on its new stack (what /proc/PID/cmdline shows
 * before the program changes it). For a #! script that is the interpreter's
 * argv: "/bin/sh ./script.sh a b". One copy, cut at PT_ARGV_MAX bytes;
 * userspace splits it. Read here rather than at execve's entry so that no
 * program runs on sys_enter (see dispatch.bpf.c). */
static __always_inline void emit_argv(struct traced_val *tv, void *task)
{
	union big_event *b = scratch_get();
	struct argv_event *e;
	void *mm = 0;
	__u64 start = 0, end = 0, len;

	if (!b)
		return;
	e = &b->argv;
	fill_hdr(&e->h, EV_EXEC_ARGV, tv->tag);
	e->_reserved = 0;
	e->truncated = 0;
	e->len = 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), task + OFF_TASK_MM);
	if (mm) {
		bpf_probe_read_kernel(&start, sizeof(start), mm + OFF_MM_ARG_START);
		bpf_probe_read_kernel(&end, sizeof(end), mm + OFF_MM_ARG_END);
	}
	len = end > start ? end - start : 0;
	if (len > PT_ARGV_MAX) {
		len = PT_ARGV_MAX;
		e->truncated = 1;
	}
	/* hide len from clang so that the bound below stays for the verifier */
	asm volatile("" : "+r"(len));
	if (len > PT_ARGV_MAX)
		return;
	if (len && bpf_probe_read_user(e->args, len, (void *)start) == 0)
		e->len = len;
	else if (len)
		e->truncated = 1; /* not readable: an empty argv, marked cut */
	emit(e, offsetof(struct argv_event, args) + e->len, sizeof(*e));
}

/* signal->maxrss in pages, saturated to 32 bits (16 TiB of 4 KiB pages); 0 if unknown. */
static __always_inline __u32 signal_maxrss(void *task)
{
	void *signal = 0;
	__u64 pages = 0;

	if (OFF_SIGNAL_MAXRSS < 0)
		return 0;
	bpf_probe_read_kernel(&signal, sizeof(signal), task + OFF_TASK_SIGNAL);
	if (signal)
		bpf_probe_read_kernel(&pages, sizeof(pages), signal + OFF_SIGNAL_MAXRSS);
	return pages > 0xffffffffULL ? 0xffffffffU : (__u32)pages;
}

/* Did this exec gain privileges the caller did not have? At
 * sched_process_exec the new image's credentials are already committed:
 * a setuid/setgid program differs in euid/egid, and file capabilities show
 * in cap_effective (a non-root caller normally has none). Root gains nothing. */
static __always_inline int exec_gained_privileges(void *task)
{
	void *cred = 0;
	__u32 ids[4] = {}; /* uid, gid, euid, egid at their BTF offsets */
	__u64 caps = 0;

	bpf_probe_read_kernel(&cred, sizeof(cred), task + OFF_TASK_CRED);
	if (!cred)
		return 0;
	bpf_probe_read_kernel(&ids[0], sizeof(__u32), cred + OFF_CRED_UID);
	bpf_probe_read_kernel(&ids[1], sizeof(__u32), cred + OFF_CRED_GID);
	bpf_probe_read_kernel(&ids[2], sizeof(__u32), cred + OFF_CRED_EUID);
	bpf_probe_read_kernel(&ids[3], sizeof(__u32), cred + OFF_CRED_EGID);
	bpf_probe_read_kernel(&caps, sizeof(caps), cred + OFF_CRED_CAP_EFFECTIVE);
	if (ids[0] == 0)
		return 0;
	return ids[2] != ids[0] || ids[3] != ids[1] || caps != 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	/* args: (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm), p == current */
	void *bprm = (void *)ctx->args[2];
	const char *filename = 0;
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	union big_event *b;
	struct exec_event *e;
	long n;
	__u32 inherited;

	if (!tv)
		return 0;
	/* Counts so far belong to the old image; fds may live on. */
	flush_all(tv, tgid, FLUSH_EXEC);
	fold_flush_all(tv, tgid);
	inherited = tv->flags & TV_PRIVILEGED;
	if (!inherited && exec_gained_privileges((void *)ctx->args[0]))
		tv->flags |= TV_PRIVILEGED;
	tv->exec_maxrss_pages = signal_maxrss((void *)ctx->args[0]);
	/* before EV_EXEC: the model takes the argv waiting when the exec comes.
	 * The argv the user gave the privileged program is theirs; what runs
	 * below it chose its own, and stays out. */
	if (!inherited)
		emit_argv(tv, (void *)ctx->args[0]);
	b = scratch_get();
	if (!b)
		return 0;
	e = &b->exec;
	fill_hdr(&e->h, EV_EXEC, tv->tag);
	e->old_tid = (__u32)ctx->args[1];
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->flags = tv->flags & TV_PRIVILEGED ? EXEC_PRIVILEGED : 0;
	/* what the tracepoint's filename field holds: bprm->filename */
	bpf_probe_read_kernel(&filename, sizeof(filename), bprm + OFF_BPRM_FILENAME);
	n = bpf_probe_read_kernel_str(e->filename, PT_PATH_MAX, filename);
	e->filename_len = n > 0 ? n : 0;
	emit(e, offsetof(struct exec_event, filename) + e->filename_len, sizeof(*e));
	return 0;
}

/* Is the whole process exiting (its last thread)? Kernels whose
 * sched_process_exit has no group_dead argument (6.12 and before) get it from
 * signal->live, which do_exit has decremented before the tracepoint fires; a
 * thread that exits in the same instant as the last one may see 0 too. */
static __always_inline int group_dead(struct bpf_raw_tracepoint_args *ctx, void *task)
{
#ifdef PT_EXIT_GROUP_DEAD_ARG
	return (__u8)ctx->args[1];
#else
	void *signal = 0;
	int live = 1;

	bpf_probe_read_kernel(&signal, sizeof(signal), task + OFF_TASK_SIGNAL);
	if (signal)
		bpf_probe_read_kernel(&live, sizeof(live), signal + OFF_SIGNAL_LIVE);
	return live == 0;
#endif
}

/* Add one u64 field of two structs: the exiting thread's own count and what
 * signal_struct keeps for the threads of the process already reaped. */
static __always_inline __u64 task_plus_signal(void *task, void *signal, __s32 task_off,
					      __s32 signal_off)
{
	__u64 a = 0, b = 0;

	if (task_off < 0 || signal_off < 0) /* not in this kernel's BTF */
		return 0;

	bpf_probe_read_kernel(&a, sizeof(a), task + task_off);
	if (signal)
		bpf_probe_read_kernel(&b, sizeof(b), signal + signal_off);
	return a + b;
}

/* One of mm->rss_stat's page counters (a percpu_counter's folded count, or an
 * atomic_long_t before 6.2): stride and offset from BTF (btf.rss_layout). */
static __always_inline __u64 rss_pages(void *mm, __u32 kind)
{
	__s64 n = 0;

	bpf_probe_read_kernel(&n, sizeof(n),
			      mm + OFF_MM_RSS_STAT + kind * OFF_RSS_STRIDE + OFF_RSS_COUNT);
	return n > 0 ? n : 0;
}

/* Peak RSS of the image now running, in pages: what get_mm_hiwater_rss()
 * computes, max(mm->hiwater_rss, file + anon + shmem pages now). Not
 * signal->maxrss: exec folds the replaced mm into it, so a child that a large
 * parent forked (or vforked) would report the parent's size. 0 where the mm
 * is already gone (kernels before 6.16 fire the tracepoint after exit_mm). */
static __always_inline __u64 image_hiwater_pages(void *task)
{
	void *mm = 0;
	__u64 hiwater = 0, rss;

	if (OFF_MM_HIWATER_RSS < 0 || OFF_MM_RSS_STAT < 0 || OFF_RSS_STRIDE < 0)
		return 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), task + OFF_TASK_MM);
	if (!mm)
		return 0;
	bpf_probe_read_kernel(&hiwater, sizeof(hiwater), mm + OFF_MM_HIWATER_RSS);
	/* MM_FILEPAGES 0, MM_ANONPAGES 1, MM_SHMEMPAGES 3 (2 is MM_SWAPENTS: not resident) */
	rss = rss_pages(mm, 0) + rss_pages(mm, 1) + rss_pages(mm, 3);
	return rss > hiwater ? rss : hiwater;
}

/* The process's resource use as the kernel accounted it: CPU time, peak RSS,
 * and I/O bytes, read once at the last thread's exit (nothing is sampled). */
static __always_inline void fill_usage(struct exit_event *e, void *task, __u32 exec_maxrss)
{
	void *signal = 0;

	bpf_probe_read_kernel(&signal, sizeof(signal), task + OFF_TASK_SIGNAL);
	e->utime_ns = task_plus_signal(task, signal, OFF_TASK_UTIME, OFF_SIGNAL_UTIME);
	e->stime_ns = task_plus_signal(task, signal, OFF_TASK_STIME, OFF_SIGNAL_STIME);
	e->rchar = task_plus_signal(task, signal, OFF_TASK_IOAC_RCHAR, OFF_SIGNAL_IOAC_RCHAR);
	e->wchar = task_plus_signal(task, signal, OFF_TASK_IOAC_WCHAR, OFF_SIGNAL_IOAC_WCHAR);
	e->maxrss_pages = image_hiwater_pages(task);
	if (e->maxrss_pages)
		return;
	/* no mm to read: signal->maxrss, which do_exit set from the last image but
	 * which also holds what exec inherited. Above that, it is the last image's
	 * own peak; at or below it, it is unknown (0). */
	e->maxrss_pages = signal_maxrss(task);
	if (exec_maxrss && e->maxrss_pages <= exec_maxrss)
		e->maxrss_pages = 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	/* args: (struct task_struct *p[, bool group_dead]), p == current */
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	struct exit_event *e;
	void *task = (void *)bpf_get_current_task();
	__s32 code = 0;
	__u32 max_fd;

	if (!tv || !group_dead(ctx, task))
		return 0;
	max_fd = tv->max_fd;
	flush_all(tv, tgid, FLUSH_EXIT);
	fold_flush_all(tv, tgid);
	bpf_probe_read_kernel(&code, sizeof(code), task + OFF_TASK_EXIT_CODE);
	e = events.ringbuf_reserve(sizeof(*e));
	if (e) {
		fill_hdr(&e->h, EV_EXIT, tv->tag);
		e->exit_code = code;
		e->max_fd = max_fd;
		fill_usage(e, task, tv->exec_maxrss_pages);
		events.ringbuf_submit(e, rb_flags());
	} else {
		count_lost(LOST_RINGBUF);
	}
	traced.delete(&tgid);
	return 0;
}
