/* moed's serving loop. One thread owns everything here: it polls every
 * client's submission ring, spinning while work keeps coming, and when
 * idle announces itself on each submission bell and sleeps in epoll
 * (clients send a KICK on their socket when they see the announcement).
 * Requests popped in one round are batched per layer: one engine pass
 * reads each expert once for every token that wants it. Anything a
 * client wrote is copied out once and checked before use. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "hello.h"
#include "log.h"
#include "notify.h"
#include "plan.h"
#include "server.h"
#include "shm.h"
#include "sock.h"
#include "source.h"
#include "stats.h"
#include "store.h"

#define SPIN_ROUNDS 4000     /* empty polls before sleeping (~50-100 us) */
#define REBALANCE_NS 2000000000ll
#define MAX_ROUND 1024       /* descriptors taken per round */

enum ev_kind { EV_LISTEN, EV_SIGNAL, EV_TIMER, EV_SESSION };

struct ev {
	enum ev_kind kind;
};

struct session {
	struct ev ev; /* first: epoll's data.ptr points here */
	int sock;
	struct ucred cred;
	bool client;    /* said hello and got an arena */
	int64_t accepted_ns; /* until it says hello: the deadline runs */
	bool announced; /* counted in its submission bell's waiters */
	bool closing;
	const char *why; /* reason for closing, for the log */
	struct ipc_arena arena;
	uint32_t max_tokens, max_inflight, max_route_k;
	uint8_t *slot_busy; /* slots taken by requests of this round */
	char name[32];
	uint64_t requests;
	uint64_t round;      /* the last round it had requests in */
	uint32_t next_layer; /* the MoE layer after its last request's */
	bool expected;       /* gather() waits for it */
	uint32_t drain;      /* stopping: requests left to take, those
			      * submitted before the stop */
};

struct request {
	struct session *ss;
	struct ipc_desc d;
	int64_t t0;
	uint32_t seq;  /* arrival order within the round */
	uint32_t row0; /* first row in the layer's batch */
	int status;
	uint32_t hit, missed, k_used;
};

struct counters {
	uint64_t requests, tokens, refused, failed, busy_usec;
	uint64_t hits, misses;
	uint64_t passes; /* expert weight passes; hits + misses were uses */
};

/* The store's bytes read, sampled every timer tick: the oldest sample
 * and now give the recent read rate. */
#define RATE_SAMPLES 10

struct read_rate {
	int64_t t[RATE_SAMPLES];
	uint64_t bytes[RATE_SAMPLES];
	uint32_t next, n;
};

struct moe_server {
	struct moe_server_deps d;
	struct ev listen_ev, signal_ev, timer_ev;
	int listen_fd, epfd, sigfd, timerfd;
	struct session **ss;
	uint32_t n_ss, cap_ss, n_clients;
	struct request *rq;
	uint32_t n_rq;
	float *bx, *by;
	struct moe_route *routes;
	size_t cap_rows;
	struct counters c;
	struct moe_serve_stats st; /* per layer, latency, expert load */
	struct read_rate rate;
	uint64_t round; /* rounds with requests, counting this one */
	int64_t start_ns, last_rebalance;
	uint64_t watchdog_usec; /* systemd's; 0: no pings asked for */
	bool stop;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* ---- sessions ---- */

static void session_close(struct moe_server *s, struct session *ss)
{
	if (ss->client) {
		moe_log(MOE_LOG_INFO,
			"client %s (pid %d, uid %u) disconnected: %s; %" PRIu64 " requests",
			ss->name, (int)ss->cred.pid, ss->cred.uid,
			ss->why ? ss->why : "hung up", ss->requests);
		s->n_clients--;
	}
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, ss->sock, NULL);
	close(ss->sock);
	ipc_arena_close(&ss->arena);
	free(ss->slot_busy);
	free(ss);
}

static void session_drop(struct session *ss, const char *why)
{
	if (!ss->closing)
		ss->why = why;
	ss->closing = true;
}

/* Remove the sessions marked closing; the caller holds no request of
 * theirs (only between rounds). */
static void sweep(struct moe_server *s)
{
	uint32_t k = 0;

	for (uint32_t i = 0; i < s->n_ss; i++) {
		if (s->ss[i]->closing)
			session_close(s, s->ss[i]);
		else
			s->ss[k++] = s->ss[i];
	}
	s->n_ss = k;
}

static bool waits_for_hello(const struct session *ss)
{
	return !ss->client && !ss->closing;
}

/* Sessions that have not said hello (moectl's questions, a client
 * mid-handshake, or a peer that never will). */
static uint32_t pre_hello(const struct moe_server *s)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->n_ss; i++)
		n += waits_for_hello(s->ss[i]);
	return n;
}

/* Peers that hung up before hello whose hang-up epoll has not yet
 * brought us (a probe of the socket, a moectl just done): they hold no
 * place. */
