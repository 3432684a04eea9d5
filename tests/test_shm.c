/* The arena and the control socket: create and attach, every corrupted
 * header field refused, seals that stop a client from resizing the memfd,
 * descriptor checks, the memfd passed over SOCK_SEQPACKET with SCM_RIGHTS
 * (and unwanted fds closed, never leaked), SO_PEERCRED, and listening on
 * a path with a stale or live socket in the way. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "proto.h"
#include "shm.h"
#include "sock.h"

static const struct ipc_arena_params params = {
	.sq_entries = 64, .cq_entries = 64, .slot_count = 4,
	.max_tokens = 8, .n_embd = 96, .max_route_k = 4,
	.client_pid = 1234,
};

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void create_attach(void **s)
{
	struct ipc_arena m, c;
	struct ipc_desc d = { .id = 7, .layer = 3, .n_tokens = 2, .slot = 1 };
	struct ipc_cqe e = { .id = 7, .status = 0, .slot = 1, .k_used = 16 };
	struct ipc_desc dout;
	struct ipc_cqe eout;

	assert_int_equal(ipc_arena_create(&m, &params), 0);
	assert_int_equal(ipc_arena_attach(&c, dup(m.fd)), 0);
	assert_memory_equal(&m.lay, &c.lay, sizeof(m.lay));
	assert_int_equal(c.lay.client_pid, 1234);
	assert_int_equal(c.lay.moed_pid, getpid());
	assert_int_equal(c.size, m.lay.total_size);
	assert_int_equal(c.lay.slot_off % 4096, 0);
	assert_int_equal(c.lay.slot_size % 4096, 0);
	/* The client's slot is moed's slot. */
	for (uint32_t i = 0; i < params.slot_count; i++) {
		ipc_slot_in(&c, i)[params.max_tokens * params.n_embd - 1] =
			(float)i;
		ipc_slot_route(&c, i)[params.max_tokens * 4 - 1].id = i;
	}
	for (uint32_t i = 0; i < params.slot_count; i++) {
		assert_true(ipc_slot_in(&m, i)[params.max_tokens * params.n_embd
					       - 1] == (float)i);
		assert_int_equal(ipc_slot_route(&m, i)[params.max_tokens * 4
						       - 1].id, i);
		assert_true((char *)ipc_slot_out(&m, i) -
				    (char *)ipc_slot_in(&m, i) >=
			    (ptrdiff_t)(params.max_tokens * params.n_embd * 4));
	}
	assert_null(ipc_slot_in(&c, params.slot_count));
	assert_null(ipc_slot_out(&m, params.slot_count));
	/* One request round trip over the two rings. */
	assert_int_equal(ipc_ring_push(&c.sq, &d), 0);
	assert_int_equal(ipc_bell_ring(c.sq_bell), 0);
	assert_int_equal(ipc_ring_pop(&m.sq, &dout), 0);
	assert_memory_equal(&d, &dout, sizeof(d));
	assert_int_equal(ipc_desc_check(&dout, &m), 0);
	assert_int_equal(ipc_ring_push(&m.cq, &e), 0);
	assert_int_equal(ipc_bell_wait(c.cq_bell, ipc_ring_ready, &c.cq, 10,
				       1000000), 0);
	assert_int_equal(ipc_ring_pop(&c.cq, &eout), 0);
	assert_memory_equal(&e, &eout, sizeof(e));
	/* Roles are fixed per side. */
	assert_int_equal(ipc_ring_push(&m.sq, &d), -EINVAL);
	assert_int_equal(ipc_ring_push(&c.cq, &e), -EINVAL);
	ipc_arena_close(&c);
	ipc_arena_close(&m);
	ipc_arena_close(&m); /* twice is fine */
}

/* Rings of one and two entries (found by fuzz_desc: a one-entry
 * submission ring left the completion ring off its 128-byte alignment,
 * and formatting it was undefined behaviour): every size lays out, the
 * rings aligned, and a request goes round. */
