/* net.bpf.c: sockets.
 *
 * Hooks:  connect, bind, accept, accept4 (syscall tracepoints)
 * Emits:  EV_NET with the raw sockaddr; userspace decodes AF_INET, AF_INET6
 *         and AF_UNIX. Byte counts on sockets come from the I/O aggregation
 *         in files.bpf.c.
 */
#include "common.h"

#define EINPROGRESS_VAL 115

static __always_inline int net_exit(long ret, __u32 op)
{
	struct stash s;
	__u32 tgid;
	struct traced_val *tv;
	union big_event *b;
	struct net_event *e;
	__u32 len = 0;

	if (!take_args(&s))
		return 0;
	if (ret < 0 && !(op == NET_CONNECT && ret == -EINPROGRESS_VAL))
		return 0;
	tv = trace_allowed(&tgid);
	b = scratch_get();
	if (!tv || !b)
		return 0;
	e = &b->net;
	fill_hdr(&e->h, EV_NET, tv->tag);
	e->op = op;
	e->fd = (__s32)s.a[0];
	e->ret = ret;
	if (op == NET_ACCEPT) {
		/* accept writes the peer's length through a user pointer */
		if (s.a[2])
			bpf_probe_read_user(&len, sizeof(len), (void *)s.a[2]);
	} else {
		len = (__u32)s.a[2];
	}
	if (len > PT_SOCKADDR_MAX)
		len = PT_SOCKADDR_MAX;
	e->addr_len = 0;
	if (s.a[1] && len) {
		__u64 n = len;

		asm volatile("" : "+r"(n)); /* keep the mask below (see emit) */
		n &= PT_SOCKADDR_MAX * 2 - 1;
		if (n > PT_SOCKADDR_MAX)
			n = PT_SOCKADDR_MAX;
		if (!bpf_probe_read_user(e->addr, n, (void *)s.a[1]))
			e->addr_len = n;
	}
	emit(e, sizeof(*e), sizeof(*e));
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	return stash_args(args->fd, (__u64)args->uservaddr, args->addrlen, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return net_exit(args->ret, NET_CONNECT); }

TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
	return stash_args(args->fd, (__u64)args->umyaddr, args->addrlen, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_bind) { return net_exit(args->ret, NET_BIND); }

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
	return stash_args(args->fd, (__u64)args->upeer_sockaddr, (__u64)args->upeer_addrlen, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return net_exit(args->ret, NET_ACCEPT); }

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
	return stash_args(args->fd, (__u64)args->upeer_sockaddr, (__u64)args->upeer_addrlen, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return net_exit(args->ret, NET_ACCEPT); }
