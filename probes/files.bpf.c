/* files.bpf.c: files and file descriptors.
 *
 * Hooks: syscall programs tail-called at sys_exit by dispatch.bpf.c; they
 * read their arguments from the saved user registers. Which syscalls each
 * serves: tracer/capture/syscalls.py.
 *   sysexit_open, _openat, _openat2, _creat  -> EV_OPEN (+ agg entry); a
 *                                               failed one: EV_OPEN, fd < 0; a
 *                                               repeat: folded, nothing (common.h)
 *   read and write (in the dispatcher), sysexit_read (getdents64 too), _write, _sendfile,
 *   _copy, _mmap                             -> agg counters (no event)
 *   sysexit_close, sysexit_close_range       -> EV_FDIO flush, EV_FDOP
 *   sysexit_dup, _dup3, _fcntl, _ioctl       -> EV_FDOP
 *   sysexit_chdir, _fchdir                   -> EV_CHDIR
 *   sysexit_rename, _renameat, _renameat2    -> EV_RENAME
 *   sysexit_unlink, _unlinkat, _rmdir        -> EV_UNLINK
 *   sysexit_truncate, _ftruncate             -> EV_TRUNCATE
 *   sysexit_io_uring_setup                   -> EV_IOURING
 *   sysexit_link, _linkat, _symlink, _symlinkat -> EV_LINK
 *   sysexit_mkdir, _mkdirat                  -> EV_MKDIR
 *   (in open_exit) an open through a symlink -> EV_RESOLVED, before its EV_OPEN
 * Everything is decided at sys_exit, where the result is known: only
 * successful calls of traced processes read arguments or copy strings (and
 * opens failing with ENOENT or EACCES, de-duplicated here), and no
 * syscall needs its entry arguments stashed in a map.
 */
#include "common.h"

#define F_DUPFD_VAL 0
#define F_SETFD_VAL 2
#define F_DUPFD_CLOEXEC_VAL 1030
#define FD_CLOEXEC_VAL 1
#define O_CLOEXEC_VAL 02000000
#define CLOSE_RANGE_CLOEXEC_VAL (1U << 2)
#define FIONCLEX_VAL 0x5450
#define FIOCLEX_VAL 0x5451

/* The syscall's return value: args[1] of raw_tp/sys_exit. */
static __always_inline long sys_ret(struct bpf_raw_tracepoint_args *ctx)
{
	return (long)ctx->args[1];
}

/* ---- opens through a symlink (EV_RESOLVED) --------------------------------- */

#define S_IFREG_VAL 0100000
#define O_TMPFILE_VAL 020000000 /* __O_TMPFILE: an unnamed file (named later by linkat) */

BPF_PERCPU_ARRAY(resolve_scratch, struct resolved_event, 1);

/* Does the dentry's name equal path[start, start + len)? `name` is scratch. */
static __always_inline int name_is(void *dentry, const char *path, __u32 start, __u32 len, char *name)
{
	__u32 nlen = 0;
	void *np = 0;

	bpf_probe_read_kernel(&nlen, sizeof(nlen), dentry + OFF_DENTRY_D_NAME_LEN);
	if (nlen != len || nlen == 0 || nlen >= PT_NAME_MAX)
		return 0;
	bpf_probe_read_kernel(&np, sizeof(np), dentry + OFF_DENTRY_D_NAME_NAME);
	if (bpf_probe_read_kernel(name, nlen & (PT_NAME_MAX - 1), np))
		return 0;
	/* A fixed trip count, with nlen read afresh each time: older verifiers
	 * (5.10, 6.1) cannot bound a loop whose exit clang folded into
	 * min(nlen, PT_NAME_MAX), and both indexes are masked for them. */
	volatile __u32 len_left = nlen;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < PT_NAME_MAX; i++) {
		if (i >= len_left)
			break;
		if (name[i & (PT_NAME_MAX - 1)] != path[(start + i) & (PT_PATH_MAX - 1)])
			return 0;
	}
	return 1;
}

/* Did the open reach its file by the names it gave? The file's own name must
 * be the path's last component, and its folder the one named before it: the
 * previous component's name, or for a bare name the cwd or dirfd itself
 * ("/x" is taken as it is). No: it went through a symlink (or a magic link
 * such as /proc/self/fd/N). A symlink higher up the path is not seen here
 * (docs/capture.md). `name` is scratch. */
