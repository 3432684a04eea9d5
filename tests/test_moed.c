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

/* md.model is what moed serves; ref_path the pristine file the
 * in-process reference reads. */
static struct tmoed md;
static char ref_path[256];

static void start_moed(const char *extra)
{
	if (tmoed_start(&md, "--cache-mb 16 --threads 2 %s", extra))
		fail_msg("moed did not start; see %s", md.log);
}

static void stop_moed(void)
{
	assert_int_equal(tmoed_stop(&md), 0);
}

static int setup(void **s)
{
	tmoed_init(&md, "moed");
	strcpy(ref_path, md.model);
	if (run_cmd("%s/moe-gen %s -q --arch qwen2moe --layers 3 --experts 8 --top-k 2 --embd %d --ff 256",
		    bin_dir(), md.model, N_EMBD))
		return -1;
	start_moed("");
	return 0;
}

/* moed's log, shown: what it said about each misbehaving client is part
 * of what this test demonstrates. */
static int teardown(void **s)
{
	stop_moed();
	tmoed_print_log(&md);
	return 0;
}

/* Hello; returns the reply's status (0: c->a attached). */
static int connect_client(struct tconn *c, uint32_t max_tokens)
{
	int rc = tconn_open(c, md.sock, max_tokens, 8, "test_moed");

	assert_true(c->sock >= 0);
	return rc;
}

static void submit(struct tconn *c, uint32_t layer, uint32_t slot,
		   uint32_t nt, const float *x)
{
	assert_int_equal(tconn_submit(c, layer, slot, nt, x), 0);
}

static int wait_cqe(struct tconn *c, struct ipc_cqe *e)
{
	return tconn_wait(c, e, 5000);
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
	struct tref *r = tref_open(ref_path, 2);

	assert_non_null(r);
	assert_int_equal(tref_forward(r, layer, x, nt, NULL, NULL, y), 0);
	tref_close(r);
}

/* A request answered; the output what the engine gives in-process. */
static void check_forward(struct tconn *c, uint32_t layer, uint32_t nt, uint64_t seed)
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
	struct tconn c;

	assert_int_equal(connect_client(&c, 64), 0);
	assert_string_equal(c.r.arch, "qwen2moe");
	assert_int_equal(c.r.n_embd, N_EMBD);
	assert_int_equal(c.r.n_layer, 3);
	assert_int_equal(c.r.max_tokens, 64);
	check_forward(&c, 1, 5, 1);
	check_forward(&c, 2, 64, 2);
	tconn_close(&c);
}

/* Bad descriptors are answered with an error; the client goes on. */
static void garbage_descriptors(void **s)
{
	struct tconn c;
	struct ipc_desc d;
	struct ipc_cqe e;

	assert_int_equal(connect_client(&c, 16), 0);
	memset(&d, 0xa5, sizeof(d)); /* every field garbage */
	assert_int_equal(ipc_ring_push(&c.a.sq, &d), 0);
	tconn_kick(&c);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -MOE_EDESC);
	submit(&c, 7, 0, 1, NULL); /* no such layer */
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -EINVAL);
	memset(&d, 0, sizeof(d));
	d.layer = 1;
	d.n_tokens = 17; /* over the granted 16 */
	assert_int_equal(ipc_ring_push(&c.a.sq, &d), 0);
	tconn_kick(&c);
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
	tconn_close(&c);
}

/* A head jumped far ahead: moed hangs up on that client only. */
static void ring_indices_jumped(void **s)
{
	struct tconn bad, good;
	char buf[64];

	assert_int_equal(connect_client(&bad, 8), 0);
	assert_int_equal(connect_client(&good, 8), 0);
	atomic_store(&bad.a.sq.shm->head, bad.a.sq.own + 1000000);
	tconn_kick(&bad);
	ipc_msg_init((struct ipc_msg_hdr *)buf, IPC_MSG_KICK, 16, 0);
	ipc_send(bad.sock, buf, 16, -1, MSG_DONTWAIT);
	assert_true(sock_hung_up(bad.sock));
	check_forward(&good, 1, 4, 4);
	tconn_close(&bad);
	tconn_close(&good);
}

/* The arena is sealed: a client cannot shrink it under moed. */
static void truncate_refused(void **s)
{
	struct tconn c;

	assert_int_equal(connect_client(&c, 8), 0);
	assert_int_equal(ftruncate(c.a.fd, 4096), -1);
	assert_int_equal(errno, EPERM);
	check_forward(&c, 2, 2, 5);
	tconn_close(&c);
}