static void drop_hung_up(struct moe_server *s)
{
	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct pollfd p = { .fd = s->ss[i]->sock,
				    .events = POLLIN | POLLRDHUP };

		if (waits_for_hello(s->ss[i]) && poll(&p, 1, 0) == 1 &&
		    (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
			session_drop(s->ss[i], "hung up");
	}
}

static bool room_for_hello(struct moe_server *s)
{
	if (pre_hello(s) < s->d.cfg->max_clients)
		return true;
	drop_hung_up(s);
	return pre_hello(s) < s->d.cfg->max_clients;
}

/* Whether a new connection may stay: its peer on the allow lists (every
 * peer, so that moectl's questions are not answered to strangers
 * either), and room among the sessions yet to say hello (at most
 * max-clients of them; the hello deadline frees the ones that never
 * will). 0, or the status it is refused with, logged and sent as a
 * header-only hello reply, which moe_connect and moectl report. */
static int admit(struct moe_server *s, int fd, const struct ucred *c)
{
	struct ipc_msg_hdr h;
	gid_t *groups = NULL;
	uint32_t n_groups = 0;
	char why[160];
	int rc;

	/* Not readable (a kernel before 4.13): the primary gid alone. */
	ipc_peergroups(fd, &groups, &n_groups);
	rc = moe_peer_check(s->d.cfg, c, groups, n_groups, why, sizeof(why));
	free(groups);
	if (rc) {
		moe_log(MOE_LOG_NOTICE, "connection from pid %d (uid %u, gid %u) refused: %s",
			(int)c->pid, c->uid, c->gid, why);
	} else if (!room_for_hello(s)) {
		rc = -EUSERS;
		moe_log(MOE_LOG_WARNING,
			"connection from pid %d (uid %u, gid %u) refused: %u connections have not said hello yet (max-clients %u)",
			(int)c->pid, c->uid, c->gid, pre_hello(s),
			s->d.cfg->max_clients);
	}
	if (rc) {
		ipc_msg_init(&h, IPC_MSG_HELLO_REPLY, sizeof(h), rc);
		ipc_send(fd, &h, sizeof(h), -1, MSG_DONTWAIT);
	}
	return rc;
}

static bool grow_sessions(struct moe_server *s)
{
	uint32_t cap = s->cap_ss ? 2 * s->cap_ss : 16;
	void *p;

	if (s->n_ss < s->cap_ss)
		return true;
	p = realloc(s->ss, cap * sizeof(*s->ss));
	if (!p)
		return false;
	s->ss = p;
	s->cap_ss = cap;
	return true;
}

static void accept_one(struct moe_server *s)
{
	struct epoll_event ee = { .events = EPOLLIN | EPOLLRDHUP };
	struct session *ss = NULL;
	struct ucred cred;
	int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;
	if (ipc_peercred(fd, &cred) || admit(s, fd, &cred))
		goto err;
	ss = calloc(1, sizeof(*ss));
	if (!ss || !grow_sessions(s)) {
		moe_log(MOE_LOG_WARNING, "connection from pid %d refused: out of memory",
			(int)cred.pid);
		goto err;
	}
	ss->ev.kind = EV_SESSION;
	ss->sock = fd;
	ss->cred = cred;
	ss->arena.fd = -1;
	ss->accepted_ns = now_ns();
	ee.data.ptr = &ss->ev;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee))
		goto err;
	s->ss[s->n_ss++] = ss;
	return;
err:
	free(ss);
	close(fd);
}

/* A connection that has not said hello within hello-timeout-ms of its
 * accept is closed: otherwise silent connections would hold moed's fds
 * and the pre-hello places for ever. moectl's questions are asked and
 * answered well within it. */
static void expire_hellos(struct moe_server *s)
{
	int64_t limit = (int64_t)s->d.cfg->hello_timeout_ms * 1000000;
	int64_t now = now_ns();

	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];

		if (!waits_for_hello(ss) || now - ss->accepted_ns < limit)
			continue;
		moe_log(MOE_LOG_NOTICE,
			"connection from pid %d (uid %u, gid %u) closed: no hello within %u ms (hello-timeout-ms)",
			(int)ss->cred.pid, ss->cred.uid, ss->cred.gid,
			s->d.cfg->hello_timeout_ms);
		session_drop(ss, "no hello in time");
	}
}

static uint32_t pow2_at_least(uint32_t v)
{
	uint32_t p = 4;

	while (p < v)
		p <<= 1;
	return p;
}

static void fill_shape(const struct moe_server *s, struct ipc_hello_reply *r)
{
	const struct moe_model *m = s->d.m;

	snprintf(r->arch, sizeof(r->arch), "%s", moe_arch_name(m->arch));
	r->n_layer = m->n_layer;
	r->n_embd = m->n_embd;
	r->n_expert = m->max_expert;
	r->n_used = m->layers[m->first_moe_layer].n_used;
	r->max_k = m->max_expert < MOE_MAX_K ? m->max_expert : MOE_MAX_K;
	r->first_moe_layer = m->first_moe_layer;
	r->n_moe_layers = m->n_moe_layers;
	for (uint32_t l = 0; l < m->n_layer; l++) {
		if (!m->layers[l].moe)
			continue;
		r->last_moe_layer = l;
		if (l < IPC_MAX_LAYERS)
			r->moe_layers[l / 8] |= (uint8_t)(1u << (l % 8));
	}
}

/* An accepted hello (moe_hello_check decided): its arena and the reply,
 * or a status to refuse with and why. */
static int handshake(struct moe_server *s, struct session *ss,
		     const struct moe_hello_grant *g, struct ipc_hello_reply *r,
		     char *why, size_t len)
{
	struct ipc_arena_params ap = { 0 };
	int rc;

	ss->max_tokens = g->max_tokens;
	ss->max_inflight = g->max_inflight;
	ss->max_route_k = g->max_route_k;
	ap.sq_entries = ap.cq_entries = pow2_at_least(ss->max_inflight);
	ap.slot_count = ss->max_inflight;
	ap.max_tokens = ss->max_tokens;
	ap.n_embd = s->d.m->n_embd;
	ap.max_route_k = ss->max_route_k;
	ap.client_pid = ss->cred.pid;
	rc = ipc_arena_create(&ss->arena, &ap);
	if (!rc)
		rc = ipc_arena_check_seals(ss->arena.fd);
	ss->slot_busy = calloc(ap.slot_count, 1);
	if (rc || !ss->slot_busy)
		return snprintf(why, len, "cannot make its arena: %s",
				moe_strerror(rc ? rc : -ENOMEM)), rc ? rc : -ENOMEM;
	r->version = g->version;
	fill_shape(s, r);
	r->arena_size = ss->arena.size;
	r->slot_size = ss->arena.lay.slot_size;
	r->slot_count = ap.slot_count;
	r->max_tokens = ss->max_tokens;
	r->max_inflight = ss->max_inflight;
	r->max_route_k = ss->max_route_k;
	return 0;
}

static void on_hello(struct moe_server *s, struct session *ss,
		     const void *buf, ssize_t n)
{
	struct moe_hello_grant g;
	struct ipc_hello_reply r;
	char why[128];
	int rc;

	memset(&r, 0, sizeof(r));
	rc = moe_hello_check(buf, (size_t)n, s->n_clients, s->d.cfg, &g, why,
			     sizeof(why));
	snprintf(ss->name, sizeof(ss->name), "%s", g.name);
	if (!rc)
		rc = handshake(s, ss, &g, &r, why, sizeof(why));
	ipc_msg_init(&r.h, IPC_MSG_HELLO_REPLY, sizeof(r), rc);
	if (rc) {
		moe_log(MOE_LOG_NOTICE, "client %s (pid %d, uid %u) refused: %s",
			ss->name, (int)ss->cred.pid, ss->cred.uid, why);
		ipc_send(ss->sock, &r, sizeof(r), -1, MSG_DONTWAIT);
		ss->closing = true;
		return;
	}
	if (ipc_send(ss->sock, &r, sizeof(r), ss->arena.fd, MSG_DONTWAIT)) {
		ss->closing = true;
		return;
	}
	ss->client = true;
	s->n_clients++;
	moe_log(MOE_LOG_INFO,
		"client %s (pid %d, uid %u) connected: %u tokens x %u in flight",
		ss->name, (int)ss->cred.pid, ss->cred.uid, ss->max_tokens,
		ss->max_inflight);
}