static __always_inline int reached_as_named(void *dentry, struct open_event *o, char *name)
{
	const char *path = o->path;
	__u32 plen = o->path_len ? o->path_len - 1 : 0, nlen = 0, start, pstart = 0;
	void *parent = 0, *base = 0;
	volatile __u32 *spill = (volatile __u32 *)(name + PT_NAME_MAX);

	bpf_probe_read_kernel(&nlen, sizeof(nlen), dentry + OFF_DENTRY_D_NAME_LEN);
	if (nlen == 0 || nlen > plen || plen >= PT_PATH_MAX)
		return 0;
	start = plen - nlen;
	if (start && path[(start - 1) & (PT_PATH_MAX - 1)] != '/')
		return 0;
	if (!name_is(dentry, path, start, nlen, name))
		return 0;
	if (start == 1) /* "/x" */
		return 1;
	bpf_probe_read_kernel(&parent, sizeof(parent), dentry + OFF_DENTRY_D_PARENT);
	if (!parent)
		return 0;
	if (start == 0) { /* a bare name: the parent is the cwd or the dirfd's folder */
		if (o->dirfd == AT_FDCWD_VAL) {
			void *fs = 0;
			bpf_probe_read_kernel(&fs, sizeof(fs), (void *)bpf_get_current_task() + OFF_TASK_FS);
			if (fs)
				bpf_probe_read_kernel(&base, sizeof(base), fs + OFF_FS_PWD_DENTRY);
		} else {
			void *dir = fd_file(o->dirfd);
			if (dir)
				bpf_probe_read_kernel(&base, sizeof(base), dir + OFF_FILE_F_PATH_DENTRY);
		}
		return base && base == parent;
	}
	/* the component before the name: path[pstart, start - 1) */
#pragma clang loop unroll(disable)
	for (__u32 i = 2; i < PT_NAME_MAX + 2; i++) {
		if (i > start)
			break;
		if (path[(start - i) & (PT_PATH_MAX - 1)] == '/') {
			pstart = start - i + 1;
			break;
		}
	}
	/* Through scratch memory, which the verifier does not track: each exit of
	 * the loop above would otherwise be verified on its own through the
	 * compare loop and the walk after it (too many states to load). */
	*spill = pstart;
	pstart = *spill & (PT_PATH_MAX - 1);
	if (pstart + 1 > start)
		return 0;
	return name_is(parent, path, pstart, start - 1 - pstart, name);
}

/* When an open reached its file under another name, send the names from the
 * file up to the process's root (crossing mounts), leaf first: what d_path
 * would give, which raw tracepoints may not call. Sent before the EV_OPEN it
 * belongs to, so the model names the fd right when it sees the open. */
static __always_inline void resolve_open(struct traced_val *tv, void *file, struct open_event *o)
{
	__u32 zero = 0;
	struct resolved_event *r = resolve_scratch.lookup(&zero);
	void *dentry = 0, *vfsmnt = 0, *fs = 0, *root_d = 0, *root_m = 0;
	void *mnt_root = 0, *parent = 0, *np = 0;
	__u64 off = 0;
	long n;

	if (!r || !file)
		return;
	bpf_probe_read_kernel(&dentry, sizeof(dentry), file + OFF_FILE_F_PATH_DENTRY);
	bpf_probe_read_kernel(&vfsmnt, sizeof(vfsmnt), file + OFF_FILE_F_PATH_MNT);
	if (!dentry || !vfsmnt || reached_as_named(dentry, o, r->names))
		return;
	bpf_probe_read_kernel(&fs, sizeof(fs), (void *)bpf_get_current_task() + OFF_TASK_FS);
	if (fs) {
		bpf_probe_read_kernel(&root_d, sizeof(root_d), fs + OFF_FS_ROOT_DENTRY);
		bpf_probe_read_kernel(&root_m, sizeof(root_m), fs + OFF_FS_ROOT_MNT);
	}
	fill_hdr(&r->h, EV_RESOLVED, tv->tag);
	r->fd = o->fd;
	r->truncated = 1; /* until the walk reaches a root */
	r->_pad = 0;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < PT_RESOLVE_DEPTH; i++) {
		if (dentry == root_d && vfsmnt == root_m) {
			r->truncated = 0;
			break;
		}
		bpf_probe_read_kernel(&mnt_root, sizeof(mnt_root), vfsmnt + OFF_VFSMOUNT_MNT_ROOT);
		if (dentry == mnt_root) { /* up from a mount's root to where it is mounted */
			void *mnt = vfsmnt - OFF_MOUNT_MNT;
			bpf_probe_read_kernel(&parent, sizeof(parent), mnt + OFF_MOUNT_MNT_PARENT);
			if (!parent || parent == mnt) {
				r->truncated = 0;
				break;
			}
			bpf_probe_read_kernel(&dentry, sizeof(dentry), mnt + OFF_MOUNT_MNT_MOUNTPOINT);
			vfsmnt = parent + OFF_MOUNT_MNT;
			continue;
		}
		bpf_probe_read_kernel(&parent, sizeof(parent), dentry + OFF_DENTRY_D_PARENT);
		if (!parent || parent == dentry) {
			r->truncated = 0;
			break;
		}
		if (off >= PT_PATH_MAX)
			break;
		/* hide off from clang so that the mask below stays for the verifier */
		asm volatile("" : "+r"(off));
		off &= PT_PATH_MAX - 1;
		bpf_probe_read_kernel(&np, sizeof(np), dentry + OFF_DENTRY_D_NAME_NAME);
		n = bpf_probe_read_kernel_str(r->names + off, PT_NAME_MAX, np);
		if (n <= 0)
			break;
		off += n;
		dentry = parent;
	}
	r->len = off;
	emit(r, offsetof(struct resolved_event, names) + off, sizeof(*r));
}

