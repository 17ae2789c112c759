/* net.bpf.c: sockets.
 *
 * Hooks:  sysexit_connect, sysexit_bind, sysexit_accept (accept, accept4):
 *         syscall programs tail-called at sys_exit (dispatch.bpf.c)
 * Emits:  EV_NET with the raw sockaddr; userspace decodes AF_INET, AF_INET6
 *         and AF_UNIX. Byte counts on sockets come from the I/O aggregation
 *         in files.bpf.c.
 */
#include "common.h"

#define EINPROGRESS_VAL 115

/* connect(fd, addr, addrlen), bind(fd, addr, addrlen),
 * accept(fd, addr, addrlen_ptr), accept4(fd, addr, addrlen_ptr, flags) */
static __always_inline int net_exit(struct bpf_raw_tracepoint_args *ctx, __u32 op)
{
	long ret = (long)ctx->args[1];
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct net_event *e;
	__u64 addr, alen;
	__u32 len = 0;

	if (ret < 0 && !(op == NET_CONNECT && ret == -EINPROGRESS_VAL))
		return 0;
	tv = sys_traced(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->net;
	fill_hdr(&e->h, EV_NET, tv->tag);
	e->op = op;
	e->fd = (__s32)sys_arg(ctx, SYS_ARG0);
	e->ret = ret;
	addr = sys_arg(ctx, SYS_ARG1);
	alen = sys_arg(ctx, SYS_ARG2);
	if (op == NET_ACCEPT) {
		/* accept writes the peer's length through a user pointer */
		if (alen)
			bpf_probe_read_user(&len, sizeof(len), (void *)alen);
	} else {
		len = (__u32)alen;
	}
	if (len > PT_SOCKADDR_MAX)
		len = PT_SOCKADDR_MAX;
	e->addr_len = 0;
	if (addr && len) {
		__u64 n = len;

		asm volatile("" : "+r"(n)); /* keep the mask below (see emit) */
		n &= PT_SOCKADDR_MAX * 2 - 1;
		if (n > PT_SOCKADDR_MAX)
			n = PT_SOCKADDR_MAX;
		if (!bpf_probe_read_user(e->addr, n, (void *)addr))
			e->addr_len = n;
	}
	emit(e, sizeof(*e), sizeof(*e));
	return 0;
}

int sysexit_connect(struct bpf_raw_tracepoint_args *ctx) { return net_exit(ctx, NET_CONNECT); }
int sysexit_bind(struct bpf_raw_tracepoint_args *ctx) { return net_exit(ctx, NET_BIND); }
int sysexit_accept(struct bpf_raw_tracepoint_args *ctx) { return net_exit(ctx, NET_ACCEPT); }