/* Copy as much of src as fits, always terminated. */
static void copy_str(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = 0;
}

static void on_status(struct moe_server *s, struct session *ss)
{
	struct ipc_status_reply r;
	struct moe_store_stats st = { 0 };

	memset(&r, 0, sizeof(r));
	ipc_msg_init(&r.h, IPC_MSG_STATUS_REPLY, sizeof(r), 0);
	if (s->d.store)
		moe_store_stats(s->d.store, &st);
	snprintf(r.arch, sizeof(r.arch), "%s", moe_arch_name(s->d.m->arch));
	copy_str(r.model, sizeof(r.model), s->d.cfg->model);
	r.n_layer = s->d.m->n_layer;
	r.n_expert = s->d.m->max_expert;
	r.clients = s->n_clients;
	r.max_clients = s->d.cfg->max_clients;
	/* The budget covers the routers and shared experts, as cache-mb
	 * does: they are resident all the time. */
	if (s->d.store) {
		uint64_t pinned = moe_engine_pinned_bytes(s->d.e);

		r.cache_used = st.resident_bytes + pinned;
		r.cache_budget = st.budget_bytes + pinned;
	}
	r.uptime_ms = (uint64_t)(now_ns() - s->start_ns) / 1000000;
	r.pid = (int32_t)getpid();
	r.threads = moe_engine_threads(s->d.e);
	ipc_send(ss->sock, &r, sizeof(r), -1, MSG_DONTWAIT);
}

static void on_stats(struct moe_server *s, struct session *ss)
{
	struct ipc_stats_reply r;
	struct moe_store_stats st = { 0 };

	memset(&r, 0, sizeof(r));
	ipc_msg_init(&r.h, IPC_MSG_STATS_REPLY, sizeof(r), 0);
	if (s->d.store)
		moe_store_stats(s->d.store, &st);
	r.requests = s->c.requests;
	r.tokens = s->c.tokens;
	r.refused = s->c.refused;
	r.failed = s->c.failed;
	r.expert_hits = s->c.hits;
	r.expert_misses = s->c.misses;
	r.bytes_read = st.bytes_read;
	r.prefetch_issued = st.prefetch_issued;
	r.prefetch_used = st.prefetch_used;
	r.evictions = st.evictions;
	r.busy_usec = s->c.busy_usec;
	r.expert_passes = s->c.passes;
	ipc_send(ss->sock, &r, sizeof(r), -1, MSG_DONTWAIT);
}

/* One page of a layer's figures. A question of the wrong size is the
 * client's protocol error; a layer or expert out of range is answered
 * with -EINVAL (moectl may run against a moed serving another model). */
static void on_stats_layer(struct moe_server *s, struct session *ss,
			   const void *buf, ssize_t n)
{
	struct ipc_stats_layer q;
	struct ipc_stats_layer_reply r;
	char why[128];

	if (n != (ssize_t)sizeof(q)) {
		moe_log(MOE_LOG_WARNING,
			"pid %d: per-layer stats question of %zd bytes, expected %zu: disconnected",
			(int)ss->cred.pid, n, sizeof(q));
		session_drop(ss, "protocol error");
		return;
	}
	memcpy(&q, buf, sizeof(q));
	if (moe_serve_stats_layer(&s->st, &q, &r, why, sizeof(why)))
		moe_log(MOE_LOG_NOTICE, "pid %d: per-layer stats refused: %s",
			(int)ss->cred.pid, why);
	ipc_send(ss->sock, &r, sizeof(r), -1, MSG_DONTWAIT);
}

/* Requests clients have pushed that the dispatcher has yet to take. */
static uint32_t queued_requests(const struct moe_server *s)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];
		int k;

		if (!ss->client || ss->closing)
			continue;
		k = ipc_ring_poll(&ss->arena.sq);
		n += k > 0 ? (uint32_t)k : 0;
	}
	return n;
}

/* The read rate over the samples kept (about the last 10 s): from the
 * oldest to now. */
static void recent_reads(const struct moe_server *s, uint64_t bytes_now,
			 struct ipc_stats_live_reply *r)
{
	const struct read_rate *rr = &s->rate;
	uint32_t oldest = rr->n < RATE_SAMPLES ? 0 : rr->next;

	if (!rr->n)
		return;
	r->recent_bytes = bytes_now - rr->bytes[oldest];
	r->recent_usec = (uint64_t)(now_ns() - rr->t[oldest]) / 1000;
}

static void on_stats_live(struct moe_server *s, struct session *ss)
{
	struct ipc_stats_live_reply r;
	struct moe_store_stats st = { 0 };

	memset(&r, 0, sizeof(r));
	ipc_msg_init(&r.h, IPC_MSG_STATS_LIVE_REPLY, sizeof(r), 0);
	if (s->d.store)
		moe_store_stats(s->d.store, &st);
	r.uptime_ms = (uint64_t)(now_ns() - s->start_ns) / 1000000;
	r.queued = queued_requests(s);
	r.reads_pending = st.reads_pending;
	r.slots_busy = st.slots_busy;
	r.clients = s->n_clients;
	r.rounds = s->round;
	moe_hist_latency(&s->st.lat, &r.latency);
	r.bytes_read = st.bytes_read;
	r.read_usec = (uint64_t)(st.read_seconds * 1e6);
	recent_reads(s, st.bytes_read, &r);
	r.prefetch_issued = st.prefetch_issued;
	r.prefetch_used = st.prefetch_used;
	r.prefetch_wasted = st.prefetch_wasted;
	r.read_errors = st.read_errors;
	if (s->d.store)
		copy_str(r.policy, sizeof(r.policy), s->d.cfg->policy);
	ipc_send(ss->sock, &r, sizeof(r), -1, MSG_DONTWAIT);
}