/* ---- open ---------------------------------------------------------------- */

enum open_kind { OPEN_OPEN, OPEN_OPENAT, OPEN_CREAT, OPEN_OPENAT2 };

/* dirfd and flags of any open flavour into e; returns the path's address. */
static __always_inline __u64 open_args(struct bpf_raw_tracepoint_args *ctx, int kind,
				       struct open_event *e)
{
	__u64 path, flags = 0;

	if (kind == OPEN_OPEN || kind == OPEN_CREAT) {
		e->dirfd = AT_FDCWD_VAL;
		path = sys_arg(ctx, SYS_ARG0);
		/* creat() == open(O_CREAT|O_WRONLY|O_TRUNC) */
		flags = kind == OPEN_CREAT ? 01101 : sys_arg(ctx, SYS_ARG1);
	} else {
		e->dirfd = (__s32)sys_arg(ctx, SYS_ARG0);
		path = sys_arg(ctx, SYS_ARG1);
		if (kind == OPEN_OPENAT)
			flags = sys_arg(ctx, SYS_ARG2);
		else /* struct open_how starts with __u64 flags (uapi) */
			bpf_probe_read_user(&flags, sizeof(flags), (void *)sys_arg(ctx, SYS_ARG2));
	}
	e->flags = (__u32)flags;
	return path;
}

/* ---- failed opens (issue 13): attempted accesses ------------------------- */
#ifndef PT_NO_FAILED_OPENS /* PROVTRACE_CAPTURE_OFF=failed-opens (syscalls.py) */
#define ENOENT_VAL 2
#define EACCES_VAL 13
#define PT_FAILED_KEY 248                   /* path bytes kept in the key */
#define PT_FAILED_REPEAT_NS 1000000000ULL   /* a repeat is sent again after 1 s */

struct failkey {
	__u32 pid;
	__s32 err;
	char path[PT_FAILED_KEY]; /* as passed, NUL-padded */
};

/* (process, errno, path) -> when it was last sent. A Python start-up fails
 * hundreds of opens, most of them repeats of a few dozen paths (locale files,
 * library search paths): a repeat costs a lookup here and nothing in
 * userspace. LRU: an evicted entry only means a repeat is sent again. The
 * repeat after PT_FAILED_REPEAT_NS lets a notebook cell that fails the same
 * open as an earlier cell have its own record. */
BPF_TABLE("lru_hash", struct failkey, __u64, failed_seen, 16384);
BPF_PERCPU_ARRAY(failed_key, struct failkey, 1);

static __always_inline int open_failed(struct bpf_raw_tracepoint_args *ctx, int kind, long ret)
{
	__u32 zero = 0, tgid;
	struct traced_val *tv;
	struct failkey *k;
	union big_event *b;
	struct open_event *e;
	__u64 path, now, *last;
	long n;

	if (ret != -ENOENT_VAL && ret != -EACCES_VAL)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	k = failed_key.lookup(&zero);
	b = scratch_get();
	if (!k || !b)
		return 0;
	e = &b->open;
	path = open_args(ctx, kind, e);
	__builtin_memset(k, 0, sizeof(*k));
	k->pid = tgid;
	k->err = ret;
	n = bpf_probe_read_user_str(k->path, sizeof(k->path), (const void *)path);
	now = bpf_ktime_get_ns();
	if (n > 0 && n < (long)sizeof(k->path)) { /* the whole path is in the key */
		last = failed_seen.lookup(k);
		if (last && now - *last < PT_FAILED_REPEAT_NS)
			return 0;
		failed_seen.update(k, &now);
	}
	fill_hdr(&e->h, EV_OPEN, tv->tag);
	e->fd = ret;
	e->fmode = 0;
	e->ino = 0;
	e->dev = 0;
	e->imode = 0;
	e->_pad = 0;
	e->path_len = read_ustr(e->path, (const void *)path);
	emit(e, offsetof(struct open_event, path) + e->path_len, sizeof(*e));
	return 0;
}
#else
static __always_inline int open_failed(struct bpf_raw_tracepoint_args *ctx, int kind, long ret)
{
	return 0;
}
#endif /* PT_NO_FAILED_OPENS */

