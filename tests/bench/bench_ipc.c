/* Round trip of an empty request between two processes: a descriptor
 * pushed on the submission ring, popped by the server, a completion pushed
 * back and popped; waiting spin-then-futex (and futex alone), beside the
 * same 64-byte request and reply over a SOCK_SEQPACKET socketpair, in the
 * same run. The machine is shared: only the ratio means much. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "futex.h"
#include "proto.h"
#include "shm.h"
#include "sock.h"

#define MAX_ITERS 200000
#define WARMUP 2000
#define BUDGET_S 3.0          /* per measurement, past the warm-up */
#define WAIT_NS 5000000000ll  /* a dead peer ends the bench, not hangs it */
#define STOP_ID UINT64_MAX

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

struct result {
	double p50, p99;
	int n;
	uint64_t sleeps; /* client waits that went past spinning */
};

static struct result summarise(double *us, int n, uint64_t sleeps)
{
	qsort(us, (size_t)n, sizeof(*us), cmp_double);
	return (struct result){ us[n / 2], us[(int)(n * 0.99)], n, sleeps };
}

/* moed's side: answer every descriptor with a completion. */
static int ring_server(struct ipc_arena *m, uint32_t spins)
{
	struct ipc_desc d;
	struct ipc_cqe e;
	int rc;

	for (;;) {
		rc = ipc_bell_wait(m->sq_bell, ipc_ring_ready, &m->sq, spins,
				   WAIT_NS);
		if (rc < 0)
			return rc;
		rc = ipc_ring_pop(&m->sq, &d);
		if (rc == -EAGAIN)
			continue;
		if (rc < 0)
			return rc;
		if (d.id == STOP_ID)
			return 0;
		memset(&e, 0, sizeof(e));
		e.id = d.id;
		e.slot = d.slot;
		e.gen = d.gen;
		rc = ipc_ring_push(&m->cq, &e);
		if (!rc)
			rc = ipc_bell_ring(m->cq_bell);
		if (rc < 0)
			return rc;
	}
}

/* The client's side of one request. 0 or 1 (it slept), or negative. */
static int ring_call(struct ipc_arena *c, uint64_t id, uint32_t spins)
{
	struct ipc_desc d = { .id = id, .layer = 1, .n_tokens = 1 };
	struct ipc_cqe e;
	int rc, slept;

	rc = ipc_ring_push(&c->sq, &d);
	if (!rc)
		rc = ipc_bell_ring(c->sq_bell);
	if (rc < 0)
		return rc;
	slept = ipc_bell_wait(c->cq_bell, ipc_ring_ready, &c->cq, spins,
			      WAIT_NS);
	if (slept < 0)
		return slept;
	rc = ipc_ring_pop(&c->cq, &e);
	if (rc < 0)
		return rc;
	return e.id == id ? slept : -MOE_EPROTO;
}

static int ring_bench(uint32_t spins, double *us, struct result *out)
{
	const struct ipc_arena_params p = {
		.sq_entries = 64, .cq_entries = 64, .slot_count = 1,
		.max_tokens = 1, .n_embd = 16,
	};
	struct ipc_arena m, c;
	struct ipc_desc stop = { .id = STOP_ID };
	uint64_t sleeps = 0;
	int rc, n = 0, status;
	double t, end = 0;
	pid_t pid;

	rc = ipc_arena_create(&m, &p);
	if (rc)
		return rc;
	rc = ipc_arena_attach(&c, dup(m.fd));
	if (rc) {
		ipc_arena_close(&m);
		return rc;
	}
	pid = fork();
	if (pid == 0)
		_exit(ring_server(&m, spins) ? 1 : 0);
	for (int i = 0; pid > 0 && i < WARMUP + MAX_ITERS; i++) {
		if (i == WARMUP)
			end = now() + BUDGET_S;
		t = now();
		rc = ring_call(&c, (uint64_t)i, spins);
		if (rc < 0)
			break;
		if (i < WARMUP)
			continue;
		us[n++] = (now() - t) * 1e6;
		sleeps += (uint64_t)rc;
		if (now() > end)
			break;
	}
	if (pid > 0) {
		ipc_ring_push(&c.sq, &stop);
		ipc_bell_ring(c.sq_bell);
		waitpid(pid, &status, 0);
		if (rc >= 0 && (!WIFEXITED(status) || WEXITSTATUS(status)))
			rc = -MOE_EDEAD;
	} else {
		rc = -errno;
	}
	ipc_arena_close(&c);
	ipc_arena_close(&m);
	if (rc < 0)
		return rc;
	*out = summarise(us, n, sleeps);
	return 0;
}

