/* common.h: maps and helpers shared by every provtrace probe file.
 *
 * Filtering: only tgids in `traced` are recorded; children are added at fork
 * (sched_process_fork fires before the child first runs, so nothing is missed).
 * De-duplication: reads, writes and mmaps on one (tgid, fd) accumulate in
 * `agg` and leave the kernel as one EV_FDIO when the fd is closed, replaced,
 * or the process execs or exits.
 * Syscalls: programs are tail-called per syscall number from the raw
 * sys_exit tracepoint (dispatch.bpf.c) and read their arguments from the
 * task's saved user registers (sys_arg). Nothing hooks sys_enter.
 *
 * Struct offsets (OFF_*) come from the running kernel's BTF as -D defines;
 * never from the installed headers, which belong to another kernel.
 */
#ifndef PROVTRACE_COMMON_H
#define PROVTRACE_COMMON_H

#include "events.h"

/* Named in preadv2/pwritev2 tracepoint formats; absent from the headers bcc sees. */
typedef int rwf_t;

#define AT_FDCWD_VAL (-100)
#define S_IFMT_VAL 00170000
#define S_IFDIR_VAL 0040000
#define MAP_SHARED_VAL 0x01
#define MAP_ANON_VAL 0x20

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#define PT_WAKE_EVERY 64 /* records per CPU between consumer wakeups (power of 2) */

struct traced_val {
	__u32 tag;
	__u32 max_fd;   /* highest fd with an agg entry: bounds the exec/exit sweep */
	__u32 flags;    /* TV_PRIVILEGED */
	__u32 exec_maxrss_pages; /* signal->maxrss just after the last exec (saturated): what
				  * exec inherited from the replaced image (process.bpf.c) */
};

/* The process exec'd a program that gained privileges (setuid, setgid, file
 * capabilities) in a non-root run, or descends from one: its process tree is
 * still seen (fork, exec, exit), but none of its syscalls are, so nothing it
 * reads with those privileges (chage reading /etc/shadow) reaches the user. */
#define TV_PRIVILEGED 1

struct fdkey {
	__u32 pid;
	__s32 fd;
};

struct fdagg {
	__u64 bytes_read;
	__u64 bytes_written;
	__u64 ino;
	__u64 first_ts_ns;
	__u32 nreads;
	__u32 nwrites;
	__u32 dev;
	__u32 imode;
	__u32 map_prot;
	__u32 flags;
	__u64 file;     /* the struct file it counts: tells a reused fd number at close */
};

/* Per-CPU scratch for records too big for the BPF stack. Its size is a power
 * of two so emit() can bound lengths with a mask the verifier understands. */
#define PT_SCRATCH_SIZE 16384

union big_event {
	char raw[PT_SCRATCH_SIZE];
	struct exec_event exec;
	struct argv_event argv;
	struct open_event open;
	struct chdir_event chdir;
	struct rename_event rename;
	struct unlink_event unlink;
	struct truncate_event truncate;
	struct net_event net;
	struct link_event link;
	struct mkdir_event mkdir;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(traced, __u32, struct traced_val, 65536);
BPF_HASH(agg, struct fdkey, struct fdagg, 262144);
BPF_PERCPU_ARRAY(scratch, union big_event, 1);
BPF_PERCPU_ARRAY(lost, __u64, LOST_NREASONS);
BPF_PERCPU_ARRAY(emitted, __u64, 1);

static __always_inline void count_lost(__u32 reason)
{
	__u64 *n = lost.lookup(&reason);
	if (n)
		*n += 1;
}

/* Ring-buffer flags for the next record: wake the consumer on every
 * PT_WAKE_EVERY-th record of a CPU only. A wakeup per record (the default
 * whenever the consumer has caught up) cost the traced task about 4 us per
 * record here (irq_work, IPI, the consumer's switch-in); the consumers poll
 * with a timeout and drain what is there, so fewer wakeups only batch. */
static __always_inline __u64 rb_flags(void)
{
	__u32 zero = 0;
	__u64 *n = emitted.lookup(&zero);

	if (!n)
		return 0;
	*n += 1;
	return (*n & (PT_WAKE_EVERY - 1)) ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;
}

/* trace_allowed: the one filter. Returns the traced entry of the current tgid. */
static __always_inline struct traced_val *trace_allowed(__u32 *tgid)
{
	__u64 id = bpf_get_current_pid_tgid();
	*tgid = id >> 32;
	return traced.lookup(tgid);
}

/* x86_64 syscall arguments, in order, as pt_regs members (BTF offsets). */
#define SYS_ARG0 OFF_REGS_DI
#define SYS_ARG1 OFF_REGS_SI
#define SYS_ARG2 OFF_REGS_DX
#define SYS_ARG3 OFF_REGS_R10
#define SYS_ARG4 OFF_REGS_R8
#define TS_COMPAT_VAL 0x0002 /* thread_info.status: an ia32 syscall is running */

/* Argument at pt_regs offset `off` of the current syscall. The raw syscall
 * tracepoints pass the task's saved user registers as args[0]; at sys_exit
 * the argument registers still hold what the caller passed (only ax changed). */
static __always_inline __u64 sys_arg(struct bpf_raw_tracepoint_args *ctx, __u32 off)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx->args[0] + off);
	return v;
}