/* ---- repeated opens (issue 15): see `fold` in common.h --------------------- */
#define O_CREAT_VAL 0100
#define O_TRUNC_VAL 01000
#define FMODE_RW_VAL 3 /* FMODE_READ | FMODE_WRITE */

/* Fold this successful open of a regular file into its file's fold entry (1:
 * send nothing for it), or make it the first open of a new entry (0). An open
 * that creates or truncates is never folded: the model records those as
 * accesses of their own; it ends the file's entry instead. Decided before
 * resolve_open: after its loops, this code made sysexit_open too complex for
 * the verifier (E2BIG on 6.18). */
static __always_inline int fold_open(struct traced_val *tv, __u32 tgid, struct open_event *e,
				     void *file)
{
	struct foldkey k;
	struct foldval *f, fresh = {};
	__u32 rw = e->fmode & FMODE_RW_VAL;
	int foldable = !(e->flags & (O_CREAT_VAL | O_TRUNC_VAL | O_TMPFILE_VAL));
	__u64 dentry = 0;

	bpf_probe_read_kernel(&dentry, sizeof(dentry), file + OFF_FILE_F_PATH_DENTRY);
	fold_key(&k, tgid, e->ino, e->dev);
	f = fold.lookup(&k);
	if (f) {
		/* the same dentry: the same name too (a hard link's other name is not) */
		if (foldable && f->ino == e->ino && f->dev == e->dev && f->dentry == dentry &&
		    f->fmode_rw == rw && e->h.ts_ns - f->first_ts_ns < PT_FOLD_NS) {
			__sync_fetch_and_add(&f->nopens, 1);
			f->last_ts_ns = e->h.ts_ns;
			return 1;
		}
		fold_emit(tv, tgid, f); /* expired, another access, or another file's slot */
		if (!foldable)
			fold.delete(&k);
	}
	if (!foldable)
		return 0;
	fresh.ino = e->ino;
	fresh.dentry = dentry;
	fresh.dev = e->dev;
	fresh.imode = e->imode;
	fresh.fmode_rw = rw;
	fresh.first_ts_ns = e->h.ts_ns;
	fresh.last_ts_ns = e->h.ts_ns;
	fold.update(&k, &fresh); /* the map full: this file's opens are just not folded */
	return 0;
}

/* kind is a constant at every call: the compiler keeps one branch. */
static __always_inline int open_exit(struct bpf_raw_tracepoint_args *ctx, int kind)
{
	long ret = sys_ret(ctx);
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct open_event *e;
	struct fdkey k;
	struct fdagg fresh = {};
	__u64 path;
	void *file;
	int folded = 0;

	if (ret < 0)
		return open_failed(ctx, kind, ret);
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	b = scratch_get();
	if (!b)
		return 0;
	e = &b->open;
	fill_hdr(&e->h, EV_OPEN, tv->tag);
	e->fd = ret;
	path = open_args(ctx, kind, e);
	e->fmode = 0;
	e->ino = 0;
	e->dev = 0;
	e->imode = 0;
	file = fd_file(ret);
	file_info(file, &e->ino, &e->dev, &e->imode, &e->fmode);
	/* A leftover entry on this fd number belongs to a file already gone. */
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	if ((e->imode & S_IFMT_VAL) == S_IFREG_VAL && file)
		folded = fold_open(tv, tgid, e, file);
	if ((e->imode & S_IFMT_VAL) != S_IFDIR_VAL) {
		k.pid = tgid;
		k.fd = ret;
		fresh.ino = e->ino;
		fresh.dev = e->dev;
		fresh.imode = e->imode;
		fresh.first_ts_ns = e->h.ts_ns;
		fresh.flags = folded ? FDIO_SEEN_OPEN | FDIO_FOLDED : FDIO_SEEN_OPEN;
		fresh.file = (__u64)file;
		if (agg.update(&k, &fresh))
			count_lost(LOST_AGG);
		else if ((__u32)ret > tv->max_fd)
			tv->max_fd = ret;
	}
	if (folded)
		return 0;
	e->path_len = read_ustr(e->path, (const void *)path);
	if ((e->imode & S_IFMT_VAL) == S_IFREG_VAL && !(e->flags & O_TMPFILE_VAL))
		resolve_open(tv, file, e);
	emit(e, offsetof(struct open_event, path) + e->path_len, sizeof(*e));
	return 0;
}

int sysexit_open(struct bpf_raw_tracepoint_args *ctx) { return open_exit(ctx, OPEN_OPEN); }
int sysexit_openat(struct bpf_raw_tracepoint_args *ctx) { return open_exit(ctx, OPEN_OPENAT); }
int sysexit_creat(struct bpf_raw_tracepoint_args *ctx) { return open_exit(ctx, OPEN_CREAT); }
int sysexit_openat2(struct bpf_raw_tracepoint_args *ctx) { return open_exit(ctx, OPEN_OPENAT2); }