static void small_rings(void **s)
{
	for (uint32_t sq = 1; sq <= 4; sq *= 2) {
		struct ipc_arena_params p = params;
		struct ipc_desc d = { .id = sq, .n_tokens = 1 }, dout;
		struct ipc_arena m, c;

		p.sq_entries = sq;
		p.cq_entries = 1;
		assert_int_equal(ipc_arena_create(&m, &p), 0);
		assert_int_equal(m.lay.cq_off % IPC_RING_ALIGN, 0);
		assert_int_equal(ipc_arena_attach(&c, dup(m.fd)), 0);
		assert_int_equal(ipc_ring_push(&c.sq, &d), 0);
		assert_int_equal(ipc_ring_pop(&m.sq, &dout), 0);
		assert_int_equal(dout.id, sq);
		ipc_arena_close(&c);
		ipc_arena_close(&m);
	}
}

static void create_rejects(void **s)
{
	struct ipc_arena a;
	struct ipc_arena_params p;

#define BAD(field, value)                                                 \
	do {                                                              \
		p = params;                                               \
		p.field = value;                                          \
		assert_int_equal(ipc_arena_create(&a, &p), -EINVAL);      \
		assert_int_equal(a.fd, -1);                               \
		ipc_arena_close(&a);                                      \
	} while (0)
	BAD(sq_entries, 48);
	BAD(cq_entries, 0);
	BAD(sq_entries, IPC_RING_MAX_ENTRIES * 2);
	BAD(slot_count, 0);
	BAD(slot_count, IPC_ARENA_MAX_SLOTS + 1);
	BAD(max_tokens, 0);
	BAD(n_embd, 0);
	BAD(max_route_k, IPC_ROUTE_MAX_K + 1);
	BAD(n_embd, UINT32_MAX); /* 8 * 4 G floats * 4 slots: too big */
#undef BAD
}

/* What a header mutation does to an attach. */
struct corruption {
	const char *what;
	void (*mutate)(struct ipc_arena_hdr *h);
	int want;
};

#define MUT(name, stmt)                                         \
	static void name(struct ipc_arena_hdr *h)               \
	{                                                       \
		stmt;                                           \
	}
MUT(magic, h->magic ^= 1)
MUT(version, h->version = IPC_ARENA_VERSION + 1)
MUT(hdr_size, h->hdr_size = 128)
MUT(size_big, h->total_size += 4096)
MUT(size_small, h->total_size -= 1)
MUT(sq_outside, h->sq_off = h->total_size)
MUT(sq_tail_out, h->sq_off = h->total_size - IPC_RING_ALIGN)
MUT(sq_misaligned, h->sq_off += 64)
MUT(sq_wrap, h->sq_off = UINT64_MAX - IPC_RING_ALIGN + 1)
MUT(cq_on_sq, h->cq_off = h->sq_off)
MUT(sq_on_header, h->sq_off = 0)
MUT(sq_entries_odd, h->sq_entries = 48)
MUT(sq_entries_huge, h->sq_entries = 1u << 20)
MUT(cq_entries_zero, h->cq_entries = 0)
MUT(sq_esize, h->sq_esize = 32)
MUT(cq_esize, h->cq_esize = 128)
MUT(bell_outside, h->cq_bell_off = h->total_size)
MUT(bell_on_header, h->sq_bell_off = 128)
MUT(bell_on_ring, h->cq_bell_off = h->sq_off)
MUT(slots_outside, h->slot_off = h->total_size - h->slot_size)
MUT(slot_count_more, h->slot_count += 1)
MUT(slot_count_zero, h->slot_count = 0)
MUT(slot_size_small, h->slot_size = 4096)
MUT(slot_size_huge, h->slot_size = UINT64_MAX / 2)
MUT(slots_on_ring, h->slot_off = h->cq_off)
MUT(n_embd_more, h->n_embd *= 4)
MUT(max_tokens_huge, h->max_tokens = UINT32_MAX)
MUT(out_on_in, h->out_off = h->in_off)
MUT(route_past_slot, h->route_off = h->slot_size)
MUT(route_k_huge, h->max_route_k = 100000)
MUT(in_misaligned, h->in_off = 4)
#undef MUT