/* A control message or a hang-up on a session's socket. */
static void on_session(struct moe_server *s, struct session *ss)
{
	char buf[IPC_MSG_MAX];
	ssize_t n;
	int type;

	while (!ss->closing) {
		n = ipc_recv(ss->sock, buf, sizeof(buf), NULL, MSG_DONTWAIT);
		if (n == -EAGAIN)
			return;
		if (n <= 0) {
			session_drop(ss, n == 0 ? "hung up" : moe_strerror((int)n));
			return;
		}
		type = ipc_msg_check(buf, (size_t)n, sizeof(struct ipc_msg_hdr));
		if (type == IPC_MSG_HELLO && !ss->client)
			on_hello(s, ss, buf, n);
		else if (type == IPC_MSG_KICK && ss->client)
			continue; /* woken: the rings are polled next */
		else if (type == IPC_MSG_STATUS && !ss->client)
			on_status(s, ss);
		else if (type == IPC_MSG_STATS && !ss->client)
			on_stats(s, ss);
		else if (type == IPC_MSG_STATS_LAYER && !ss->client)
			on_stats_layer(s, ss, buf, n);
		else if (type == IPC_MSG_STATS_LIVE && !ss->client)
			on_stats_live(s, ss);
		else if (type == IPC_MSG_BYE)
			session_drop(ss, "said bye");
		else {
			moe_log(MOE_LOG_WARNING,
				"client %s (pid %d): unexpected control message (type %d, %zd bytes): disconnected",
				ss->name, (int)ss->cred.pid, type, n);
			session_drop(ss, "protocol error");
		}
	}
}

/* ---- requests ---- */

/* Post q's completion; returns its time in moed, in microseconds. */
static uint32_t complete(struct moe_server *s, struct request *q)
{
	struct session *ss = q->ss;
	struct ipc_cqe c;
	int rc;

	memset(&c, 0, sizeof(c));
	c.id = q->d.id;
	c.status = q->status;
	c.slot = q->d.slot;
	c.gen = q->d.gen;
	c.n_tokens = q->d.n_tokens;
	c.experts_hit = q->hit;
	c.experts_missed = q->missed;
	c.k_used = q->k_used;
	c.usec = (uint32_t)((now_ns() - q->t0) / 1000);
	if (q->d.slot < ss->arena.lay.slot_count)
		ss->slot_busy[q->d.slot] = 0;
	if (q->status)
		s->c.failed++;
	s->c.busy_usec += c.usec;
	if (ss->closing)
		return c.usec;
	rc = ipc_ring_push(&ss->arena.cq, &c);
	if (rc) {
		moe_log(MOE_LOG_WARNING,
			"client %s (pid %d): completion ring %s: disconnected",
			ss->name, (int)ss->cred.pid,
			rc == -EAGAIN ? "full (more requests than its limit)" : "corrupt");
		session_drop(ss, "completion ring unusable");
		return c.usec;
	}
	ipc_bell_ring(ss->arena.cq_bell);
	return c.usec;
}

/* A descriptor refused before any work: answered at once. */
static void refuse(struct moe_server *s, struct request *q, int status,
		   const char *why)
{
	moe_log(MOE_LOG_NOTICE,
		"client %s (pid %d): request %" PRIu64 " refused: %s",
		q->ss->name, (int)q->ss->cred.pid, q->d.id, why);
	s->c.refused++;
	q->status = status;
	complete(s, q);
}

static int check_layer(const struct moe_server *s, const struct ipc_desc *d)
{
	return d->layer < s->d.m->n_layer && s->d.m->layers[d->layer].moe;
}

/* The MoE layer a client decoding a token runs after layer: the next
 * one, or the first again after the last. */
static uint32_t next_moe_layer(const struct moe_model *m, uint32_t layer)
{
	for (uint32_t l = layer + 1; l < m->n_layer; l++)
		if (m->layers[l].moe)
			return l;
	return m->first_moe_layer;
}

/* Copy descriptors out of ss's ring into the round; check each. */
static void take(struct moe_server *s, struct session *ss, int64_t t0)
{
	char why[128];

	while (s->n_rq < MAX_ROUND && !ss->closing && (!s->stop || ss->drain)) {
		struct request *q = &s->rq[s->n_rq];
		int rc = ipc_ring_pop(&ss->arena.sq, &q->d);

		if (rc == -EAGAIN)
			return;
		ss->drain -= s->stop && !rc;
		if (rc) {
			moe_log(MOE_LOG_WARNING,
				"client %s (pid %d): submission ring indices corrupt: disconnected",
				ss->name, (int)ss->cred.pid);
			session_drop(ss, "submission ring corrupt");
			return;
		}
		q->ss = ss;
		q->t0 = t0;
		ss->round = s->round;
		ss->next_layer = next_moe_layer(s->d.m, q->d.layer);
		q->seq = s->n_rq;
		q->status = 0;
		q->hit = q->missed = q->k_used = 0;
		ss->requests++;
		s->c.requests++;
		if (ipc_desc_explain(&q->d, &ss->arena, why, sizeof(why)))
			refuse(s, q, -MOE_EDESC, why);
		else if (!check_layer(s, &q->d)) {
			snprintf(why, sizeof(why), "layer %u is not a MoE layer of this model",
				 q->d.layer);
			refuse(s, q, -EINVAL, why);
		}
		else if (ss->slot_busy[q->d.slot])
			refuse(s, q, -MOE_EDESC, "slot already in use");
		else {
			ss->slot_busy[q->d.slot] = 1;
			s->c.tokens += q->d.n_tokens;
			s->n_rq++;
		}
	}
}

static int collect(struct moe_server *s)
{
	int64_t t0 = now_ns();

	s->n_rq = 0;
	s->round++;
	for (uint32_t i = 0; i < s->n_ss; i++)
		if (s->ss[i]->client && !s->ss[i]->closing)
			take(s, s->ss[i], t0);
	if (!s->n_rq)
		s->round--; /* an empty poll is not a round */
	return (int)s->n_rq;
}

static bool layer_in_round(const struct moe_server *s, uint32_t layer)
{
	for (uint32_t i = 0; i < s->n_rq; i++)
		if (s->rq[i].d.layer == layer)
			return true;
	return false;
}