/* ---- I/O aggregation ----------------------------------------------------- */

static __always_inline void agg_io(struct traced_val *tv, __u32 tgid, __s32 fd, long ret,
				   int is_write)
{
	struct fdagg *a = agg_get(tv, tgid, fd, 0);

	if (!a)
		return;
	if (is_write) {
		__sync_fetch_and_add(&a->bytes_written, ret);
		__sync_fetch_and_add(&a->nwrites, 1);
	} else {
		__sync_fetch_and_add(&a->bytes_read, ret);
		__sync_fetch_and_add(&a->nreads, 1);
	}
}

/* A read or write of `ret` bytes on fd (argument 0), already read by the caller. */
static __always_inline int io_done(long ret, __s32 fd, int is_write)
{
	__u32 tgid;
	struct traced_val *tv;

	if (ret < 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	agg_io(tv, tgid, fd, ret, is_write);
	return 0;
}

/* readv, pread64, preadv, preadv2, recvfrom, recvmsg and the write
 * counterparts: fd is argument 0. Plain read and write never get here: the
 * dispatcher handles them itself, saving the tail call on the hottest path. */
static __always_inline int io_exit(struct bpf_raw_tracepoint_args *ctx, int is_write)
{
	long ret = sys_ret(ctx);

	if (ret < 0)
		return 0;
	return io_done(ret, (__s32)sys_arg(ctx, SYS_ARG0), is_write);
}

int sysexit_read(struct bpf_raw_tracepoint_args *ctx) { return io_exit(ctx, 0); }
int sysexit_write(struct bpf_raw_tracepoint_args *ctx) { return io_exit(ctx, 1); }

/* Two-fd copies: the bytes were read from one fd and written to the other. */
static __always_inline int copy_exit(struct bpf_raw_tracepoint_args *ctx, __u32 in_arg,
				     __u32 out_arg)
{
	long ret = sys_ret(ctx);
	__u32 tgid;
	struct traced_val *tv;

	if (ret < 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	agg_io(tv, tgid, (__s32)sys_arg(ctx, in_arg), ret, 0);
	agg_io(tv, tgid, (__s32)sys_arg(ctx, out_arg), ret, 1);
	return 0;
}

/* sendfile(out_fd, in_fd, ...) */
int sysexit_sendfile(struct bpf_raw_tracepoint_args *ctx) { return copy_exit(ctx, SYS_ARG1, SYS_ARG0); }
/* copy_file_range and splice: (fd_in, off_in, fd_out, ...) */
int sysexit_copy(struct bpf_raw_tracepoint_args *ctx) { return copy_exit(ctx, SYS_ARG0, SYS_ARG2); }

/* ---- mmap ------------------------------------------------------------------ */

/* mmap(addr, len, prot, flags, fd, off) */
int sysexit_mmap(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid;
	struct traced_val *tv;
	struct fdagg *a;
	__u64 flags;
	__s32 fd;

	if ((unsigned long)sys_ret(ctx) >= (unsigned long)-4095)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	flags = sys_arg(ctx, SYS_ARG3);
	fd = (__s32)sys_arg(ctx, SYS_ARG4);
	if ((flags & MAP_ANON_VAL) || fd < 0)
		return 0;
	a = agg_get(tv, tgid, fd, 0);
	if (!a)
		return 0;
	/* Plain ORs: bcc's default BPF target has no 32-bit atomic OR. Two
	 * threads mmapping one fd at once could lose a bit; counts are unaffected. */
	a->map_prot |= (__u32)sys_arg(ctx, SYS_ARG2);
	if (flags & MAP_SHARED_VAL)
		a->flags |= FDIO_MAP_SHARED;
	return 0;
}

/* ---- close, dup, fcntl ------------------------------------------------------ */

#define EBADF_VAL 9

/* close(fd). It releases the fd even when it fails, except with EBADF. */
int sysexit_close(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid;
	struct traced_val *tv;

	if (sys_ret(ctx) == -EBADF_VAL)
		return 0;
	tv = sys_traced(&tgid);
	if (tv)
		flush_closed(tv, tgid, (__s32)sys_arg(ctx, SYS_ARG0));
	return 0;
}

static __always_inline void emit_fdop(struct traced_val *tv, __u32 op, __s32 oldfd,
				      __s32 newfd, __u32 cloexec)
{
	struct fdop_event *e = events.ringbuf_reserve(sizeof(*e));

	if (!e) {
		count_lost(LOST_RINGBUF);
		return;
	}
	fill_hdr(&e->h, EV_FDOP, tv->tag);
	e->op = op;
	e->oldfd = oldfd;
	e->newfd = newfd;
	e->cloexec = cloexec;
	events.ringbuf_submit(e, rb_flags());
}

/* close_range(first, last, flags) */
int sysexit_close_range(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid;
	struct traced_val *tv;
	__u32 first, last;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	first = sys_arg(ctx, SYS_ARG0);
	last = sys_arg(ctx, SYS_ARG1);
	if (sys_arg(ctx, SYS_ARG2) & CLOSE_RANGE_CLOEXEC_VAL) {
		emit_fdop(tv, FDOP_CLOEXEC_RANGE, first, last > 0x7fffffff ? 0x7fffffff : last, 1);
		return 0;
	}
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < PT_FLUSH_FDS; i++) {
		__u32 fd = first + i;
		if (fd > last || fd > tv->max_fd)
			break;
		flush_closed(tv, tgid, fd);
	}
	emit_fdop(tv, FDOP_CLOSE_RANGE, first, last > 0x7fffffff ? 0x7fffffff : last, 0);
	return 0;
}

/* dup(oldfd), dup2(oldfd, newfd), dup3(oldfd, newfd, flags) */
static __always_inline int dup_exit(struct bpf_raw_tracepoint_args *ctx, int is_dup3)
{
	long ret = sys_ret(ctx);
	__u32 tgid;
	struct traced_val *tv;
	__u32 cloexec = 0;

	if (ret < 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	if (is_dup3)
		cloexec = (sys_arg(ctx, SYS_ARG2) & O_CLOEXEC_VAL) ? 1 : 0;
	/* Whatever the new fd number held before is closed now. */
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	emit_fdop(tv, FDOP_DUP, (__s32)sys_arg(ctx, SYS_ARG0), ret, cloexec);
	return 0;
}

int sysexit_dup(struct bpf_raw_tracepoint_args *ctx) { return dup_exit(ctx, 0); }
int sysexit_dup3(struct bpf_raw_tracepoint_args *ctx) { return dup_exit(ctx, 1); }

/* fcntl(fd, cmd, arg) */
int sysexit_fcntl(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid;
	struct traced_val *tv;
	long ret = sys_ret(ctx);
	__u32 cmd;
	__s32 fd;

	if (ret < 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	cmd = sys_arg(ctx, SYS_ARG1);
	fd = (__s32)sys_arg(ctx, SYS_ARG0);
	if (cmd == F_SETFD_VAL) {
		emit_fdop(tv, FDOP_SETFD, fd, fd, (sys_arg(ctx, SYS_ARG2) & FD_CLOEXEC_VAL) ? 1 : 0);
		return 0;
	}
	if (cmd != F_DUPFD_VAL && cmd != F_DUPFD_CLOEXEC_VAL)
		return 0;
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	emit_fdop(tv, FDOP_DUP, fd, ret, cmd == F_DUPFD_CLOEXEC_VAL);
	return 0;
}

/* ioctl(fd, FIOCLEX / FIONCLEX): how CPython's os.set_inheritable (and
 * others) set close-on-exec, instead of fcntl(F_SETFD). */
int sysexit_ioctl(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid;
	struct traced_val *tv;
	__u32 cmd;
	__s32 fd;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	cmd = sys_arg(ctx, SYS_ARG1);
	if (cmd != FIOCLEX_VAL && cmd != FIONCLEX_VAL)
		return 0;
	fd = (__s32)sys_arg(ctx, SYS_ARG0);
	emit_fdop(tv, FDOP_SETFD, fd, fd, cmd == FIOCLEX_VAL);
	return 0;
}

/* ---- cwd ------------------------------------------------------------------- */

static __always_inline int chdir_exit(struct bpf_raw_tracepoint_args *ctx, int by_fd)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct chdir_event *e;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->chdir;
	fill_hdr(&e->h, EV_CHDIR, tv->tag);
	if (by_fd) {
		e->fd = (__s32)sys_arg(ctx, SYS_ARG0);
		e->path_len = 0;
	} else {
		e->fd = AT_FDCWD_VAL;
		e->path_len = read_ustr(e->path, (const void *)sys_arg(ctx, SYS_ARG0));
	}
	emit(e, offsetof(struct chdir_event, path) + e->path_len, sizeof(*e));
	return 0;
}

int sysexit_chdir(struct bpf_raw_tracepoint_args *ctx) { return chdir_exit(ctx, 0); }
int sysexit_fchdir(struct bpf_raw_tracepoint_args *ctx) { return chdir_exit(ctx, 1); }

/* ---- rename ----------------------------------------------------------------- */

enum rename_kind { RENAME_RENAME, RENAME_RENAMEAT, RENAME_RENAMEAT2 };

static __always_inline int rename_exit(struct bpf_raw_tracepoint_args *ctx, int kind)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct rename_event *e;
	__u64 oldp, newp;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->rename;
	fill_hdr(&e->h, EV_RENAME, tv->tag);
	if (kind == RENAME_RENAME) { /* rename(old, new) */
		e->olddirfd = AT_FDCWD_VAL;
		e->newdirfd = AT_FDCWD_VAL;
		oldp = sys_arg(ctx, SYS_ARG0);
		newp = sys_arg(ctx, SYS_ARG1);
	} else { /* renameat(olddfd, old, newdfd, new), renameat2(..., flags) */
		e->olddirfd = (__s32)sys_arg(ctx, SYS_ARG0);
		e->newdirfd = (__s32)sys_arg(ctx, SYS_ARG2);
		oldp = sys_arg(ctx, SYS_ARG1);
		newp = sys_arg(ctx, SYS_ARG3);
	}
	e->flags = kind == RENAME_RENAMEAT2 ? (__u32)sys_arg(ctx, SYS_ARG4) : 0;
	e->_pad = 0;
	e->old_len = read_ustr(e->oldpath, (const void *)oldp);
	e->new_len = read_ustr(e->newpath, (const void *)newp);
	emit(e, offsetof(struct rename_event, newpath) + e->new_len, sizeof(*e));
	return 0;
}

int sysexit_rename(struct bpf_raw_tracepoint_args *ctx) { return rename_exit(ctx, RENAME_RENAME); }
int sysexit_renameat(struct bpf_raw_tracepoint_args *ctx) { return rename_exit(ctx, RENAME_RENAMEAT); }
int sysexit_renameat2(struct bpf_raw_tracepoint_args *ctx) { return rename_exit(ctx, RENAME_RENAMEAT2); }

/* ---- unlink, rmdir -------------------------------------------------------------- */

enum unlink_kind { UNLINK_UNLINK, UNLINK_UNLINKAT, UNLINK_RMDIR };

static __always_inline int unlink_exit(struct bpf_raw_tracepoint_args *ctx, int kind)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct unlink_event *e;
	__u64 path;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->unlink;
	fill_hdr(&e->h, EV_UNLINK, tv->tag);
	if (kind == UNLINK_UNLINKAT) { /* unlinkat(dfd, path, flag) */
		e->dirfd = (__s32)sys_arg(ctx, SYS_ARG0);
		path = sys_arg(ctx, SYS_ARG1);
		e->flags = (__u32)sys_arg(ctx, SYS_ARG2);
	} else { /* unlink(path), rmdir(path) */
		e->dirfd = AT_FDCWD_VAL;
		path = sys_arg(ctx, SYS_ARG0);
		e->flags = kind == UNLINK_RMDIR ? 0x200 /* AT_REMOVEDIR */ : 0;
	}
	e->_pad = 0;
	e->path_len = read_ustr(e->path, (const void *)path);
	emit(e, offsetof(struct unlink_event, path) + e->path_len, sizeof(*e));
	return 0;
}