static const struct corruption corruptions[] = {
	{ "magic", magic, -MOE_EPROTO },
	{ "version", version, -MOE_EVERSION },
	{ "hdr_size", hdr_size, -MOE_EPROTO },
	{ "total_size bigger than file", size_big, -MOE_EPROTO },
	{ "total_size smaller than file", size_small, -MOE_EPROTO },
	{ "sq past the end", sq_outside, -MOE_EPROTO },
	{ "sq running past the end", sq_tail_out, -MOE_EPROTO },
	{ "sq misaligned", sq_misaligned, -MOE_EPROTO },
	{ "sq offset wrapping", sq_wrap, -MOE_EPROTO },
	{ "cq on the sq", cq_on_sq, -MOE_EPROTO },
	{ "sq on the header", sq_on_header, -MOE_EPROTO },
	{ "sq entries not a power of two", sq_entries_odd, -MOE_EPROTO },
	{ "sq entries huge", sq_entries_huge, -MOE_EPROTO },
	{ "cq entries zero", cq_entries_zero, -MOE_EPROTO },
	{ "sq entry size", sq_esize, -MOE_EPROTO },
	{ "cq entry size", cq_esize, -MOE_EPROTO },
	{ "bell past the end", bell_outside, -MOE_EPROTO },
	{ "bell on the header", bell_on_header, -MOE_EPROTO },
	{ "bell on a ring", bell_on_ring, -MOE_EPROTO },
	{ "slots past the end", slots_outside, -MOE_EPROTO },
	{ "one slot too many", slot_count_more, -MOE_EPROTO },
	{ "no slots", slot_count_zero, -MOE_EPROTO },
	{ "slot too small for its rows", slot_size_small, -MOE_EPROTO },
	{ "slot size overflowing", slot_size_huge, -MOE_EPROTO },
	{ "slots on the rings", slots_on_ring, -MOE_EPROTO },
	{ "rows wider than the slot", n_embd_more, -MOE_EPROTO },
	{ "max_tokens huge", max_tokens_huge, -MOE_EPROTO },
	{ "output on the input", out_on_in, -MOE_EPROTO },
	{ "routing past the slot", route_past_slot, -MOE_EPROTO },
	{ "routing width huge", route_k_huge, -MOE_EPROTO },
	{ "input misaligned", in_misaligned, -MOE_EPROTO },
};

/* Each field corrupted in moed's mapping, one at a time: the client's
 * attach refuses it, maps nothing, and leaves it its fd. */
static void corrupt_header(void **s)
{
	struct ipc_arena m, c;
	struct ipc_arena_hdr *h, good;
	int fds = -1;

	assert_int_equal(ipc_arena_create(&m, &params), 0);
	h = (struct ipc_arena_hdr *)m.base;
	good = *h;
	for (size_t i = 0; i < sizeof(corruptions) / sizeof(corruptions[0]);
	     i++) {
		const struct corruption *k = &corruptions[i];
		int fd = dup(m.fd), rc;

		if (fds < 0)
			fds = open_fds();
		k->mutate(h);
		rc = ipc_arena_attach(&c, fd);
		if (rc != k->want)
			fail_msg("%s: got %d, want %d", k->what, rc, k->want);
		assert_null(c.base);
		assert_true(fcntl(fd, F_GETFD) >= 0); /* still the caller's */
		close(fd);
		assert_int_equal(open_fds(), fds - 1);
		*h = good;
	}
	/* And restored, it attaches. */
	assert_int_equal(ipc_arena_attach(&c, dup(m.fd)), 0);
	ipc_arena_close(&c);
	ipc_arena_close(&m);
}

/* Files that are not arenas at all. */
static void not_an_arena(void **s)
{
	struct ipc_arena c;
	int fd = memfd_create("t", MFD_CLOEXEC);
	int pipefd[2];

	assert_true(fd >= 0);
	assert_int_equal(ipc_arena_attach(&c, fd), -MOE_EPROTO); /* empty */
	assert_int_equal(ftruncate(fd, 100), 0);
	assert_int_equal(ipc_arena_attach(&c, fd), -MOE_EPROTO); /* short */
	assert_int_equal(ftruncate(fd, 65536), 0);
	assert_int_equal(ipc_arena_attach(&c, fd), -MOE_EPROTO); /* zeroes */
	close(fd);
	assert_int_equal(pipe(pipefd), 0);
	assert_true(ipc_arena_attach(&c, pipefd[0]) < 0); /* no mmap */
	close(pipefd[0]);
	close(pipefd[1]);
}

/* The client cannot resize its arena, nor lift the seals; it can still
 * write (moed needs its inputs). */
