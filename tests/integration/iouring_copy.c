/* iouring_copy SRC DST: copy a file (up to 64 KiB) with io_uring alone.
 *
 * The open, read, write and close of both files are submitted as
 * IORING_OP_OPENAT, _READ, _WRITE and _CLOSE: none of them is a syscall the
 * tracer sees. Raw syscalls and the uapi header only (no liburing here).
 * Exit 0 when DST holds SRC's bytes; 2 when the kernel refuses io_uring.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static int ring_init(struct ring *r)
{
	struct io_uring_params p;
	void *sq, *cq;

	memset(&p, 0, sizeof(p));
	r->fd = syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0)
		return -1;
	sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		return -1;
	r->sq_tail = sq + p.sq_off.tail;
	r->sq_mask = sq + p.sq_off.ring_mask;
	r->sq_array = sq + p.sq_off.array;
	r->cq_head = cq + p.cq_off.head;
	r->cq_tail = cq + p.cq_off.tail;
	r->cq_mask = cq + p.cq_off.ring_mask;
	r->cqes = cq + p.cq_off.cqes;
	return 0;
}

/* Submit one prepared sqe and wait for its completion; its result. */
static int submit_one(struct ring *r, struct io_uring_sqe *sqe)
{
	unsigned tail = *r->sq_tail, head;
	unsigned idx = tail & *r->sq_mask;
	int res;

	r->sqes[idx] = *sqe;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, 0, 0) < 0)
		return -1;
	head = __atomic_load_n(r->cq_head, __ATOMIC_ACQUIRE);
	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
		return -1;
	res = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static int op(struct ring *r, int opcode, int fd, const void *addr, unsigned len, int flags)
{
	struct io_uring_sqe sqe;

	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = opcode;
	sqe.fd = fd;
	sqe.addr = (unsigned long)addr;
	sqe.len = len;
	sqe.open_flags = flags;
	if (opcode == IORING_OP_OPENAT)
		sqe.len = 0644; /* mode */
	return submit_one(r, &sqe);
}

int main(int argc, char **argv)
{
	static char buf[65536];
	struct ring r;
	int in, out, n, w;

	if (argc != 3) {
		fprintf(stderr, "usage: iouring_copy SRC DST\n");
		return 1;
	}
	if (ring_init(&r) < 0) {
		perror("io_uring_setup");
		return 2;
	}
	in = op(&r, IORING_OP_OPENAT, AT_FDCWD, argv[1], 0, O_RDONLY);
	out = op(&r, IORING_OP_OPENAT, AT_FDCWD, argv[2], 0, O_WRONLY | O_CREAT | O_TRUNC);
	if (in < 0 || out < 0) {
		fprintf(stderr, "openat through io_uring failed: %d %d\n", in, out);
		return 1;
	}
	n = op(&r, IORING_OP_READ, in, buf, sizeof(buf), 0);
	w = n < 0 ? -1 : op(&r, IORING_OP_WRITE, out, buf, n, 0);
	op(&r, IORING_OP_CLOSE, in, 0, 0, 0);
	op(&r, IORING_OP_CLOSE, out, 0, 0, 0);
	if (n < 0 || w != n) {
		fprintf(stderr, "read %d, wrote %d\n", n, w);
		return 1;
	}
	printf("copied %d bytes\n", n);
	return 0;
}