/* The socket server echoes each 64-byte message until the hang-up. */
static void sock_server(int s)
{
	char buf[IPC_MSG_MAX];
	ssize_t n;

	while ((n = ipc_recv(s, buf, sizeof(buf), NULL, 0)) > 0)
		if (ipc_send(s, buf, (size_t)n, -1, 0) < 0)
			_exit(1);
	_exit(n == 0 ? 0 : 1);
}

static int sock_bench(double *us, struct result *out)
{
	struct ipc_desc req = { .layer = 1, .n_tokens = 1 };
	char buf[IPC_MSG_MAX];
	int sv[2], rc = 0, n = 0, status;
	double t, end = 0;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		sock_server(sv[1]);
	}
	close(sv[1]);
	for (int i = 0; pid > 0 && i < WARMUP + MAX_ITERS; i++) {
		if (i == WARMUP)
			end = now() + BUDGET_S;
		req.id = (uint64_t)i;
		t = now();
		rc = ipc_send(sv[0], &req, sizeof(req), -1, 0);
		if (!rc) {
			ssize_t got = ipc_recv(sv[0], buf, sizeof(buf), NULL, 0);

			rc = got == (ssize_t)sizeof(req) ? 0
			     : got < 0		      ? (int)got
						      : -MOE_EPROTO;
		}
		if (rc)
			break;
		if (i < WARMUP)
			continue;
		us[n++] = (now() - t) * 1e6;
		if (now() > end)
			break;
	}
	close(sv[0]);
	if (pid < 0)
		return -errno;
	waitpid(pid, &status, 0);
	if (rc)
		return rc;
	*out = summarise(us, n, 0);
	return 0;
}

static void show(const char *what, const struct result *r)
{
	printf("  %-34s p50 %8.2f us  p99 %8.2f us  (%d round trips",
	       what, r->p50, r->p99, r->n);
	if (r->sleeps)
		printf(", %.1f%% slept", 100.0 * (double)r->sleeps / r->n);
	printf(")\n");
}

int main(void)
{
	double *us = malloc(sizeof(double) * MAX_ITERS);
	struct result spin, futex, sock;
	int rc;

	if (!us)
		return 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("round trip of an empty request, two processes "
	       "(64-byte descriptor, 64-byte completion):\n");
	rc = ring_bench(IPC_BELL_SPINS, us, &spin);
	if (!rc)
		show("rings, spin then futex", &spin);
	if (!rc)
		rc = ring_bench(0, us, &futex);
	if (!rc)
		show("rings, futex at once (no spin)", &futex);
	if (!rc)
		rc = sock_bench(us, &sock);
	if (!rc)
		show("SOCK_SEQPACKET socketpair, 64 B", &sock);
	free(us);
	if (rc) {
		fprintf(stderr, "bench_ipc: %s\n", moe_strerror(rc));
		return 1;
	}
	printf("  socket / rings (spin then futex): p50 %.1fx, p99 %.1fx\n",
	       sock.p50 / spin.p50, sock.p99 / spin.p99);
	printf("  socket / rings (futex at once):   p50 %.1fx, p99 %.1fx\n",
	       sock.p50 / futex.p50, sock.p99 / futex.p99);
	return 0;
}
