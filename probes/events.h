/* events.h: the one contract between provtrace's probes and userspace.
 *
 * Every record on the ring buffer starts with struct event_hdr. Fixed-width
 * fields only, explicit padding, no pointers: tracer/capture/layouts.py
 * declares the same layouts and tests/unit/test_layouts.py compiles this
 * header with gcc and checks every size and offset against Python.
 *
 * Records whose tail is a string are emitted truncated to the string's
 * length (size = offsetof(tail) + len), so a 12-byte path costs 12 bytes.
 */
#ifndef PROVTRACE_EVENTS_H
#define PROVTRACE_EVENTS_H

#define PT_PATH_MAX 4096     /* PATH_MAX, including the NUL */
#define PT_ARGV_MAX 4096     /* argv bytes kept per exec, NUL-separated */
#define PT_SOCKADDR_MAX 128  /* sizeof(struct sockaddr_storage) */
#define PT_FLUSH_FDS 64      /* fds swept in-kernel at exec/exit; the rest by userspace */

enum pt_event_type {
	EV_FORK = 1,      /* fork/vfork/clone: a new process or thread */
	EV_EXEC = 2,      /* a successful execve/execveat (sched_process_exec) */
	EV_EXEC_ARGV = 3, /* argv of an execve/execveat attempt */
	EV_EXIT = 4,      /* the last thread of a process exited */
	EV_OPEN = 5,      /* open/openat/openat2/creat succeeded */
	EV_FDIO = 6,      /* aggregated I/O on one fd, flushed (see pt_flush_reason) */
	EV_FDOP = 7,      /* dup*, fcntl dup/cloexec, close_range */
	EV_CHDIR = 8,     /* chdir/fchdir succeeded */
	EV_RENAME = 9,    /* rename/renameat/renameat2 succeeded */
	EV_UNLINK = 10,   /* unlink/unlinkat/rmdir succeeded */
	EV_TRUNCATE = 11, /* truncate/ftruncate succeeded */
	EV_NET = 12,      /* connect/accept/bind */
	/* issue 13, reads: EV_OPEN also carries failed opens (fd < 0, see open_event) */
	EV_IOURING = 23,  /* io_uring_setup succeeded: the ring's file I/O is not traced */
	/* links and directories (files.bpf.c, "links, directories") */
	EV_LINK = 20,     /* link/linkat/symlink/symlinkat succeeded */
	EV_MKDIR = 21,    /* mkdir/mkdirat succeeded (rmdir is EV_UNLINK + AT_REMOVEDIR) */
	EV_RESOLVED = 22, /* an open reached a file under another name: sent just before its EV_OPEN */
};

enum pt_flush_reason {
	FLUSH_CLOSE = 1,    /* close(fd): the fd is gone */
	FLUSH_REPLACED = 2, /* fd number reused by open/dup2/dup3: the old file is gone */
	FLUSH_EXIT = 3,     /* process exit */
	FLUSH_EXEC = 4,     /* exec: counts up to here belong to the old image; fd may live on */
	FLUSH_SWEEP = 5,    /* userspace swept a leftover entry at the end of tracing */
	FLUSH_FOLDED = 6,   /* repeated opens folded into one record: fd = how many (probes/common.h, fold) */
};

enum pt_fdop {
	FDOP_DUP = 1,         /* newfd = dup(oldfd), dup2, dup3, fcntl(F_DUPFD*) */
	FDOP_SETFD = 2,       /* fcntl(fd, F_SETFD): cloexec set or cleared */
	FDOP_CLOSE_RANGE = 3, /* close_range(oldfd, newfd): fds closed */
	FDOP_CLOEXEC_RANGE = 4, /* close_range(..., CLOSE_RANGE_CLOEXEC) */
};

enum pt_net_op { NET_CONNECT = 1, NET_ACCEPT = 2, NET_BIND = 3 };