/* A client killed while its request runs: moed frees it, serves others. */
static void client_killed(void **s)
{
	struct tconn c;
	pid_t pid = fork();

	if (pid == 0) {
		struct tconn k;
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
	tconn_close(&c);
}

/* STATUS on a connection of moectl's kind (several questions may follow). */
static struct ipc_status_reply status_on(int fd)
{
	struct ipc_msg_hdr q;
	struct ipc_status_reply st;

	ipc_msg_init(&q, IPC_MSG_STATUS, sizeof(q), 0);
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, &st, sizeof(st), NULL, 0), sizeof(st));
	assert_int_equal(st.h.type, IPC_MSG_STATUS_REPLY);
	return st;
}

static struct ipc_status_reply ask_status(void)
{
	int fd = ipc_connect(md.sock, 5000);
	struct ipc_status_reply st;

	ipc_sock_timeout(fd, 5000);
	st = status_on(fd);
	close(fd);
	return st;
}

static void status_and_stats(void **s)
{
	struct ipc_msg_hdr q;
	struct ipc_status_reply st;
	struct ipc_stats_reply sr;
	int fd = ipc_connect(md.sock, 5000);

	ipc_sock_timeout(fd, 5000);
	st = status_on(fd);
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
	struct tconn a, b;

	stop_moed();
	start_moed("--max-clients 1");
	assert_int_equal(connect_client(&a, 8), 0);
	assert_int_equal(connect_client(&b, 8), -EUSERS);
	close(b.sock);
	tconn_close(&a);
	stop_moed();
	snprintf(extra, sizeof(extra), "--allow-uid %u", (unsigned)getuid() + 4242);
	start_moed(extra);
	assert_int_equal(connect_client(&b, 8), -EPERM);
	close(b.sock);
	stop_moed();
	start_moed("");
}

/* moed killed mid-request: the client sees the hang-up, and a new moed
 * serves it again after reconnecting. */
static void moed_killed(void **s)
{
	struct tconn c;
	float *x = tokens(64, 10);

	assert_int_equal(connect_client(&c, 64), 0);
	submit(&c, 1, 0, 64, x);
	tmoed_kill(&md);
	assert_true(sock_hung_up(c.sock));
	tconn_close(&c);
	unlink(md.sock);
	start_moed("");
	assert_int_equal(connect_client(&c, 8), 0);
	check_forward(&c, 2, 3, 11);
	tconn_close(&c);
	free(x);
}

/* The model file cut short under a running moed: requests that need the
 * lost experts fail with a status, the others are served, and once the
 * bytes are back the same request succeeds. */
static void model_truncated(void **s)
{
	char copy[256];
	struct tconn c;
	struct ipc_cqe e;
	float *x = tokens(16, 12);
	off_t full;
	int fd;

	tmp_path(copy, sizeof(copy), "moed-copy");
	assert_int_equal(run_cmd("cp %s %s", md.model, copy), 0);
	strcpy(md.model, copy);
	stop_moed();
	start_moed("--io pread");
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
	tconn_close(&c);
	stop_moed();
	strcpy(md.model, ref_path);
	start_moed("");
	free(x);
}

/* ---- figures, SIGHUP and SIGTERM ---- */

/* One per-layer question on fd: the reply's status. */
static int ask_layer(int fd, uint32_t layer, uint32_t first,
		     struct ipc_stats_layer_reply *r)
{
	struct ipc_stats_layer q;

	memset(&q, 0, sizeof(q));
	ipc_msg_init(&q.h, IPC_MSG_STATS_LAYER, sizeof(q), 0);
	q.layer = layer;
	q.first_expert = first;
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, r, sizeof(*r), NULL, 0), sizeof(*r));
	assert_int_equal(r->h.type, IPC_MSG_STATS_LAYER_REPLY);
	return r->h.status;
}

static void ask_live(int fd, struct ipc_stats_live_reply *l)
{
	struct ipc_msg_hdr q;

	ipc_msg_init(&q, IPC_MSG_STATS_LIVE, sizeof(q), 0);
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, l, sizeof(*l), NULL, 0), sizeof(*l));
	assert_int_equal(l->h.type, IPC_MSG_STATS_LIVE_REPLY);
}

static int stats_conn(void)
{
	int fd = ipc_connect(md.sock, 5000);

	assert_true(fd >= 0);
	ipc_sock_timeout(fd, 5000);
	return fd;
}

static uint64_t sum(const uint64_t *v, uint32_t n)
{
	uint64_t t = 0;

	for (uint32_t i = 0; i < n; i++)
		t += v[i];
	return t;
}

/* Tokens routed by hand show up as exactly those experts' loads; the
 * router's picks add up to k per token; refused requests count in no
 * layer; request times are counted once per request that ran. */