/* The traced entry of the current tgid for a syscall program, or 0. An ia32
 * syscall's number means another syscall in the x86_64 table, so it is
 * skipped and counted (checked only for traced tasks, to keep others cheap). */
static __always_inline struct traced_val *sys_traced(__u32 *tgid)
{
	struct traced_val *tv = trace_allowed(tgid);
	__u32 status = 0;

	if (!tv || tv->flags & TV_PRIVILEGED)
		return 0;
	bpf_probe_read_kernel(&status, sizeof(status),
			      (void *)bpf_get_current_task() + OFF_TASK_TI_STATUS);
	if (status & TS_COMPAT_VAL) {
		count_lost(LOST_COMPAT);
		return 0;
	}
	return tv;
}

static __always_inline void fill_hdr(struct event_hdr *h, __u32 type, __u32 tag)
{
	__u64 id = bpf_get_current_pid_tgid();
	h->type = type;
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->tag = tag;
	h->ts_ns = bpf_ktime_get_ns();
}

/* Emit a scratch-built record, trimmed to `size` bytes. */
static __always_inline void emit(void *data, __u32 size32, __u32 max)
{
	__u64 size = size32 > max ? max : size32;

	/* clang folds a mask it can prove redundant; the empty asm hides the
	 * value, so the mask stays and gives the verifier its bound. */
	asm volatile("" : "+r"(size));
	size &= PT_SCRATCH_SIZE - 1;
	if (events.ringbuf_output(data, size, rb_flags()))
		count_lost(LOST_RINGBUF);
}

/* Read a user string into dst; returns bytes including NUL (0 on failure). */
static __always_inline __u32 read_ustr(char *dst, const void *src)
{
	long n = bpf_probe_read_user_str(dst, PT_PATH_MAX, src);
	return n > 0 ? (__u32)n : 0;
}

/* The struct file behind fd in the current task, via BTF offsets. */
static __always_inline void *fd_file(__s32 fd)
{
	void *task = (void *)bpf_get_current_task();
	void *files = 0, *fdt = 0, *arr = 0, *file = 0;
	__u32 max_fds = 0;

	if (fd < 0)
		return 0;
	bpf_probe_read_kernel(&files, sizeof(files), task + OFF_TASK_FILES);
	if (!files)
		return 0;
	bpf_probe_read_kernel(&fdt, sizeof(fdt), files + OFF_FILES_FDT);
	if (!fdt)
		return 0;
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + OFF_FDT_MAX_FDS);
	if ((__u32)fd >= max_fds)
		return 0;
	bpf_probe_read_kernel(&arr, sizeof(arr), fdt + OFF_FDT_FD);
	if (!arr)
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), arr + (__u64)fd * sizeof(void *));
	return file;
}

/* Inode identity and type, and the file's f_mode. */
static __always_inline void file_info(void *file, __u64 *ino, __u32 *dev,
				      __u32 *imode, __u32 *fmode)
{
	void *inode = 0, *sb = 0;
	__u16 mode16 = 0;

	if (!file)
		return;
	bpf_probe_read_kernel(fmode, sizeof(*fmode), file + OFF_FILE_F_MODE);
	bpf_probe_read_kernel(&inode, sizeof(inode), file + OFF_FILE_F_INODE);
	if (!inode)
		return;
	bpf_probe_read_kernel(ino, sizeof(*ino), inode + OFF_INODE_I_INO);
	bpf_probe_read_kernel(&mode16, sizeof(mode16), inode + OFF_INODE_I_MODE);
	*imode = mode16;
	bpf_probe_read_kernel(&sb, sizeof(sb), inode + OFF_INODE_I_SB);
	if (sb)
		bpf_probe_read_kernel(dev, sizeof(*dev), sb + OFF_SB_S_DEV);
}