/* A round is about to run. A client that had requests in the previous
 * round got its answers a moment ago, and if its next layer is one this
 * round runs, its request is likely microseconds away: waiting up to
 * batch-wait-us for it lets one pass over each expert serve both. Only
 * such clients are waited for, so clients at other layers, or a lone
 * client, cost nothing. */
static void gather(struct moe_server *s)
{
	int64_t deadline = now_ns() + (int64_t)s->d.cfg->batch_wait_us * 1000;
	uint32_t want = 0;

	if (!s->d.cfg->batch_wait_us)
		return;
	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];

		ss->expected = ss->client && !ss->closing &&
			       ss->round + 1 == s->round &&
			       layer_in_round(s, ss->next_layer);
		want += ss->expected;
	}
	while (want && s->n_rq < MAX_ROUND && now_ns() < deadline) {
		for (uint32_t i = 0; i < s->n_ss; i++) {
			struct session *ss = s->ss[i];

			if (!ss->expected || !ipc_ring_poll(&ss->arena.sq))
				continue;
			take(s, ss, now_ns());
			ss->expected = false;
			want--;
		}
		ipc_cpu_relax();
	}
}

static int reserve_rows(struct moe_server *s, size_t rows)
{
	size_t n = s->d.m->n_embd;
	void *a, *b, *c;

	if (rows <= s->cap_rows)
		return 0;
	a = realloc(s->bx, rows * n * sizeof(float));
	if (a)
		s->bx = a;
	b = realloc(s->by, rows * n * sizeof(float));
	if (b)
		s->by = b;
	c = realloc(s->routes, rows * sizeof(*s->routes));
	if (c)
		s->routes = c;
	if (!a || !b || !c)
		return -ENOMEM;
	s->cap_rows = rows;
	return 0;
}

/* Index of the first value that is not finite, or n. */
static size_t first_nonfinite(const float *x, size_t n)
{
	size_t i = 0;

	while (i < n && isfinite(x[i]))
		i++;
	return i;
}

/* Copy a request's input (and routing) out of its slot, then route it
 * unless the client routed it. The client may scribble on the slot at
 * any time: only the copies are used. */
static int stage(struct moe_server *s, struct request *q, uint32_t row,
		 struct moe_msg *err)
{
	const struct moe_layer *L = &s->d.m->layers[q->d.layer];
	uint32_t n_embd = s->d.m->n_embd, nt = q->d.n_tokens;
	float *x = s->bx + (size_t)row * n_embd;
	struct moe_route *r = s->routes + row;
	struct moe_route_opts o = { q->d.top_p, q->d.min_k, q->d.max_k };

	memcpy(x, ipc_slot_in(&q->ss->arena, q->d.slot),
	       (size_t)nt * n_embd * sizeof(float));
	size_t bad = first_nonfinite(x, (size_t)nt * n_embd);

	if (bad < (size_t)nt * n_embd)
		return moe_msgf(err, -MOE_EINVAL_INPUT,
				"input token %zu, element %zu is %g",
				bad / n_embd, bad % n_embd, (double)x[bad]);
	if (!(q->d.flags & IPC_DESC_ROUTED))
		return moe_engine_route(s->d.e, q->d.layer, x, nt, &o, r, err);
	for (uint32_t t = 0; t < nt; t++) {
		const struct ipc_route *src = ipc_slot_route(&q->ss->arena, q->d.slot);
		int rc;

		r[t].k = q->d.route_k;
		for (uint32_t i = 0; i < q->d.route_k; i++) {
			struct ipc_route p = src[(size_t)t * q->d.route_k + i];

			r[t].id[i] = p.id;
			r[t].w[i] = p.w;
		}
		rc = moe_route_check(L, &r[t], t, err);
		if (rc)
			return rc;
	}
	return 0;
}

static void figures(struct moe_server *s, struct request *q)
{
	const uint8_t *missed = moe_engine_missed(s->d.e);
	const struct moe_route *r = s->routes + q->row0;

	for (uint32_t t = 0; t < q->d.n_tokens; t++) {
		q->k_used += r[t].k;
		for (uint32_t i = 0; i < r[t].k; i++) {
			if (missed[r[t].id[i]])
				q->missed++;
			else
				q->hit++;
		}
	}
	s->c.hits += q->hit;
	s->c.misses += q->missed;
	moe_serve_stats_uses(&s->st, q->d.layer, r, q->d.n_tokens, q->hit,
			     q->missed);
}

/* Passes over expert weights that nt routed tokens needed: one per
 * distinct expert, however many of the tokens share it. */
static uint32_t count_passes(const struct moe_route *r, uint32_t nt)
{
	uint8_t seen[MOE_MAX_EXPERTS] = { 0 };
	uint32_t n = 0;

	for (uint32_t t = 0; t < nt; t++)
		for (uint32_t i = 0; i < r[t].k; i++)
			if (!seen[r[t].id[i]]) {
				seen[r[t].id[i]] = 1;
				n++;
			}
	return n;
}

static void add_passes(struct moe_server *s, uint32_t layer, uint32_t n)
{
	s->c.passes += n;
	s->st.layer[layer].passes += n;
}

static void deliver(struct moe_server *s, struct request *q, const float *y)
{
	size_t n = (size_t)q->d.n_tokens * s->d.m->n_embd;
	uint32_t us;

	if (!q->status && !q->ss->closing)
		memcpy(ipc_slot_out(&q->ss->arena, q->d.slot), y,
		       n * sizeof(float));
	us = complete(s, q);
	moe_serve_stats_done(&s->st, q->d.layer, q->d.n_tokens, q->status, us);
}

/* An engine failure (an expert's read failed) fails the batch; run its
 * requests one by one so only those that need the failing expert fail. */
static void apply_each(struct moe_server *s, struct request *qs, uint32_t n,
		       uint32_t layer)
{
	uint32_t n_embd = s->d.m->n_embd;

	for (uint32_t i = 0; i < n; i++) {
		struct request *q = &qs[i];
		struct moe_msg err = { "" };

		if (q->status)
			continue;
		q->status = moe_engine_apply(s->d.e, layer,
					     s->bx + (size_t)q->row0 * n_embd,
					     q->d.n_tokens, s->routes + q->row0,
					     s->by + (size_t)q->row0 * n_embd,
					     &err);
		if (q->status)
			moe_log(MOE_LOG_ERR, "client %s: request %" PRIu64 " failed: %s",
				q->ss->name, q->d.id, err.text);
		else {
			figures(s, q);
			add_passes(s, layer, count_passes(s->routes + q->row0,
							  q->d.n_tokens));
		}
	}
}