static void layer_figures(void **s)
{
	struct tconn c;
	struct ipc_desc d;
	struct ipc_cqe e;
	struct ipc_stats_layer_reply r;
	struct ipc_stats_live_reply l;
	struct ipc_msg_hdr h;
	struct ipc_route *rt;
	uint64_t want[8] = { 0 };
	float *x = tokens(6, 21);
	int fd;

	stop_moed();
	start_moed(""); /* counters from zero */
	assert_int_equal(connect_client(&c, 16), 0);
	memcpy(ipc_slot_in(&c.a, 0), x, 6 * N_EMBD * sizeof(float));
	rt = ipc_slot_route(&c.a, 0);
	for (uint32_t t = 0; t < 6; t++) {
		rt[2 * t] = (struct ipc_route){ t % 8, 0.75f };
		rt[2 * t + 1] = (struct ipc_route){ (t + 3) % 8, 0.25f };
		want[t % 8]++;
		want[(t + 3) % 8]++;
	}
	memset(&d, 0, sizeof(d));
	d.layer = 1;
	d.n_tokens = 6;
	d.flags = IPC_DESC_ROUTED;
	d.route_k = 2;
	assert_int_equal(tconn_push(&c, &d), 0);
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, 0);
	check_forward(&c, 2, 5, 22);
	submit(&c, 7, 0, 1, NULL); /* refused: no layer 7 */
	assert_int_equal(wait_cqe(&c, &e), 0);
	assert_int_equal(e.status, -EINVAL);

	fd = stats_conn();
	assert_int_equal(ask_layer(fd, IPC_STATS_FIRST, 0, &r), 0);
	assert_int_equal(r.layer, 0);
	assert_int_equal(r.requests, 0);
	assert_int_equal(r.next_layer, 1);
	assert_int_equal(ask_layer(fd, 1, 0, &r), 0);
	assert_int_equal(r.n_expert, 8);
	assert_int_equal(r.n_load, 8);
	assert_int_equal(r.next_expert, 8);
	assert_int_equal(r.requests, 1);
	assert_int_equal(r.tokens, 6);
	assert_int_equal(r.failed, 0);
	assert_int_equal(r.expert_hits + r.expert_misses, 12);
	assert_memory_equal(r.load, want, sizeof(want));
	assert_int_equal(r.latency.count, 1);
	assert_true(r.latency.p50_usec <= r.latency.max_usec);
	assert_int_equal(ask_layer(fd, 2, 0, &r), 0);
	assert_int_equal(r.requests, 1);
	assert_int_equal(r.tokens, 5);
	assert_int_equal(sum(r.load, r.n_load), 5 * 2); /* top-2 */
	assert_int_equal(r.expert_hits + r.expert_misses, 5 * 2);
	assert_true(r.expert_passes >= 2 && r.expert_passes <= 8);
	assert_int_equal(r.next_layer, IPC_STATS_NONE);
	ask_live(fd, &l);
	assert_int_equal(l.clients, 1);
	assert_int_equal(l.queued, 0);
	assert_int_equal(l.reads_pending, 0);
	assert_int_equal(l.latency.count, 2);
	assert_true(l.rounds >= 2);
	assert_string_equal(l.policy, "predict");
	/* A layer the model lacks is answered -EINVAL; a question of the
	 * wrong size is a protocol error that ends the connection. */
	assert_int_equal(ask_layer(fd, 3, 0, &r), -EINVAL);
	assert_int_equal(ask_layer(fd, 2, 8, &r), -EINVAL);
	ipc_msg_init(&h, IPC_MSG_STATS_LAYER, sizeof(h), 0);
	assert_int_equal(ipc_send(fd, &h, sizeof(h), -1, 0), 0);
	assert_true(sock_hung_up(fd));
	close(fd);
	assert_int_equal(tmoed_log_count(&md, "per-layer stats question of 16 bytes"), 1);
	tconn_close(&c);
	free(x);
}

/* One token for layer, routed to experts 0 and 1, pushed without waking
 * moed (kick: and woken). */
static void push_routed(struct tconn *c, uint32_t layer, bool kick)
{
	struct ipc_route *rt = ipc_slot_route(&c->a, 0);
	float *x = tokens(1, layer);
	struct ipc_desc d;

	memcpy(ipc_slot_in(&c->a, 0), x, N_EMBD * sizeof(float));
	rt[0] = (struct ipc_route){ 0, 0.5f };
	rt[1] = (struct ipc_route){ 1, 0.5f };
	memset(&d, 0, sizeof(d));
	d.layer = layer;
	d.n_tokens = 1;
	d.flags = IPC_DESC_ROUTED;
	d.route_k = 2;
	d.id = ++c->next_id;
	assert_int_equal(ipc_ring_push(&c->a.sq, &d), 0);
	if (kick)
		tconn_kick(c);
	free(x);
}