/* ---- repeated opens, folded (issue 15) ---------------------------------------
 * A process that opens the same file again and again (a config file read per
 * request, a benchmark's open-read-close loop) would send an EV_OPEN and an
 * EV_FDIO per open. Instead the first open is sent as usual and makes a `fold`
 * entry for (tgid, dev, ino); a later open of that file by the same name (the
 * same dentry, not through a symlink) with the same access (f_mode read/write
 * bits) within PT_FOLD_NS of the first sends nothing: its
 * fd's agg entry is marked FDIO_FOLDED, and at close its counts are added to
 * the fold entry. The entry leaves as ONE EV_FDIO (reason FLUSH_FOLDED, fd =
 * the number of opens folded, ts = the last of them, first_ts_ns = the first)
 * when an open of that file comes after the bound or with another access, when
 * another file takes its slot, at exec and exit, or when userspace sweeps
 * (ebpf.py). It is a plain hash, not an LRU: an entry is never dropped with
 * counts in it; when the map is full, opens are just not folded.
 * Each process has PT_FOLD_SLOTS slots, chosen by (dev, ino): exec and exit
 * flush them with a loop of that many lookups. */
#define PT_FOLD_SLOTS 16
#define PT_FOLD_NS 100000000ULL /* 100 ms: cells of a followed kernel are right to within it */

struct foldkey {
	__u32 pid;
	__u32 slot;
};

struct foldval {
	__u64 ino;
	__u64 dentry;   /* the name opened: a hard link's other name is another entry */
	__u64 first_ts_ns;
	__u64 last_ts_ns;
	__u64 bytes_read;
	__u64 bytes_written;
	__u32 nreads;
	__u32 nwrites;
	__u32 dev;
	__u32 imode;
	__u32 fmode_rw; /* f_mode & (FMODE_READ | FMODE_WRITE) of the opens */
	__u32 nopens;   /* folded opens (not counting the first, which was sent) */
	__u32 map_prot;
	__u32 flags;
};

BPF_HASH(fold, struct foldkey, struct foldval, 65536);

static __always_inline void fold_key(struct foldkey *k, __u32 tgid, __u64 ino, __u32 dev)
{
	k->pid = tgid;
	k->slot = (__u32)(ino ^ (ino >> 16) ^ dev) & (PT_FOLD_SLOTS - 1);
}

/* Send a fold entry's counts as one EV_FDIO, if it folded any open. */
static __always_inline void fold_emit(struct traced_val *tv, __u32 tgid, struct foldval *f)
{
	struct fdio_event e;

	if (!f->nopens)
		return;
	fill_hdr(&e.h, EV_FDIO, tv->tag);
	e.h.pid = tgid;
	e.h.ts_ns = f->last_ts_ns;
	e.fd = f->nopens;
	e.reason = FLUSH_FOLDED;
	e.bytes_read = f->bytes_read;
	e.bytes_written = f->bytes_written;
	e.nreads = f->nreads;
	e.nwrites = f->nwrites;
	e.ino = f->ino;
	e.dev = f->dev;
	e.imode = f->imode;
	e.map_prot = f->map_prot;
	e.flags = f->flags | FDIO_FOLDED | FDIO_SEEN_OPEN;
	e.first_ts_ns = f->first_ts_ns;
	if (events.ringbuf_output(&e, sizeof(e), rb_flags()))
		count_lost(LOST_RINGBUF);
}

/* Add a closed folded fd's counts to its file's fold entry; 0 if that entry
 * is gone (evicted or expired meanwhile): the caller sends them itself. */
static __always_inline int fold_absorb(__u32 tgid, struct fdagg *a)
{
	struct foldkey k;
	struct foldval *f;

	fold_key(&k, tgid, a->ino, a->dev);
	f = fold.lookup(&k);
	if (!f || f->ino != a->ino || f->dev != a->dev || !f->nopens)
		return 0;
	__sync_fetch_and_add(&f->bytes_read, a->bytes_read);
	__sync_fetch_and_add(&f->bytes_written, a->bytes_written);
	__sync_fetch_and_add(&f->nreads, a->nreads);
	__sync_fetch_and_add(&f->nwrites, a->nwrites);
	f->map_prot |= a->map_prot;
	f->flags |= a->flags & FDIO_MAP_SHARED;
	return 1;
}