static void seals(void **s)
{
	struct ipc_arena m, c;
	int fd, seals;

	assert_int_equal(ipc_arena_create(&m, &params), 0);
	assert_int_equal(ipc_arena_check_seals(m.fd), 0);
	seals = fcntl(m.fd, F_GET_SEALS);
	assert_int_equal(seals & IPC_ARENA_SEALS, IPC_ARENA_SEALS);
	assert_int_equal(seals & F_SEAL_WRITE, 0);
	assert_int_equal(ipc_arena_attach(&c, dup(m.fd)), 0);
	errno = 0;
	assert_int_equal(ftruncate(c.fd, 4096), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(ftruncate(c.fd, (off_t)c.size * 2), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fallocate(c.fd, 0, 0, (off_t)c.size * 2), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fcntl(c.fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
	assert_int_equal(errno, EPERM);
	ipc_slot_in(&c, 0)[0] = 1.5f;
	assert_true(ipc_slot_in(&m, 0)[0] == 1.5f);
	ipc_arena_close(&c);
	ipc_arena_close(&m);
	/* A memfd without the seals is caught. */
	fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ipc_arena_check_seals(fd), -EPERM);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL), 0);
	assert_int_equal(ipc_arena_check_seals(fd), -EPERM); /* no GROW */
	close(fd);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_int_equal(ipc_arena_check_seals(fd), -EINVAL);
	close(fd);
}

static void desc_checks(void **s)
{
	struct ipc_arena m;
	const struct ipc_desc ok = { .id = 1, .layer = 0, .n_tokens = 8,
				     .slot = 3, .top_p = 0.9f, .min_k = 1,
				     .max_k = 4 };
	struct ipc_desc d;

	assert_int_equal(ipc_arena_create(&m, &params), 0);
	assert_int_equal(ipc_desc_check(&ok, &m), 0);
	d = ok;
	d.flags = IPC_DESC_ROUTED;
	d.route_k = 4;
	assert_int_equal(ipc_desc_check(&d, &m), 0);
#define BAD(stmt)                                                   \
	do {                                                        \
		d = ok;                                             \
		stmt;                                               \
		assert_int_equal(ipc_desc_check(&d, &m), -MOE_EDESC); \
	} while (0)
	BAD(d.slot = params.slot_count);
	BAD(d.slot = UINT32_MAX);
	BAD(d.n_tokens = 0);
	BAD(d.n_tokens = params.max_tokens + 1);
	BAD(d.flags = 0x2);
	BAD(d.reserved[19] = 1);
	BAD(d.top_p = NAN);
	BAD(d.top_p = INFINITY);
	BAD(d.top_p = -0.1f);
	BAD(d.top_p = 1.5f);
	BAD((d.min_k = 4, d.max_k = 2));
	BAD(d.route_k = 1); /* routing width without routing */
	BAD((d.flags = IPC_DESC_ROUTED, d.route_k = 0));
	BAD((d.flags = IPC_DESC_ROUTED, d.route_k = params.max_route_k + 1));
#undef BAD
	ipc_arena_close(&m);
}

static void msg_checks(void **s)
{
	struct ipc_hello h;

	memset(&h, 0, sizeof(h));
	ipc_msg_init(&h.h, IPC_MSG_HELLO, sizeof(h), 0);
	assert_int_equal(ipc_msg_check(&h, sizeof(h), sizeof(h)),
			 IPC_MSG_HELLO);
	assert_int_equal(ipc_msg_check(&h, sizeof(h) - 1, 0), -MOE_EPROTO);
	assert_int_equal(ipc_msg_check(&h, 8, 0), -MOE_EPROTO);
	assert_int_equal(ipc_msg_check(&h, sizeof(h), sizeof(h) + 1),
			 -MOE_EPROTO);
	h.h.magic++;
	assert_int_equal(ipc_msg_check(&h, sizeof(h), 0), -MOE_EPROTO);
	assert_int_equal(ipc_version_choose(1, 1), 1);
	assert_int_equal(ipc_version_choose(1, 9), IPC_PROTO_VERSION_MAX);
	assert_int_equal(ipc_version_choose(IPC_PROTO_VERSION_MAX + 1, 9),
			 -MOE_EVERSION);
	assert_int_equal(ipc_version_choose(0, 0), -MOE_EVERSION);
	assert_int_equal(ipc_version_choose(2, 1), -MOE_EVERSION);
	assert_int_equal(sizeof(struct ipc_desc), 64);
	assert_int_equal(sizeof(struct ipc_cqe), 64);
	assert_int_equal(sizeof(struct ipc_hello_reply), 256);
}