static void answered(struct tconn *c)
{
	struct ipc_cqe e;

	assert_int_equal(wait_cqe(c, &e), 0);
	assert_int_equal(e.status, 0);
	assert_int_equal(e.id, c->next_id);
}

/* Two clients at the same layer, both routed to experts 0 and 1: how
 * many passes over expert weights moed made for their 4 uses, first
 * when both requests wait in the rings as moed wakes, then when the
 * second client's next request comes `late_ms` after the first's. */
static uint64_t passes_for_two(const char *opts, int late_ms)
{
	struct ipc_stats_reply st;
	struct tconn a, b;

	stop_moed();
	start_moed(opts); /* counters from zero */
	assert_int_equal(connect_client(&a, 1), 0);
	assert_int_equal(connect_client(&b, 1), 0);
	usleep(50000); /* moed goes to sleep */
	push_routed(&a, 1, false);
	push_routed(&b, 1, true);
	answered(&a);
	answered(&b);
	push_routed(&a, 2, true);
	usleep(late_ms * 1000);
	push_routed(&b, 2, true);
	answered(&a);
	answered(&b);
	assert_int_equal(tmoed_stats(&md, &st), 0);
	assert_int_equal(st.expert_hits + st.expert_misses, 8);
	tconn_close(&a);
	tconn_close(&b);
	return st.expert_passes;
}

/* Requests of several clients for one layer share a pass over each
 * expert; a client expected at the layer (it was in the last round, and
 * this is its next layer) is waited for up to batch-wait-us. */
static void batched_across_clients(void **s)
{
	/* Window 0: the late request runs in a round of its own. */
	assert_int_equal(passes_for_two("--batch-wait-us 0", 50), 2 + 4);
	/* A 10 ms window catches a request 2 ms late. */
	assert_int_equal(passes_for_two("--batch-wait-us 10000", 2), 2 + 2);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/* Wait (up to 5 s) until moed's log holds s n times. */
static void await_log(const char *s, int n)
{
	for (int i = 0; i < 250 && tmoed_log_count(&md, s) < n; i++)
		usleep(20000);
	if (tmoed_log_count(&md, s) < n)
		fail_msg("moed never logged '%s'", s);
}

static void policy_in_force(const char *want)
{
	struct ipc_stats_live_reply l;
	int fd = stats_conn();

	ask_live(fd, &l);
	close(fd);
	assert_string_equal(l.policy, want);
}

/* SIGHUP re-reads the file: what can change live does, and is logged;
 * what cannot is logged as needing a restart and stays; what the
 * command line set stays; a broken file changes nothing. */
static void sighup_reload(void **s)
{
	char conf[256], extra[512];
	struct tconn c;
	int n;

	stop_moed();
	tmp_path(conf, sizeof(conf), "moed-conf");
	write_file(conf, "log-level = info\npolicy = predict\nprefetch = yes\n");
	snprintf(extra, sizeof(extra), "--config %s --batch-wait-us 20", conf);
	start_moed(extra);
	policy_in_force("predict");
	write_file(conf, "log-level = notice\npolicy = lru\nprefetch = no\n"
			 "cache-mb = 64\nbatch-wait-us = 0\nmax-tokens = 32\n");
	kill(md.pid, SIGHUP);
	await_log("re-read:", 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: log-level info -> notice"), 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: policy predict -> lru"), 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: prefetch yes -> no"), 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: max-tokens 256 -> 32 needs a restart"), 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: cache-mb: the file says 64, the command line's 16 stays in force"), 1);
	assert_int_equal(tmoed_log_count(&md, "SIGHUP: batch-wait-us: the file says 0, the command line's 20 stays in force"), 1);
	assert_int_equal(tmoed_log_count(&md, "3 changes applied, 1 need a restart, 2 overridden by the command line"), 1);
	/* In force: the new policy; the old max-tokens (a grant of 200);
	 * log-level notice (a client's arrival, info, is no longer said). */
	policy_in_force("lru");
	n = tmoed_log_count(&md, "connected:");
	assert_int_equal(connect_client(&c, 200), 0);
	assert_int_equal(c.r.max_tokens, 200);
	check_forward(&c, 1, 3, 31);
	tconn_close(&c);
	assert_int_equal(tmoed_log_count(&md, "connected:"), n);
	/* A file that does not load changes nothing. */
	write_file(conf, "policy = fifo\n");
	kill(md.pid, SIGHUP);
	await_log("keeping the settings in force", 1);
	assert_int_equal(tmoed_log_count(&md, "policy: 'fifo' is not one of lru|lfu|predict"), 1);
	policy_in_force("lru");
	stop_moed();
	start_moed("");
}