/* At exec and exit: send and forget every fold entry of the process. */
static __always_inline void fold_flush_all(struct traced_val *tv, __u32 tgid)
{
	struct foldkey k = {.pid = tgid};

#pragma clang loop unroll(disable)
	for (__u32 slot = 0; slot < PT_FOLD_SLOTS; slot++) {
		k.slot = slot;
		struct foldval *f = fold.lookup(&k);
		if (f) {
			fold_emit(tv, tgid, f);
			fold.delete(&k);
		}
	}
}

/* Send one agg entry (a, of tgid's fd) to userspace and forget it. Built on
 * the stack and sent with ringbuf_output (not reserve/submit): no reference is
 * held across the branches, which keeps the verifier's cost of the sweep
 * loops low. */
static __always_inline void flush_entry(struct traced_val *tv, struct fdkey *k, struct fdagg *a,
					__u32 reason)
{
	struct fdio_event e;

	if ((a->flags & FDIO_FOLDED) && fold_absorb(k->pid, a)) {
		agg.delete(k);
		return;
	}
	fill_hdr(&e.h, EV_FDIO, tv->tag);
	e.h.pid = k->pid;
	e.fd = k->fd;
	e.reason = reason;
	e.bytes_read = a->bytes_read;
	e.bytes_written = a->bytes_written;
	e.nreads = a->nreads;
	e.nwrites = a->nwrites;
	e.ino = a->ino;
	e.dev = a->dev;
	e.imode = a->imode;
	e.map_prot = a->map_prot;
	e.flags = a->flags;
	e.first_ts_ns = a->first_ts_ns;
	if (events.ringbuf_output(&e, sizeof(e), rb_flags()))
		count_lost(LOST_RINGBUF);
	agg.delete(k);
}

static __always_inline void flush_fd(struct traced_val *tv, __u32 tgid, __s32 fd, __u32 reason)
{
	struct fdkey k = {.pid = tgid, .fd = fd};
	struct fdagg *a = agg.lookup(&k);

	if (a)
		flush_entry(tv, &k, a, reason);
}

/* Flush the entry of an fd that a close released, seen at sys_exit. By then
 * another thread may have reused the number: if the fd now holds the very file
 * the entry counts, the entry was made for the new occupant and stays (the
 * closed file's entry, if any, was flushed as FLUSH_REPLACED by that open). */
static __always_inline void flush_closed(struct traced_val *tv, __u32 tgid, __s32 fd)
{
	struct fdkey k = {.pid = tgid, .fd = fd};
	struct fdagg *a = agg.lookup(&k);
	void *now;

	if (!a)
		return;
	now = fd_file(fd);
	if (now && (__u64)now == a->file)
		return;
	flush_entry(tv, &k, a, FLUSH_CLOSE);
}

/* Flush every agg entry of a process, up to its highest fd seen (bounded).
 * The loop always runs PT_FLUSH_FDS times and skips fds above max: a `break`
 * on max gives the verifier one loop exit per iteration, and the verifiers of
 * Debian's 5.10 and 6.1 refuse that ("The sequence of 8193 jumps is too
 * complex", vm/run-matrix). */
static __always_inline void flush_all(struct traced_val *tv, __u32 tgid, __u32 reason)
{
	__u32 max = tv->max_fd;

#pragma clang loop unroll(disable)
	for (__s32 fd = 0; fd < PT_FLUSH_FDS; fd++) {
		if ((__u32)fd <= max)
			flush_fd(tv, tgid, fd, reason);
	}
	tv->max_fd = 0;
}

/* The agg entry for (tgid, fd), created from the fd table when first seen. */
static __always_inline struct fdagg *agg_get(struct traced_val *tv, __u32 tgid, __s32 fd, __u32 flags)
{
	struct fdkey k = {.pid = tgid, .fd = fd};
	struct fdagg *a = agg.lookup(&k);
	struct fdagg fresh = {};
	__u32 fmode = 0;

	if (a)
		return a;
	void *file = fd_file(fd);

	file_info(file, &fresh.ino, &fresh.dev, &fresh.imode, &fmode);
	fresh.file = (__u64)file;
	fresh.first_ts_ns = bpf_ktime_get_ns();
	fresh.flags = flags;
	if (agg.insert(&k, &fresh)) {
		count_lost(LOST_AGG);
		return 0;
	}
	if ((__u32)fd > tv->max_fd)
		tv->max_fd = fd;
	return agg.lookup(&k);
}

static __always_inline union big_event *scratch_get(void)
{
	__u32 zero = 0;
	return scratch.lookup(&zero);
}

#endif /* PROVTRACE_COMMON_H */
