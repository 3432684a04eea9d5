/* moed end to end, speaking the wire protocol directly (not through
 * libmoeclient), so it can also misbehave: a real moed on a moe-gen model,
 * requests checked against the engine run in-process, and every way a
 * client can be hostile or die, with moed serving the others throughout. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "engine.h"
#include "model.h"
#include "shm.h"
#include "sock.h"
#include "testutil.h"

#define N_EMBD 256

/* model_path is what moed serves; ref_path the pristine file the
 * in-process reference reads. */
static char model_path[256], ref_path[256], sock_path[256], log_path[256];
static pid_t moed_pid;

static pid_t start_moed(const char *extra)
{
	char cmd[2048];
	pid_t pid;

	snprintf(cmd, sizeof(cmd),
		 "exec %s/moed --model %s --socket %s --cache-mb 16 --threads 2 %s >>%s 2>&1",
		 bin_dir(), model_path, sock_path, extra, log_path);
	pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) { /* wait for the socket */
		int fd = ipc_connect(sock_path, 5000);

		if (fd >= 0) {
			close(fd);
			return pid;
		}
		usleep(20000);
	}
	fail_msg("moed did not start; see %s", log_path);
	return -1;
}

static void stop_moed(pid_t pid)
{
	int st;

	kill(pid, SIGTERM);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

static int setup(void **s)
{
	tmp_path(model_path, sizeof(model_path), "moed-model");
	strcpy(ref_path, model_path);
	tmp_path(sock_path, sizeof(sock_path), "moed-sock");
	tmp_path(log_path, sizeof(log_path), "moed-log");
	unlink(sock_path);
	if (run_cmd("%s/moe-gen %s -q --arch qwen2moe --layers 3 --experts 8 --top-k 2 --embd %d --ff 256",
		    bin_dir(), model_path, N_EMBD))
		return -1;
	moed_pid = start_moed("");
	return 0;
}

/* moed's log, shown: what it said about each misbehaving client is part
 * of what this test demonstrates. */
static int teardown(void **s)
{
	char line[512];
	FILE *f;

	stop_moed(moed_pid);
	f = fopen(log_path, "r");
	while (f && fgets(line, sizeof(line), f))
		printf("  moed| %s", line);
	if (f)
		fclose(f);
	return 0;
}

struct conn {
	int sock;
	struct ipc_arena a;
	struct ipc_hello_reply r;
	uint64_t next_id;
};

/* Hello; returns the reply's status (0: c->a attached). */
static int connect_client(struct conn *c, uint32_t max_tokens)
{
	struct ipc_hello h;
	ssize_t n;
	int fd = -1;

	memset(c, 0, sizeof(*c));
	c->a.fd = -1;
	c->sock = ipc_connect(sock_path, 5000);
	assert_true(c->sock >= 0);
	memset(&h, 0, sizeof(h));
	ipc_msg_init(&h.h, IPC_MSG_HELLO, sizeof(h), 0);
	h.ver_min = h.ver_max = IPC_PROTO_VERSION_MAX;
	h.max_tokens = max_tokens;
	h.max_inflight = 4;
	h.max_route_k = 8;
	h.pid = getpid();
	strcpy(h.name, "test_moed");
	assert_int_equal(ipc_send(c->sock, &h, sizeof(h), -1, 0), 0);
	ipc_sock_timeout(c->sock, 5000);
	n = ipc_recv(c->sock, &c->r, sizeof(c->r), &fd, 0);
	assert_int_equal(n, sizeof(c->r));
	if (c->r.h.status)
		return c->r.h.status;
	assert_true(fd >= 0);
	assert_int_equal(ipc_arena_attach(&c->a, fd), 0);
	return 0;
}

static void disconnect(struct conn *c)
{
	ipc_arena_close(&c->a);
	close(c->sock);
}

static void kick(struct conn *c)
{
	struct ipc_msg_hdr k;

	ipc_bell_ring(c->a.sq_bell);
	/* An RMW, after the push: pairs with moed's RMW on waiters before its
	 * last look at the ring, so one of us sees the other. */
	if (atomic_fetch_add_explicit(&c->a.sq_bell->waiters, 0,
				      memory_order_seq_cst)) {
		ipc_msg_init(&k, IPC_MSG_KICK, sizeof(k), 0);
		ipc_send(c->sock, &k, sizeof(k), -1, MSG_DONTWAIT);
	}
}

static void submit(struct conn *c, uint32_t layer, uint32_t slot,
		   uint32_t nt, const float *x)
{
	struct ipc_desc d;

	memset(&d, 0, sizeof(d));
	d.id = ++c->next_id;
	d.layer = layer;
	d.n_tokens = nt;
	d.slot = slot;
	if (x)
		memcpy(ipc_slot_in(&c->a, slot), x, (size_t)nt * N_EMBD * 4);
	assert_int_equal(ipc_ring_push(&c->a.sq, &d), 0);
	kick(c);
}

static int wait_cqe(struct conn *c, struct ipc_cqe *e)
{
	int rc = ipc_bell_wait(c->a.cq_bell, ipc_ring_ready, &c->a.cq,
			       IPC_BELL_SPINS, 5000000000ll);

	if (rc < 0)
		return rc;
	return ipc_ring_pop(&c->a.cq, e);
}

/* The peer hung up: an orderly end, or a reset when it left data unread. */
static bool hung_up(int sock)
{
	char buf[64];
	ssize_t n = ipc_recv(sock, buf, sizeof(buf), NULL, 0);

	return n == 0 || n == -ECONNRESET;
}

static float *tokens(uint32_t nt, uint64_t seed)
{
	struct trng r = { seed };
	float *x = malloc((size_t)nt * N_EMBD * 4);

	trng_fill(&r, x, (size_t)nt * N_EMBD, -1.5f, 1.5f);
	return x;
}

/* The same layer run in this process, for comparison. */
static void local_forward(uint32_t layer, const float *x, uint32_t nt, float *y)
{
	struct moe_engine_opts eo = { .threads = 2 };
	struct moe_msg err = { "" };
	struct moe_expert_src src;
	struct moe_mapsrc *ms;
	struct moe_engine *e;
	struct moe_model *m;

	assert_int_equal(moe_model_open(&m, ref_path, &err), 0);
	assert_int_equal(moe_mapsrc_open(&ms, m, &src, &err), 0);
	assert_int_equal(moe_engine_new(&e, m, &src, &eo, &err), 0);
	assert_int_equal(moe_engine_forward(e, layer, x, nt, NULL, NULL, y, &err), 0);
	moe_engine_free(e);
	moe_mapsrc_close(ms);
	moe_model_close(m);
}

/* A request answered; the output what the engine gives in-process. */
static void check_forward(struct conn *c, uint32_t layer, uint32_t nt, uint64_t seed)
{
	float *x = tokens(nt, seed), *want = malloc((size_t)nt * N_EMBD * 4);
	struct ipc_cqe e;

	submit(c, layer, 0, nt, x);
	assert_int_equal(wait_cqe(c, &e), 0);
	assert_int_equal(e.status, 0);
	assert_int_equal(e.id, c->next_id);
	assert_int_equal(e.n_tokens, nt);
	assert_int_equal(e.k_used, nt * 2);
	assert_int_equal(e.experts_hit + e.experts_missed, nt * 2);
	local_forward(layer, x, nt, want);
	assert_memory_equal(ipc_slot_out(&c->a, 0), want, (size_t)nt * N_EMBD * 4);
	free(x);
	free(want);
}

static void handshake_and_forward(void **s)
{
	struct conn c;

	assert_int_equal(connect_client(&c, 64), 0);
	assert_string_equal(c.r.arch, "qwen2moe");
	assert_int_equal(c.r.n_embd, N_EMBD);
	assert_int_equal(c.r.n_layer, 3);
	assert_int_equal(c.r.max_tokens, 64);
	check_forward(&c, 1, 5, 1);
	check_forward(&c, 2, 64, 2);
	disconnect(&c);
}

/* Bad descriptors are answered with an error; the client goes on. */
static void garbage_descriptors(void **s)
{
	struct conn c;
	struct ipc_desc d;
	struct ipc_cqe e;

	assert_int_equal(connect_client(&c, 16), 0);
	memset(&d, 0xa5, sizeof(d)); /* every field garbage */
	assert_int_equal(ipc_ring_push(&c.a.sq, &d), 0);
	kick(&c);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -MOE_EDESC);
	submit(&c, 7, 0, 1, NULL); /* no such layer */
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -EINVAL);
	memset(&d, 0, sizeof(d));
	d.layer = 1;
	d.n_tokens = 17; /* over the granted 16 */
	assert_int_equal(ipc_ring_push(&c.a.sq, &d), 0);
	kick(&c);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -MOE_EDESC);
	/* non-finite input */
	submit(&c, 1, 0, 1, NULL);
	assert_int_equal(wait_cqe(&c, &e), 0); /* slot may hold garbage: either way answered */
	ipc_slot_in(&c.a, 0)[3] = NAN;
	submit(&c, 1, 0, 1, NULL);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -MOE_EINVAL_INPUT);
	check_forward(&c, 1, 3, 3);
	disconnect(&c);
}