/* cache-mb from the file changes on SIGHUP: down, the budget in force
 * shrinks (routers and shared experts still inside it) and answers stay
 * right; past what the slabs were made for at start, the change is
 * refused, said, and the old value stays. */
static void sighup_cache_budget(void **s)
{
	char conf[256], args[512];
	struct ipc_status_reply st;
	struct tconn c;

	stop_moed();
	tmp_path(conf, sizeof(conf), "moed-conf");
	write_file(conf, "cache-mb = 24\n");
	snprintf(args, sizeof(args), "--config %s --threads 2", conf);
	if (tmoed_start(&md, "%s", args))
		fail_msg("moed did not start; see %s", md.log);
	assert_int_equal(ask_status().cache_budget, 24u << 20);
	write_file(conf, "cache-mb = 16\n");
	kill(md.pid, SIGHUP);
	await_log("SIGHUP: cache-mb 24 -> 16", 1);
	st = ask_status();
	assert_int_equal(st.cache_budget, 16u << 20);
	assert_true(st.cache_used <= st.cache_budget);
	assert_int_equal(connect_client(&c, 8), 0);
	for (uint32_t l = 0; l < 3; l++)
		check_forward(&c, l, 8, 40 + l);
	assert_true(ask_status().cache_used <= 16u << 20);
	write_file(conf, "cache-mb = 64\n");
	kill(md.pid, SIGHUP);
	await_log("SIGHUP: cache-mb 16 -> 64 refused", 1);
	assert_int_equal(tmoed_log_count(&md, "slabs were made for at start"), 1);
	assert_int_equal(ask_status().cache_budget, 16u << 20);
	check_forward(&c, 1, 8, 50);
	tconn_close(&c);
	stop_moed();
	start_moed("");
}

/* SIGTERM while every request of three clients is still in its ring:
 * each is answered, with status 0 and the right output, and moed exits
 * 0. moed is stopped while they are pushed, so none can have been
 * answered before the signal. Tokens stay under the sgemm threshold per
 * expert, so batching changes no bit. */
static void sigterm_in_flight(void **s)
{
	enum { N_CL = 3, DEPTH = 4, NT = 4 };
	struct tconn c[N_CL];
	float *x[N_CL][DEPTH], *want = malloc(NT * N_EMBD * sizeof(float));
	struct ipc_cqe e;
	int answered = 0;

	for (int i = 0; i < N_CL; i++)
		assert_int_equal(connect_client(&c[i], NT), 0);
	assert_int_equal(kill(md.pid, SIGSTOP), 0);
	for (int i = 0; i < N_CL; i++)
		for (int j = 0; j < DEPTH; j++) {
			x[i][j] = tokens(NT, 100 + (uint64_t)(i * DEPTH + j));
			submit(&c[i], 1 + (uint32_t)j % 2, (uint32_t)j, NT, x[i][j]);
		}
	assert_int_equal(kill(md.pid, SIGTERM), 0);
	assert_int_equal(kill(md.pid, SIGCONT), 0);
	stop_moed(); /* exit status 0 */
	for (int i = 0; i < N_CL; i++) {
		for (int n = 0; n < DEPTH; n++) {
			uint32_t j;

			assert_int_equal(wait_cqe(&c[i], &e), 0);
			assert_int_equal(e.status, 0);
			j = (uint32_t)e.id - 1; /* ids 1..DEPTH, slot j */
			assert_true(j < DEPTH);
			assert_int_equal(e.slot, j);
			local_forward(1 + j % 2, x[i][j], NT, want);
			assert_memory_equal(ipc_slot_out(&c[i].a, j), want,
					    NT * N_EMBD * sizeof(float));
			answered++;
			free(x[i][j]);
		}
		assert_int_equal(ipc_ring_poll(&c[i].a.cq), 0);
		tconn_close(&c[i]);
	}
	assert_int_equal(answered, N_CL * DEPTH);
	assert_true(tmoed_log_count(&md, "finishing submitted requests, then stopping") >= 1);
	free(want);
	unlink(md.sock);
	start_moed("");
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
		cmocka_unit_test(layer_figures),
		cmocka_unit_test(batched_across_clients),
		cmocka_unit_test(sighup_reload),
		cmocka_unit_test(sighup_cache_budget),
		cmocka_unit_test(sigterm_in_flight),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