/* The requests of one layer, rows packed one after another. */
static void run_layer(struct moe_server *s, struct request *qs, uint32_t n)
{
	uint32_t layer = qs[0].d.layer, rows = 0, n_embd = s->d.m->n_embd;
	struct moe_msg err = { "" };
	int rc;

	for (uint32_t i = 0; i < n; i++) {
		qs[i].row0 = rows;
		rows += qs[i].d.n_tokens;
	}
	if (reserve_rows(s, rows)) {
		for (uint32_t i = 0; i < n; i++) {
			qs[i].status = -ENOMEM;
			complete(s, &qs[i]);
		}
		return;
	}
	/* Stage every request; pack those that can run. */
	rows = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct request *q = &qs[i];

		q->status = stage(s, q, rows, &err);
		if (q->status) {
			moe_log(MOE_LOG_NOTICE, "client %s: request %" PRIu64 " refused: %s",
				q->ss->name, q->d.id, err.text);
			continue;
		}
		q->row0 = rows;
		rows += q->d.n_tokens;
	}
	moe_engine_set_prefetch(s->d.e, s->d.cfg->prefetch);
	rc = rows ? moe_engine_apply(s->d.e, layer, s->bx, rows, s->routes,
				     s->by, &err) : 0;
	if (rc)
		apply_each(s, qs, n, layer);
	else {
		for (uint32_t i = 0; i < n; i++)
			if (!qs[i].status)
				figures(s, &qs[i]);
		add_passes(s, layer, count_passes(s->routes, rows));
	}
	for (uint32_t i = 0; i < n; i++)
		deliver(s, &qs[i], s->by + (size_t)qs[i].row0 * n_embd);
}

static int by_layer(const void *a, const void *b)
{
	const struct request *x = a, *y = b;

	if (x->d.layer != y->d.layer)
		return x->d.layer < y->d.layer ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq; /* arrival order */
}

static void process(struct moe_server *s)
{
	uint32_t i = 0;

	qsort(s->rq, s->n_rq, sizeof(*s->rq), by_layer);
	while (i < s->n_rq) {
		uint32_t j = i + 1;

		while (j < s->n_rq && s->rq[j].d.layer == s->rq[i].d.layer)
			j++;
		run_layer(s, s->rq + i, j - i);
		i = j;
	}
	s->n_rq = 0;
}

/* ---- signals, watchdog, reload ---- */

/* The settings as a config file would hold them: one "key = value" line
 * each, in the option table's order. NULL when out of memory. */
static char *settings_text(const struct moe_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	moe_config_dump(c, f);
	if (fclose(f)) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* Whether moed's command line set key: it overrides the file, at start
 * and on every re-read. */
static bool on_cmdline(const struct moe_server *s, const char *key)
{
	size_t n = strlen(key);

	for (int i = 1; i < s->d.argc; i++) {
		const char *a = s->d.argv[i];

		if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, key, n) == 0 &&
		    (a[2 + n] == 0 || a[2 + n] == '='))
			return true;
	}
	return false;
}

static const char *shown(const char *v)
{
	return *v ? v : "(none)";
}

struct reload_tally {
	uint32_t applied, restart, kept;
};

/* cache-mb: the store's budget is what the routers and shared experts
 * leave of it, within what its slabs were made for at start. */
static int apply_budget(struct moe_server *s, const char *to,
			struct moe_msg *err)
{
	uint64_t bytes;
	int rc;

	if (!s->d.store)
		return 0;
	rc = moe_source_expert_budget(s->d.m, strtoull(to, NULL, 10) << 20,
				      &bytes, err);
	return rc ? rc : moe_store_set_budget(s->d.store, bytes, err);
}

/* A live setting's effect beyond the value in cfg (which the dispatcher
 * reads as it goes: prefetch, batch-wait-us). 0, or an error with err
 * when it cannot take effect. */
static int apply_live(struct moe_server *s, const char *key, const char *to,
		      struct moe_msg *err)
{
	int v;

	if (strcmp(key, "cache-mb") == 0)
		return apply_budget(s, to, err);
	if (strcmp(key, "log-level") == 0) {
		v = moe_log_level_by_name(to);
		moe_log_set_level((enum moe_log_level)v);
	} else if (strcmp(key, "policy") == 0 && s->d.store) {
		v = moe_policy_by_name(to);
		moe_store_set_policy(s->d.store, (enum moe_policy)v);
	}
	return 0;
}

/* Why a setting cannot change while moed runs, for the log. */
static const char *restart_reason(const char *key)
{
	if (strcmp(key, "model") == 0 || strcmp(key, "io") == 0)
		return "the model and its reader are opened at start";
	if (strcmp(key, "socket") == 0)
		return "clients are connected to the socket in use";
	return "it is read at start";
}

/* One setting whose value in the file (to) is not the one in force
 * (from); file_sets: the file gives it a value other than the default. */
static void reload_one(struct moe_server *s, const char *key,
		       const char *from, const char *to, bool file_sets,
		       struct reload_tally *t)
{
	struct moe_msg err = { "" };
	bool say_first;