static void seqpacket_pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0,
				    sv), 0);
}

/* The handshake's reply with the arena's memfd; the client attaches the
 * fd it received. */
static void pass_memfd(void **s)
{
	struct ipc_arena m, c;
	struct ipc_hello_reply rep;
	char buf[IPC_MSG_MAX];
	struct stat a, b;
	int sv[2], fd;
	ssize_t n;

	assert_int_equal(ipc_arena_create(&m, &params), 0);
	seqpacket_pair(sv);
	memset(&rep, 0, sizeof(rep));
	ipc_msg_init(&rep.h, IPC_MSG_HELLO_REPLY, sizeof(rep), 0);
	rep.arena_size = m.size;
	assert_int_equal(ipc_send(sv[0], &rep, sizeof(rep), m.fd, 0), 0);
	n = ipc_recv(sv[1], buf, sizeof(buf), &fd, 0);
	assert_int_equal(n, sizeof(rep));
	assert_int_equal(ipc_msg_check(buf, (size_t)n, sizeof(rep)),
			 IPC_MSG_HELLO_REPLY);
	assert_true(fd >= 0);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(fstat(m.fd, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(ipc_arena_attach(&c, fd), 0);
	assert_int_equal(c.size, ((struct ipc_hello_reply *)buf)->arena_size);
	/* A message without an fd: *fd says so. */
	assert_int_equal(ipc_send(sv[0], &rep, sizeof(rep), -1, 0), 0);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), &fd, 0),
			 sizeof(rep));
	assert_int_equal(fd, -1);
	ipc_arena_close(&c);
	ipc_arena_close(&m);
	close(sv[0]);
	close(sv[1]);
}

/* Send n copies of fd in one message, bypassing ipc_send. */
static void send_fds(int sock, int fd, int n)
{
	char data[16] = "fds";
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 16)];
	} c;
	struct iovec iov = { data, sizeof(data) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = c.buf,
			    .msg_controllen = CMSG_SPACE(sizeof(int) * n) };
	struct cmsghdr *h;

	memset(&c, 0, sizeof(c));
	h = CMSG_FIRSTHDR(&m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(int) * n);
	for (int i = 0; i < n; i++)
		memcpy(CMSG_DATA(h) + i * sizeof(int), &fd, sizeof(int));
	assert_int_equal(sendmsg(sock, &m, 0), sizeof(data));
}

/* Fds nobody asked for, too many fds, and fds that did not fit: each
 * refused, and nothing left open in the receiver. */
static void unwanted_fds(void **s)
{
	char buf[64];
	int sv[2], fd, base, probe = open("/dev/null", O_RDONLY | O_CLOEXEC);

	seqpacket_pair(sv);
	base = open_fds();
	send_fds(sv[0], probe, 1);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), NULL, 0),
			 -MOE_EPROTO);
	assert_int_equal(open_fds(), base);
	send_fds(sv[0], probe, 2);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), &fd, 0),
			 -MOE_EPROTO);
	assert_int_equal(fd, -1);
	assert_int_equal(open_fds(), base);
	send_fds(sv[0], probe, IPC_RECV_MAX_FDS + 3); /* MSG_CTRUNC */
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), &fd, 0),
			 -MOE_EPROTO);
	assert_int_equal(fd, -1);
	assert_int_equal(open_fds(), base);
	/* Longer than the buffer: dropped, its fd closed too. */
	send_fds(sv[0], probe, 1);
	assert_int_equal(ipc_recv(sv[1], buf, 8, &fd, 0), -EMSGSIZE);
	assert_int_equal(fd, -1);
	assert_int_equal(open_fds(), base);
	/* The socket still works afterwards. */
	assert_int_equal(ipc_send(sv[0], "ok", 2, -1, 0), 0);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), &fd, 0), 2);
	close(probe);
	close(sv[0]);
	close(sv[1]);
}

/* A peer gone: recv says 0, send says EPIPE and raises no SIGPIPE (this
 * test would die of it). A recv timeout ends a wait on a silent peer. */