int sysexit_unlink(struct bpf_raw_tracepoint_args *ctx) { return unlink_exit(ctx, UNLINK_UNLINK); }
int sysexit_unlinkat(struct bpf_raw_tracepoint_args *ctx) { return unlink_exit(ctx, UNLINK_UNLINKAT); }
int sysexit_rmdir(struct bpf_raw_tracepoint_args *ctx) { return unlink_exit(ctx, UNLINK_RMDIR); }

/* ---- truncate ---------------------------------------------------------------------- */

/* truncate(path, length), ftruncate(fd, length) */
static __always_inline int truncate_exit(struct bpf_raw_tracepoint_args *ctx, int by_fd)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct truncate_event *e;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->truncate;
	fill_hdr(&e->h, EV_TRUNCATE, tv->tag);
	e->length = (__s64)sys_arg(ctx, SYS_ARG1);
	if (by_fd) {
		e->fd = (__s32)sys_arg(ctx, SYS_ARG0);
		e->path_len = 0;
	} else {
		e->fd = AT_FDCWD_VAL;
		e->path_len = read_ustr(e->path, (const void *)sys_arg(ctx, SYS_ARG0));
	}
	emit(e, offsetof(struct truncate_event, path) + e->path_len, sizeof(*e));
	return 0;
}

