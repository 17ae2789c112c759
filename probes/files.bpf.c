/* files.bpf.c: files and file descriptors.
 *
 * Hooks (syscall tracepoints, enter stashes args, exit decides):
 *   open, openat, openat2, creat            -> EV_OPEN (+ agg entry)
 *   read*, write*, sendfile, copy_file_range, splice, recvfrom, sendto,
 *   recvmsg, sendmsg, mmap                   -> agg counters (no event)
 *   close, close_range                       -> EV_FDIO flush, EV_FDOP
 *   dup, dup2, dup3, fcntl                   -> EV_FDOP
 *   chdir, fchdir                            -> EV_CHDIR
 *   rename, renameat, renameat2              -> EV_RENAME
 *   unlink, unlinkat, rmdir                  -> EV_UNLINK
 *   truncate, ftruncate                      -> EV_TRUNCATE
 * Paths are read at sys_exit, after the kernel used them, so only
 * successful calls cost a string copy.
 */
#include "common.h"

#define F_DUPFD_VAL 0
#define F_SETFD_VAL 2
#define F_DUPFD_CLOEXEC_VAL 1030
#define FD_CLOEXEC_VAL 1
#define O_CLOEXEC_VAL 02000000
#define CLOSE_RANGE_CLOEXEC_VAL (1U << 2)

/* ---- open ---------------------------------------------------------------- */

static __always_inline int open_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct open_event *e;
	struct fdkey k;
	struct fdagg fresh = {};

	if (!take_args(&s) || ret < 0)
		return 0;
	tv = trace_allowed(&tgid);
	if (!tv)
		return 0;
	b = scratch_get();
	if (!b)
		return 0;
	e = &b->open;
	fill_hdr(&e->h, EV_OPEN, tv->tag);
	e->fd = ret;
	e->dirfd = (__s32)s.a[0];
	e->flags = (__u32)s.a[2];
	e->fmode = 0;
	e->ino = 0;
	e->dev = 0;
	e->imode = 0;
	file_info(fd_file(ret), &e->ino, &e->dev, &e->imode, &e->fmode);
	/* A leftover entry on this fd number belongs to a file already gone. */
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	if ((e->imode & S_IFMT_VAL) != S_IFDIR_VAL) {
		k.pid = tgid;
		k.fd = ret;
		fresh.ino = e->ino;
		fresh.dev = e->dev;
		fresh.imode = e->imode;
		fresh.first_ts_ns = e->h.ts_ns;
		fresh.flags = FDIO_SEEN_OPEN;
		if (agg.update(&k, &fresh))
			count_lost(LOST_AGG);
		else if ((__u32)ret > tv->max_fd)
			tv->max_fd = ret;
	}
	e->path_len = read_ustr(e->path, (const void *)s.a[1]);
	emit(e, offsetof(struct open_event, path) + e->path_len, sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
	return stash_args(args->dfd, (__u64)args->filename, args->flags, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return open_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->filename, args->flags, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return open_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
	/* creat() == open(O_CREAT|O_WRONLY|O_TRUNC) */
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->pathname, 01101, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return open_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
	__u64 flags = 0; /* struct open_how starts with __u64 flags (uapi) */

	bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);
	return stash_args(args->dfd, (__u64)args->filename, flags, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return open_exit(args->ret); }

/* ---- I/O aggregation ----------------------------------------------------- */

static __always_inline void agg_io(__s32 fd, long ret, int is_write)
{
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	struct fdagg *a;

	if (!tv || ret < 0)
		return;
	a = agg_get(tv, tgid, fd, 0);
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

static __always_inline int io_exit(long ret, int is_write)
{
	struct stash s;

	if (!take_args(&s))
		return 0;
	agg_io((__s32)s.a[0], ret, is_write);
	return 0;
}

/* Written out one by one: bcc finds TRACEPOINT_PROBE only outside macros. */
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_pread64) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_pread64) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_preadv) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_preadv) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_preadv2) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_preadv2) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return io_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_pwrite64) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_pwrite64) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_pwritev) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_pwritev) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_pwritev2) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_pwritev2) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return io_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return io_exit(args->ret, 1); }