static void hangup_and_timeout(void **s)
{
	char buf[64];
	int sv[2];
	struct timespec t0, t1;

	seqpacket_pair(sv);
	assert_int_equal(ipc_sock_timeout(sv[1], 50), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), NULL, 0), -EAGAIN);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec < 5);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), NULL,
				  MSG_DONTWAIT), -EAGAIN);
	close(sv[0]);
	assert_int_equal(ipc_recv(sv[1], buf, sizeof(buf), NULL, 0), 0);
	assert_int_equal(ipc_send(sv[1], "x", 1, -1, 0), -EPIPE);
	assert_int_equal(ipc_send(sv[1], "x", 0, -1, 0), -EINVAL);
	close(sv[1]);
}

static void peercred_pair(void **s)
{
	struct ucred cr;
	int sv[2];

	seqpacket_pair(sv);
	assert_int_equal(ipc_peercred(sv[0], &cr), 0);
	assert_int_equal(cr.pid, getpid());
	assert_int_equal(cr.uid, getuid());
	assert_int_equal(cr.gid, getgid());
	close(sv[0]);
	close(sv[1]);
}

struct sockdir {
	char dir[64];
	char path[128];
};

static void sockdir_open(struct sockdir *d)
{
	const char *t = getenv("TMPDIR");

	snprintf(d->dir, sizeof(d->dir), "%s/moe-sock-XXXXXX",
		 t && strlen(t) < 32 ? t : "/tmp");
	assert_non_null(mkdtemp(d->dir));
	snprintf(d->path, sizeof(d->path), "%s/moed.sock", d->dir);
}

static void sockdir_close(struct sockdir *d)
{
	unlink(d->path);
	rmdir(d->dir);
}

/* A real listening path: mode exactly 0660 whatever the umask, a live
 * server not displaced, a stale socket file replaced, anything that is
 * not a socket left alone, and SO_PEERCRED across accept. */
static void listen_connect(void **s)
{
	struct sockdir d;
	struct stat st;
	struct ucred cr;
	char buf[16];
	mode_t old = umask(077);
	int l, c, a;

	sockdir_open(&d);
	l = ipc_listen(d.path, 0660, 8);
	umask(old);
	assert_true(l >= 0);
	assert_int_equal(lstat(d.path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0660);
	assert_int_equal(ipc_listen(d.path, 0660, 8), -EADDRINUSE);
	/* That probe reached the live server as a connection that hangs up
	 * at once. */
	a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a >= 0);
	assert_int_equal(ipc_recv(a, buf, sizeof(buf), NULL, 0), 0);
	close(a);
	c = ipc_connect(d.path, 5000);
	assert_true(c >= 0);
	a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a >= 0);
	assert_int_equal(ipc_peercred(a, &cr), 0);
	assert_int_equal(cr.pid, getpid());
	assert_int_equal(cr.uid, getuid());
	assert_int_equal(ipc_send(c, "hello", 5, -1, 0), 0);
	assert_int_equal(ipc_recv(a, buf, sizeof(buf), NULL, 0), 5);
	close(a);
	close(c);
	/* The server dies without unlinking: a stale file, replaced. */
	close(l);
	assert_int_equal(lstat(d.path, &st), 0);
	l = ipc_listen(d.path, 0660, 8);
	assert_true(l >= 0);
	close(l);
	/* Not a socket: refused and kept. */
	unlink(d.path);
	close(open(d.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
	assert_int_equal(ipc_listen(d.path, 0660, 8), -EEXIST);
	assert_int_equal(lstat(d.path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	unlink(d.path);
	assert_int_equal(ipc_connect(d.path, 5000), -ENOENT);
	sockdir_close(&d);
}

static void path_limits(void **s)
{
	char longp[200];

	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = 0;
	assert_int_equal(ipc_listen(longp, 0660, 8), -ENAMETOOLONG);
	assert_int_equal(ipc_connect(longp, 5000), -ENAMETOOLONG);
	assert_int_equal(ipc_connect("", 5000), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(create_attach),
		cmocka_unit_test(small_rings),
		cmocka_unit_test(create_rejects),
		cmocka_unit_test(corrupt_header),
		cmocka_unit_test(not_an_arena),
		cmocka_unit_test(seals),
		cmocka_unit_test(desc_checks),
		cmocka_unit_test(msg_checks),
		cmocka_unit_test(pass_memfd),
		cmocka_unit_test(unwanted_fds),
		cmocka_unit_test(hangup_and_timeout),
		cmocka_unit_test(peercred_pair),
		cmocka_unit_test(listen_connect),
		cmocka_unit_test(path_limits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