/* fdio flags */
#define FDIO_SEEN_OPEN 0x1   /* the entry was created by an open we saw */
#define FDIO_MAP_SHARED 0x2  /* mmap(MAP_SHARED) on this fd */
#define FDIO_FOLDED 0x4      /* I/O through opens that sent no EV_OPEN: name the file by (dev, ino) */

enum pt_lost_reason {
	LOST_RINGBUF = 0,  /* ring buffer full: an event was dropped */
	LOST_AGG = 1,      /* fd aggregation map full: I/O counts dropped */
	LOST_COMPAT = 2,   /* a 32-bit (ia32) syscall of a traced process: not traced */
	LOST_TRACED = 3,   /* traced-pid map full: a child was not followed */
	LOST_NREASONS = 4,
};

struct event_hdr {
	__u32 type;   /* enum pt_event_type */
	__u32 pid;    /* tgid: the process */
	__u32 tid;    /* the thread */
	__u32 tag;    /* which traced tree (value in the traced map) */
	__u64 ts_ns;  /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

struct fork_event {
	struct event_hdr h;   /* current = the parent */
	__u32 child_pid;      /* child's tgid */
	__u32 child_tid;
	__u32 uid;
	__u32 is_thread;      /* 1: CLONE_THREAD, the child folds into the parent */
};

/* exec_event.flags: the new image gained privileges (setuid, setgid, file
 * capabilities) in a non-root run, or runs below one that did; from here on
 * the process's syscalls are not traced (common.h, TV_PRIVILEGED). */
#define EXEC_PRIVILEGED 1

struct exec_event {
	struct event_hdr h;
	__u32 old_tid;        /* the thread that called exec */
	__u32 uid;
	__u32 filename_len;   /* bytes including NUL */
	__u32 flags;          /* EXEC_PRIVILEGED */
	char filename[PT_PATH_MAX]; /* as passed to exec: may be relative */
};

struct argv_event {
	struct event_hdr h;
	__u32 _reserved;      /* 0 */
	__u32 len;            /* bytes used in args: NUL-terminated arguments, the last maybe cut */
	__u32 truncated;      /* 1 when argv was longer than PT_ARGV_MAX (or unreadable) */
	__u32 _pad;
	char args[PT_ARGV_MAX];
};

struct exit_event {
	struct event_hdr h;
	__s32 exit_code;      /* wait status: (code << 8) | signal */
	__u32 max_fd;         /* highest fd with I/O counts; above PT_FLUSH_FDS userspace sweeps */
	/* The kernel's own accounting of the whole process, read as its last
	 * thread exits: the exiting thread's plus what signal_struct holds for
	 * threads already reaped (what getrusage(RUSAGE_SELF) would sum). */
	__u64 utime_ns;       /* user CPU */
	__u64 stime_ns;       /* system CPU */
	__u64 maxrss_pages;   /* peak resident set of the last image, in pages */
	__u64 rchar;          /* ioac.rchar: bytes read by read-type syscalls (any fd) */
	__u64 wchar;          /* ioac.wchar: bytes written by write-type syscalls */
};

/* fd < 0: the open failed with -fd (ENOENT or EACCES), an attempted access.
 * Sent once per (process, path, errno) and again at most every
 * PT_FAILED_REPEAT_NS (files.bpf.c); ino, dev, imode and fmode are 0. */
struct open_event {
	struct event_hdr h;
	__s32 fd;
	__s32 dirfd;          /* AT_FDCWD (-100) for open/creat */
	__u32 flags;          /* open flags as requested */
	__u32 fmode;          /* file->f_mode: calibrated userspace bit says "created" */
	__u64 ino;
	__u32 dev;
	__u32 imode;          /* inode->i_mode: file type */
	__u32 path_len;       /* bytes including NUL */
	__u32 _pad;
	char path[PT_PATH_MAX];
};

struct fdio_event {
	struct event_hdr h;
	__s32 fd;
	__u32 reason;         /* enum pt_flush_reason */
	__u64 bytes_read;
	__u64 bytes_written;
	__u32 nreads;
	__u32 nwrites;
	__u64 ino;
	__u32 dev;
	__u32 imode;
	__u32 map_prot;       /* OR of mmap PROT_* on this fd */
	__u32 flags;          /* FDIO_* */
	__u64 first_ts_ns;
};

struct fdop_event {
	struct event_hdr h;
	__u32 op;             /* enum pt_fdop */
	__s32 oldfd;          /* close_range: first */
	__s32 newfd;          /* close_range: last (clamped to INT_MAX) */
	__u32 cloexec;
};

struct chdir_event {
	struct event_hdr h;
	__s32 fd;             /* fchdir's fd, or AT_FDCWD for chdir(path) */
	__u32 path_len;
	char path[PT_PATH_MAX];
};

struct rename_event {
	struct event_hdr h;
	__s32 olddirfd;
	__s32 newdirfd;
	__u32 flags;          /* renameat2 RENAME_* */
	__u32 old_len;
	__u32 new_len;
	__u32 _pad;
	char oldpath[PT_PATH_MAX];
	char newpath[PT_PATH_MAX];
};

struct unlink_event {
	struct event_hdr h;
	__s32 dirfd;
	__u32 flags;          /* AT_REMOVEDIR for rmdir */
	__u32 path_len;
	__u32 _pad;
	char path[PT_PATH_MAX];
};

struct truncate_event {
	struct event_hdr h;
	__s32 fd;             /* ftruncate's fd, or AT_FDCWD for truncate(path) */
	__u32 path_len;
	__s64 length;
	char path[PT_PATH_MAX];
};

struct net_event {
	struct event_hdr h;
	__u32 op;             /* enum pt_net_op */
	__s32 fd;             /* the socket (listening socket for accept) */
	__s32 ret;            /* accept: new fd; connect: 0 or -EINPROGRESS */
	__u32 addr_len;
	__u8 addr[PT_SOCKADDR_MAX]; /* raw struct sockaddr_* */
};

struct iouring_event {
	struct event_hdr h;
	__s32 fd;             /* the ring's fd */
	__u32 flags;          /* IORING_SETUP_* as requested */
};

/* ---- links and directories ---- */

enum pt_link_op { LINK_HARD = 1, LINK_SYMBOLIC = 2 };

struct link_event {
	struct event_hdr h;
	__u32 op;             /* enum pt_link_op */
	__s32 olddirfd;       /* linkat's; AT_FDCWD otherwise (a symlink's target is text) */
	__s32 newdirfd;
	__u32 flags;          /* linkat AT_* (AT_EMPTY_PATH, AT_SYMLINK_FOLLOW) */
	__u32 old_len;        /* link: the existing name; symlink: the target as written */
	__u32 new_len;        /* the new name */
	char oldpath[PT_PATH_MAX];
	char newpath[PT_PATH_MAX];
};

struct mkdir_event {
	struct event_hdr h;
	__s32 dirfd;          /* mkdirat's; AT_FDCWD for mkdir */
	__u32 mode;
	__u32 path_len;
	__u32 _pad;
	char path[PT_PATH_MAX];
};

#define PT_RESOLVE_DEPTH 64  /* path components walked up from an opened file */
#define PT_NAME_MAX 256      /* NAME_MAX, including the NUL */

/* The path an open reached, from the kernel's dentries: the names from the
 * file up to the process's root, leaf first, each NUL-terminated (userspace
 * reverses them). Sent only when the file's own name is not the last
 * component of the path the program gave: it went through a symlink
 * (or a magic link such as /proc/self/fd/N). */
struct resolved_event {
	struct event_hdr h;
	__s32 fd;
	__u32 len;            /* bytes used in names */
	__u32 truncated;      /* 1: deeper than PT_RESOLVE_DEPTH or longer than PT_PATH_MAX */
	__u32 _pad;
	char names[PT_PATH_MAX + PT_NAME_MAX];
};

#endif /* PROVTRACE_EVENTS_H */