/* Two-fd copies: the bytes were read from one fd and written to the other. */
static __always_inline int copy_exit(long ret)
{
	struct stash s;

	if (!take_args(&s))
		return 0;
	agg_io((__s32)s.a[0], ret, 0);
	agg_io((__s32)s.a[1], ret, 1);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64)
{
	return stash_args(args->in_fd, args->out_fd, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return copy_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_copy_file_range)
{
	return stash_args(args->fd_in, args->fd_out, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_copy_file_range) { return copy_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_splice)
{
	return stash_args(args->fd_in, args->fd_out, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_splice) { return copy_exit(args->ret); }

/* ---- mmap ------------------------------------------------------------------ */

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	if ((args->flags & MAP_ANON_VAL) || (long)args->fd < 0)
		return 0;
	return stash_args(args->fd, args->prot, args->flags, 0, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	struct fdagg *a;

	if (!take_args(&s))
		return 0;
	if ((unsigned long)args->ret >= (unsigned long)-4095)
		return 0;
	tv = trace_allowed(&tgid);
	if (!tv)
		return 0;
	a = agg_get(tv, tgid, (__s32)s.a[0], 0);
	if (!a)
		return 0;
	/* Plain ORs: bcc's default BPF target has no 32-bit atomic OR. Two
	 * threads mmapping one fd at once could lose a bit; counts are unaffected. */
	a->map_prot |= (__u32)s.a[1];
	if (s.a[2] & MAP_SHARED_VAL)
		a->flags |= FDIO_MAP_SHARED;
	return 0;
}

/* ---- close, dup, fcntl ------------------------------------------------------ */

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);

	/* close() releases the fd even when it fails, so flush at entry. */
	if (tv)
		flush_fd(tv, tgid, (__s32)args->fd, FLUSH_CLOSE);
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
	events.ringbuf_submit(e, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_close_range)
{
	__u32 tgid;
	struct traced_val *tv = trace_allowed(&tgid);
	__u32 first = args->fd, last = args->max_fd;

	if (!tv)
		return 0;
	if (args->flags & CLOSE_RANGE_CLOEXEC_VAL) {
		emit_fdop(tv, FDOP_CLOEXEC_RANGE, first, last > 0x7fffffff ? 0x7fffffff : last, 1);
		return 0;
	}
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < PT_FLUSH_FDS; i++) {
		__u32 fd = first + i;
		if (fd > last || fd > tv->max_fd)
			break;
		flush_fd(tv, tgid, fd, FLUSH_CLOSE);
	}
	emit_fdop(tv, FDOP_CLOSE_RANGE, first, last > 0x7fffffff ? 0x7fffffff : last, 0);
	return 0;
}

static __always_inline int dup_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;

	if (!take_args(&s) || ret < 0)
		return 0;
	tv = trace_allowed(&tgid);
	if (!tv)
		return 0;
	/* Whatever the new fd number held before is closed now. */
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	emit_fdop(tv, FDOP_DUP, (__s32)s.a[0], ret, (__u32)s.a[1]);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_dup) { return stash_args(args->fildes, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup) { return dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_dup2) { return stash_args(args->oldfd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { return dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_dup3)
{
	return stash_args(args->oldfd, (args->flags & O_CLOEXEC_VAL) ? 1 : 0, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { return dup_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fcntl)
{
	__u32 cmd = args->cmd;

	if (cmd != F_DUPFD_VAL && cmd != F_DUPFD_CLOEXEC_VAL && cmd != F_SETFD_VAL)
		return 0;
	return stash_args(args->fd, cmd, args->arg, 0, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fcntl)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	long ret = args->ret;

	if (!take_args(&s) || ret < 0)
		return 0;
	tv = trace_allowed(&tgid);
	if (!tv)
		return 0;
	if (s.a[1] == F_SETFD_VAL) {
		emit_fdop(tv, FDOP_SETFD, (__s32)s.a[0], (__s32)s.a[0], (s.a[2] & FD_CLOEXEC_VAL) ? 1 : 0);
		return 0;
	}
	flush_fd(tv, tgid, ret, FLUSH_REPLACED);
	emit_fdop(tv, FDOP_DUP, (__s32)s.a[0], ret, s.a[1] == F_DUPFD_CLOEXEC_VAL);
	return 0;
}

/* ---- cwd ------------------------------------------------------------------- */

static __always_inline int chdir_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct chdir_event *e;

	if (!take_args(&s) || ret != 0)
		return 0;
	tv = trace_allowed(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->chdir;
	fill_hdr(&e->h, EV_CHDIR, tv->tag);
	e->fd = (__s32)s.a[0];
	e->path_len = s.a[1] ? read_ustr(e->path, (const void *)s.a[1]) : 0;
	emit(e, offsetof(struct chdir_event, path) + e->path_len, sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_chdir)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->filename, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chdir) { return chdir_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_fchdir) { return stash_args(args->fd, 0, 0, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_fchdir) { return chdir_exit(args->ret); }

/* ---- rename ----------------------------------------------------------------- */

static __always_inline int rename_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct rename_event *e;

	if (!take_args(&s) || ret != 0)
		return 0;
	tv = trace_allowed(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->rename;
	fill_hdr(&e->h, EV_RENAME, tv->tag);
	e->olddirfd = (__s32)s.a[0];
	e->newdirfd = (__s32)s.a[2];
	e->flags = (__u32)s.a[4];
	e->_pad = 0;
	e->old_len = read_ustr(e->oldpath, (const void *)s.a[1]);
	e->new_len = read_ustr(e->newpath, (const void *)s.a[3]);
	emit(e, offsetof(struct rename_event, newpath) + e->new_len, sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->oldname, (__u64)AT_FDCWD_VAL,
			  (__u64)args->newname, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return rename_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
	return stash_args(args->olddfd, (__u64)args->oldname, args->newdfd, (__u64)args->newname, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return rename_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
	return stash_args(args->olddfd, (__u64)args->oldname, args->newdfd, (__u64)args->newname,
			  args->flags, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return rename_exit(args->ret); }

/* ---- unlink, rmdir -------------------------------------------------------------- */

static __always_inline int unlink_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct unlink_event *e;

	if (!take_args(&s) || ret != 0)
		return 0;
	tv = trace_allowed(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->unlink;
	fill_hdr(&e->h, EV_UNLINK, tv->tag);
	e->dirfd = (__s32)s.a[0];
	e->flags = (__u32)s.a[2];
	e->_pad = 0;
	e->path_len = read_ustr(e->path, (const void *)s.a[1]);
	emit(e, offsetof(struct unlink_event, path) + e->path_len, sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->pathname, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return unlink_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
	return stash_args(args->dfd, (__u64)args->pathname, args->flag, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return unlink_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->pathname, 0x200 /* AT_REMOVEDIR */, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) { return unlink_exit(args->ret); }

/* ---- truncate ---------------------------------------------------------------------- */

static __always_inline int truncate_exit(long ret)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct truncate_event *e;

	if (!take_args(&s) || ret != 0)
		return 0;
	tv = trace_allowed(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->truncate;
	fill_hdr(&e->h, EV_TRUNCATE, tv->tag);
	e->fd = (__s32)s.a[0];
	e->length = (__s64)s.a[2];
	e->path_len = s.a[1] ? read_ustr(e->path, (const void *)s.a[1]) : 0;
	emit(e, offsetof(struct truncate_event, path) + e->path_len, sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
	return stash_args((__u64)AT_FDCWD_VAL, (__u64)args->path, args->length, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_truncate) { return truncate_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_ftruncate) { return stash_args(args->fd, 0, args->length, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_ftruncate) { return truncate_exit(args->ret); }