/* A head jumped far ahead: moed hangs up on that client only. */
static void ring_indices_jumped(void **s)
{
	struct conn bad, good;
	char buf[64];

	assert_int_equal(connect_client(&bad, 8), 0);
	assert_int_equal(connect_client(&good, 8), 0);
	atomic_store(&bad.a.sq.shm->head, bad.a.sq.own + 1000000);
	kick(&bad);
	ipc_msg_init((struct ipc_msg_hdr *)buf, IPC_MSG_KICK, 16, 0);
	ipc_send(bad.sock, buf, 16, -1, MSG_DONTWAIT);
	assert_true(hung_up(bad.sock));
	check_forward(&good, 1, 4, 4);
	disconnect(&bad);
	disconnect(&good);
}

/* The arena is sealed: a client cannot shrink it under moed. */
static void truncate_refused(void **s)
{
	struct conn c;

	assert_int_equal(connect_client(&c, 8), 0);
	assert_int_equal(ftruncate(c.a.fd, 4096), -1);
	assert_int_equal(errno, EPERM);
	check_forward(&c, 2, 2, 5);
	disconnect(&c);
}

/* A client killed while its request runs: moed frees it, serves others. */
static void client_killed(void **s)
{
	struct conn c;
	pid_t pid = fork();

	if (pid == 0) {
		struct conn k;
		float *x = tokens(64, 9);

		if (connect_client(&k, 64))
			_exit(1);
		for (int i = 0; i < 4; i++)
			submit(&k, 1 + i % 2, (uint32_t)i, 64, x);
		pause();
		_exit(0);
	}
	usleep(50000);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	assert_int_equal(connect_client(&c, 8), 0);
	check_forward(&c, 1, 8, 6);
	disconnect(&c);
}