int sysexit_truncate(struct bpf_raw_tracepoint_args *ctx) { return truncate_exit(ctx, 0); }
int sysexit_ftruncate(struct bpf_raw_tracepoint_args *ctx) { return truncate_exit(ctx, 1); }

/* ---- io_uring (issue 13) ------------------------------------------------------------ */

/* io_uring_setup(entries, params): the process has a ring now. What it submits
 * there reaches files without a syscall the probes see, and the io_uring
 * tracepoints name neither the file nor the bytes (docs/capture.md): the run
 * records a gap for the process instead of staying silent. */
int sysexit_io_uring_setup(struct bpf_raw_tracepoint_args *ctx)
{
	long ret = sys_ret(ctx);
	__u32 tgid;
	struct traced_val *tv;
	struct iouring_event *e;

	if (ret < 0)
		return 0;
	tv = sys_traced(&tgid);
	if (!tv)
		return 0;
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count_lost(LOST_RINGBUF);
		return 0;
	}
	fill_hdr(&e->h, EV_IOURING, tv->tag);
	e->fd = ret;
	e->flags = 0;
	/* struct io_uring_params (uapi): sq_entries, cq_entries, flags */
	bpf_probe_read_user(&e->flags, sizeof(e->flags), (void *)sys_arg(ctx, SYS_ARG1) + 8);
	events.ringbuf_submit(e, rb_flags());
	return 0;
}
/* ---- links and directories ---------------------------------------------------------- */