	if (on_cmdline(s, key)) {
		if (!file_sets)
			return; /* the file is silent on it */
		moe_log(MOE_LOG_NOTICE,
			"SIGHUP: %s: the file says %s, the command line's %s stays in force",
			key, shown(to), shown(from));
		t->kept++;
		return;
	}
	if (!moe_config_live(key)) {
		moe_log(MOE_LOG_NOTICE,
			"SIGHUP: %s %s -> %s needs a restart (%s); %s stays in force",
			key, shown(from), shown(to), restart_reason(key), shown(from));
		t->restart++;
		return;
	}
	if (moe_config_set(s->d.cfg, key, to, "SIGHUP", &err)) {
		moe_log(MOE_LOG_ERR, "SIGHUP: %s", err.text); /* checked by load */
		return;
	}
	/* A change of log-level is said at the more verbose of the two
	 * levels, so it shows either way. */
	say_first = strcmp(key, "log-level") == 0 &&
		    moe_log_level_by_name(to) < MOE_LOG_NOTICE;
	if (say_first)
		moe_log(MOE_LOG_NOTICE, "SIGHUP: %s %s -> %s", key, from, to);
	if (apply_live(s, key, to, &err)) {
		moe_config_set(s->d.cfg, key, from, "SIGHUP", NULL);
		moe_log(MOE_LOG_WARNING, "SIGHUP: %s %s -> %s refused: %s; %s stays in force",
			key, from, to, err.text, from);
		t->restart++;
		return;
	}
	if (!say_first)
		moe_log(MOE_LOG_NOTICE, "SIGHUP: %s %s -> %s", key, from, to);
	if ((strcmp(key, "policy") == 0 || strcmp(key, "cache-mb") == 0) &&
	    !s->d.store)
		moe_log(MOE_LOG_NOTICE,
			"SIGHUP: %s has no effect: experts come from the page cache (io = mmap)",
			key);
	t->applied++;
}

/* The dumps of the settings in force, of the file's and of the
 * defaults, compared line by line (each lists every option in one
 * order): each setting whose file value is not the one in force is taken
 * in turn. */
static void reload_diff(struct moe_server *s, const char *cur, const char *next,
			const char *dflt, struct reload_tally *t)
{
	while (*cur && *next && *dflt) {
		size_t lc = strcspn(cur, "\n"), ln = strcspn(next, "\n");
		size_t ld = strcspn(dflt, "\n");
		const char *eq = strstr(cur, " = ");
		char key[64], from[4200], to[4200];

		if ((lc != ln || memcmp(cur, next, lc)) && eq && eq < cur + lc) {
			size_t k = (size_t)(eq + 3 - cur);

			snprintf(key, sizeof(key), "%.*s", (int)(eq - cur), cur);
			snprintf(from, sizeof(from), "%.*s", (int)(lc - k), cur + k);
			snprintf(to, sizeof(to), "%.*s", (int)(ln - k), next + k);
			reload_one(s, key, from, to,
				   ln != ld || memcmp(next, dflt, ln), t);
		}
		cur += lc + (cur[lc] != 0);
		next += ln + (next[ln] != 0);
		dflt += ld + (dflt[ld] != 0);
	}
}

/* SIGHUP: read the file again over the defaults, as at start, and apply
 * what can change live (log-level, policy, prefetch, batch-wait-us,
 * cache-mb within its slabs);
 * say what changed and what needs a restart. A file that does not load
 * changes nothing. */
static void reload(struct moe_server *s)
{
	struct moe_config next, dflt;
	struct moe_msg err = { "" };
	struct reload_tally t = { 0 };
	char *cur = NULL, *nxt = NULL, *def = NULL;

	moe_notifyf("RELOADING=1\nMONOTONIC_USEC=%" PRId64, now_ns() / 1000);
	if (!s->d.config_path) {
		moe_log(MOE_LOG_NOTICE, "SIGHUP: no config file to re-read");
		goto out;
	}
	moe_config_defaults(&dflt);
	next = dflt;
	if (moe_config_load(&next, s->d.config_path, &err)) {
		moe_log(MOE_LOG_ERR, "SIGHUP: %s; keeping the settings in force",
			err.text);
		goto out;
	}
	cur = settings_text(s->d.cfg);
	nxt = settings_text(&next);
	def = settings_text(&dflt);
	if (!cur || !nxt || !def) {
		moe_log(MOE_LOG_ERR, "SIGHUP: out of memory; keeping the settings in force");
		goto out;
	}
	reload_diff(s, cur, nxt, def, &t);
	moe_log(MOE_LOG_NOTICE,
		"SIGHUP: %s re-read: %u changes applied, %u need a restart, %u overridden by the command line",
		s->d.config_path, t.applied, t.restart, t.kept);
out:
	free(cur);
	free(nxt);
	free(def);
	moe_notifyf("READY=1\nSTATUS=serving %s", s->d.cfg->model);
}

static void on_signal(struct moe_server *s)
{
	unsigned char sig;

	while (read(s->sigfd, &sig, 1) == 1) {
		if (sig == SIGHUP) {
			reload(s);
			continue;
		}
		moe_log(MOE_LOG_NOTICE, "%s: finishing submitted requests, then stopping",
			strsignal(sig));
		s->stop = true;
	}
}

/* One sample of the store's bytes read, for the recent read rate. */
static void sample_reads(struct moe_server *s)
{
	struct read_rate *rr = &s->rate;
	struct moe_store_stats st;

	if (!s->d.store)
		return;
	moe_store_stats(s->d.store, &st);
	rr->t[rr->next] = now_ns();
	rr->bytes[rr->next] = st.bytes_read;
	rr->next = (rr->next + 1) % RATE_SAMPLES;
	if (rr->n < RATE_SAMPLES)
		rr->n++;
}

static void on_timer(struct moe_server *s)
{
	uint64_t ticks;
	struct moe_plan_change ch = { 0 };

	if (read(s->timerfd, &ticks, sizeof(ticks)) < 0)
		return;
	if (s->watchdog_usec)
		moe_notify("WATCHDOG=1");
	moe_log_flush(); /* repeats whose interval is over */
	expire_hellos(s);
	sample_reads(s);
	if (s->d.plan && now_ns() - s->last_rebalance > REBALANCE_NS) {
		s->last_rebalance = now_ns();
		moe_plan_rebalance(s->d.plan, &ch);
		if (ch.swaps || ch.copies_added || ch.copies_dropped)
			moe_log(MOE_LOG_INFO,
				"rebalanced: %u swaps, %u copies added, %u dropped",
				ch.swaps, ch.copies_added, ch.copies_dropped);
		if (s->d.store) /* moved experts and copies follow */
			moe_store_replan(s->d.store);
	}
}

static void handle(struct moe_server *s, struct epoll_event *ev, int n)
{
	for (int i = 0; i < n; i++) {
		struct ev *e = ev[i].data.ptr;

		switch (e->kind) {
		case EV_LISTEN:
			if (!s->stop)
				accept_one(s);
			break;
		case EV_SIGNAL:
			on_signal(s);
			break;
		case EV_TIMER:
			on_timer(s);
			break;
		case EV_SESSION:
			on_session(s, (struct session *)e);
			break;
		}
	}
}