static void status_and_stats(void **s)
{
	struct ipc_msg_hdr q;
	struct ipc_status_reply st;
	struct ipc_stats_reply sr;
	int fd = ipc_connect(sock_path, 5000);

	ipc_sock_timeout(fd, 5000);
	ipc_msg_init(&q, IPC_MSG_STATUS, sizeof(q), 0);
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, &st, sizeof(st), NULL, 0), sizeof(st));
	assert_int_equal(st.h.type, IPC_MSG_STATUS_REPLY);
	assert_string_equal(st.arch, "qwen2moe");
	assert_int_equal(st.cache_budget, 16u << 20);
	assert_true(st.cache_used <= st.cache_budget);
	ipc_msg_init(&q, IPC_MSG_STATS, sizeof(q), 0);
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, &sr, sizeof(sr), NULL, 0), sizeof(sr));
	assert_true(sr.requests > 0 && sr.refused > 0);
	assert_int_equal(sr.expert_hits + sr.expert_misses > 0, 1);
	close(fd);
}

/* Limits: more clients than --max-clients, a uid not allowed. */
static void refusals(void **s)
{
	char extra[128];
	struct conn a, b;
	pid_t p;

	stop_moed(moed_pid);
	moed_pid = start_moed("--max-clients 1");
	assert_int_equal(connect_client(&a, 8), 0);
	assert_int_equal(connect_client(&b, 8), -EUSERS);
	close(b.sock);
	disconnect(&a);
	stop_moed(moed_pid);
	snprintf(extra, sizeof(extra), "--allow-uid %u", (unsigned)getuid() + 4242);
	p = start_moed(extra);
	assert_int_equal(connect_client(&b, 8), -EPERM);
	close(b.sock);
	stop_moed(p);
	moed_pid = start_moed("");
}

/* moed killed mid-request: the client sees the hang-up, and a new moed
 * serves it again after reconnecting. */
static void moed_killed(void **s)
{
	struct conn c;
	float *x = tokens(64, 10);

	assert_int_equal(connect_client(&c, 64), 0);
	submit(&c, 1, 0, 64, x);
	kill(moed_pid, SIGKILL);
	waitpid(moed_pid, NULL, 0);
	assert_true(hung_up(c.sock));
	disconnect(&c);
	unlink(sock_path);
	moed_pid = start_moed("");
	assert_int_equal(connect_client(&c, 8), 0);
	check_forward(&c, 2, 3, 11);
	disconnect(&c);
	free(x);
}

/* The model file cut short under a running moed: requests that need the
 * lost experts fail with a status, the others are served, and once the
 * bytes are back the same request succeeds. */
static void model_truncated(void **s)
{
	char copy[256];
	struct conn c;
	struct ipc_cqe e;
	float *x = tokens(16, 12);
	off_t full;
	int fd;
	pid_t p;

	tmp_path(copy, sizeof(copy), "moed-copy");
	assert_int_equal(run_cmd("cp %s %s", model_path, copy), 0);
	strcpy(model_path, copy);
	stop_moed(moed_pid);
	p = start_moed("--io pread");
	fd = open(copy, O_RDWR);
	full = lseek(fd, 0, SEEK_END);
	assert_int_equal(ftruncate(fd, full / 2), 0); /* layer 2's experts gone */
	assert_int_equal(connect_client(&c, 16), 0);
	submit(&c, 2, 0, 16, x);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -MOE_EEXPERT_IO);
	check_forward(&c, 0, 4, 13); /* layer 0 lies in the first half */
	assert_int_equal(run_cmd("cat %s > %s", ref_path, copy), 0);
	close(fd);
	check_forward(&c, 2, 16, 12);
	disconnect(&c);
	stop_moed(p);
	strcpy(model_path, ref_path);
	moed_pid = start_moed("");
	free(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(handshake_and_forward),
		cmocka_unit_test(garbage_descriptors),
		cmocka_unit_test(ring_indices_jumped),
		cmocka_unit_test(truncate_refused),
		cmocka_unit_test(client_killed),
		cmocka_unit_test(status_and_stats),
		cmocka_unit_test(refusals),
		cmocka_unit_test(moed_killed),
		cmocka_unit_test(model_truncated),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