enum link_kind { LK_LINK, LK_LINKAT, LK_SYMLINK, LK_SYMLINKAT };

/* link(old, new), linkat(olddfd, old, newdfd, new, flags), symlink(target, new),
 * symlinkat(target, newdfd, new) */
static __always_inline int link_exit(struct bpf_raw_tracepoint_args *ctx, int kind)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct link_event *e;
	__u64 oldp, newp;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->link;
	fill_hdr(&e->h, EV_LINK, tv->tag);
	e->op = (kind == LK_SYMLINK || kind == LK_SYMLINKAT) ? LINK_SYMBOLIC : LINK_HARD;
	e->olddirfd = AT_FDCWD_VAL;
	e->newdirfd = AT_FDCWD_VAL;
	e->flags = 0;
	if (kind == LK_LINKAT) {
		e->olddirfd = (__s32)sys_arg(ctx, SYS_ARG0);
		oldp = sys_arg(ctx, SYS_ARG1);
		e->newdirfd = (__s32)sys_arg(ctx, SYS_ARG2);
		newp = sys_arg(ctx, SYS_ARG3);
		e->flags = (__u32)sys_arg(ctx, SYS_ARG4);
	} else if (kind == LK_SYMLINKAT) {
		oldp = sys_arg(ctx, SYS_ARG0);
		e->newdirfd = (__s32)sys_arg(ctx, SYS_ARG1);
		newp = sys_arg(ctx, SYS_ARG2);
	} else {
		oldp = sys_arg(ctx, SYS_ARG0);
		newp = sys_arg(ctx, SYS_ARG1);
	}
	e->old_len = read_ustr(e->oldpath, (const void *)oldp);
	e->new_len = read_ustr(e->newpath, (const void *)newp);
	emit(e, offsetof(struct link_event, newpath) + e->new_len, sizeof(*e));
	return 0;
}

int sysexit_link(struct bpf_raw_tracepoint_args *ctx) { return link_exit(ctx, LK_LINK); }
int sysexit_linkat(struct bpf_raw_tracepoint_args *ctx) { return link_exit(ctx, LK_LINKAT); }
int sysexit_symlink(struct bpf_raw_tracepoint_args *ctx) { return link_exit(ctx, LK_SYMLINK); }
int sysexit_symlinkat(struct bpf_raw_tracepoint_args *ctx) { return link_exit(ctx, LK_SYMLINKAT); }

/* mkdir(path, mode), mkdirat(dfd, path, mode) */
static __always_inline int mkdir_exit(struct bpf_raw_tracepoint_args *ctx, int at)
{
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct mkdir_event *e;
	__u64 path;

	if (sys_ret(ctx) != 0)
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->mkdir;
	fill_hdr(&e->h, EV_MKDIR, tv->tag);
	if (at) {
		e->dirfd = (__s32)sys_arg(ctx, SYS_ARG0);
		path = sys_arg(ctx, SYS_ARG1);
		e->mode = (__u32)sys_arg(ctx, SYS_ARG2);
	} else {
		e->dirfd = AT_FDCWD_VAL;
		path = sys_arg(ctx, SYS_ARG0);
		e->mode = (__u32)sys_arg(ctx, SYS_ARG1);
	}
	e->_pad = 0;
	e->path_len = read_ustr(e->path, (const void *)path);
	emit(e, offsetof(struct mkdir_event, path) + e->path_len, sizeof(*e));
	return 0;
}

int sysexit_mkdir(struct bpf_raw_tracepoint_args *ctx) { return mkdir_exit(ctx, 0); }
int sysexit_mkdirat(struct bpf_raw_tracepoint_args *ctx) { return mkdir_exit(ctx, 1); }