static void poll_events(struct moe_server *s, int timeout_ms)
{
	struct epoll_event ev[32];
	int n = epoll_wait(s->epfd, ev, 32, timeout_ms);

	if (n > 0)
		handle(s, ev, n);
	sweep(s);
}

/* Announce ourselves on every submission bell, look once more, sleep. The
 * announcement is an RMW (seq_cst) before the last look at the rings, and
 * a client's check of `waiters` is an RMW after its push: one of the two
 * sides sees the other, so no submission sleeps unseen. */
static void sleep_until_work(struct moe_server *s)
{
	bool work = false;

	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];

		if (!ss->client || ss->closing)
			continue;
		atomic_fetch_add_explicit(&ss->arena.sq_bell->waiters, 1,
					  memory_order_seq_cst);
		ss->announced = true;
		work |= ipc_ring_poll(&ss->arena.sq) != 0;
	}
	if (!work)
		poll_events(s, -1);
	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];

		if (ss->announced)
			atomic_fetch_sub_explicit(&ss->arena.sq_bell->waiters, 1,
						  memory_order_relaxed);
		ss->announced = false;
	}
}

int moe_server_run(struct moe_server *s)
{
	uint32_t idle = 0;

	moe_notifyf("READY=1\nSTATUS=serving %s", s->d.cfg->model);
	while (!s->stop) {
		if (collect(s)) {
			gather(s);
			process(s);
			idle = 0;
			poll_events(s, 0);
			continue;
		}
		if (++idle % 64 == 0)
			poll_events(s, 0);
		if (idle < SPIN_ROUNDS) {
			ipc_cpu_relax();
			continue;
		}
		sleep_until_work(s);
		idle = 0;
	}
	/* Stopping: no new clients, but what was submitted is answered;
	 * only that, or clients that keep submitting would keep us up. */
	moe_notify("STOPPING=1");
	close(s->listen_fd);
	s->listen_fd = -1;
	for (uint32_t i = 0; i < s->n_ss; i++) {
		struct session *ss = s->ss[i];
		int n = ss->client ? ipc_ring_poll(&ss->arena.sq) : 0;

		ss->drain = n > 0 ? (uint32_t)n : 0;
	}
	while (collect(s))
		process(s);
	return 0;
}

static int add_ev(struct moe_server *s, int fd, struct ev *e)
{
	struct epoll_event ee = { .events = EPOLLIN, .data.ptr = e };

	return epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee) ? -errno : 0;
}

static int start_timer(struct moe_server *s)
{
	uint64_t wd = s->watchdog_usec = moe_notify_watchdog_usec();
	/* Half the watchdog interval, and at least once a second for
	 * housekeeping (rebalancing). */
	uint64_t us = wd ? wd / 2 : 1000000;
	struct itimerspec it;

	if (us > 1000000)
		us = 1000000;
	it.it_interval.tv_sec = (time_t)(us / 1000000);
	it.it_interval.tv_nsec = (long)(us % 1000000) * 1000;
	it.it_value = it.it_interval;
	s->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (s->timerfd < 0 || timerfd_settime(s->timerfd, 0, &it, NULL))
		return -errno;
	return add_ev(s, s->timerfd, &s->timer_ev);
}

/* Signals arrive through a pipe written by their handler: libraries such
 * as OpenBLAS start threads before main, so no signal mask can steer a
 * signal to one thread, but a handler works in whichever thread runs it. */
static int sig_pipe[2] = { -1, -1 };

static void on_signal_handler(int sig)
{
	unsigned char b = (unsigned char)sig;
	int saved = errno;

	if (write(sig_pipe[1], &b, 1) < 0) {
		/* the pipe is full of signals already: nothing is lost */
	}
	errno = saved;
}

int moe_server_catch_signals(void)
{
	struct sigaction sa;
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };

	if (sig_pipe[0] < 0 && pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 3; i++)
		if (sigaction(sigs[i], &sa, NULL))
			return -errno;
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static int start_signals(struct moe_server *s)
{
	int rc = moe_server_catch_signals();

	if (rc)
		return rc;
	s->sigfd = sig_pipe[0];
	return add_ev(s, s->sigfd, &s->signal_ev);
}

int moe_server_new(struct moe_server **out, const struct moe_server_deps *d,
		   struct moe_msg *err)
{
	struct moe_server *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return moe_msgf(err, -ENOMEM, "out of memory");
	s->d = *d;
	s->listen_fd = s->sigfd = s->timerfd = -1;
	s->listen_ev.kind = EV_LISTEN;
	s->signal_ev.kind = EV_SIGNAL;
	s->timer_ev.kind = EV_TIMER;
	s->start_ns = s->last_rebalance = now_ns();
	s->rq = calloc(MAX_ROUND, sizeof(*s->rq));
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!s->rq || s->epfd < 0 || moe_serve_stats_init(&s->st, d->m)) {
		rc = moe_msgf(err, -ENOMEM, "out of memory");
		goto err;
	}
	rc = start_signals(s);
	if (!rc)
		rc = start_timer(s);
	if (rc) {
		moe_msgf(err, rc, "signals and timer: %s", moe_strerror(rc));
		goto err;
	}
	s->listen_fd = ipc_listen(d->cfg->socket, 0660, 64);
	if (s->listen_fd < 0) {
		rc = moe_msgf(err, s->listen_fd, "%s: %s", d->cfg->socket,
			      moe_strerror(s->listen_fd));
		goto err;
	}
	rc = add_ev(s, s->listen_fd, &s->listen_ev);
	if (rc)
		goto err;
	*out = s;
	return 0;
err:
	moe_server_free(s);
	return rc;
}

void moe_server_free(struct moe_server *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_ss; i++) {
		session_drop(s->ss[i], "moed stopping");
		session_close(s, s->ss[i]);
	}
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		unlink(s->d.cfg->socket);
	} else if (s->d.cfg) {
		unlink(s->d.cfg->socket);
	}
	if (s->timerfd >= 0)
		close(s->timerfd);
	if (s->epfd >= 0)
		close(s->epfd);
	free(s->ss);
	free(s->rq);
	free(s->bx);
	free(s->by);
	free(s->routes);
	moe_serve_stats_free(&s->st);
	free(s);
}
