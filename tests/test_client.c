/* libmoeclient against a fake moed: a thread in this process that speaks
 * the wire protocol with ipc/ (hello, arena, rings, bells, KICK) and
 * answers each request with y = 2x (plus, for caller-given routing, the
 * sum of id * weight per token), or refuses, stalls or dies on demand.
 * The real moed end to end is test_moed's and e2e_moectl's job. */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "shm.h"
#include "sock.h"

/* The fake model: 4 layers, layer 0 dense, 1..3 MoE. */
#define F_EMBD 64
#define F_LAYERS 4
#define F_EXPERTS 8
#define F_TOKENS 16 /* caps the fake grants */
#define F_INFLIGHT 4
#define F_ROUTE_K 4

struct fake_cfg {
	int32_t refuse;   /* answer every hello with this status; 0: accept */
	bool silent;      /* never answer a hello */
	bool hangup;      /* hang up on a hello without a word */
	int die_after_ms; /* > 0: after taking a request, die this much later */
};

struct fake {
	struct fake_cfg cfg;
	char path[128];
	int lfd;
	pthread_t th;
	atomic_bool stop, hold, die, dead;
	atomic_uint requests, kicks, byes, hellos;
	pthread_mutex_t mu;
	struct ipc_desc last; /* under mu */
	char name[32];        /* under mu: the last hello's */
};

static char dir[64];
static struct fake F;

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the fake moed ---- */

static float extra(const struct ipc_arena *a, const struct ipc_desc *d,
		   uint32_t t)
{
	const struct ipc_route *r = ipc_slot_route(a, d->slot);
	float s = 0;

	if (!(d->flags & IPC_DESC_ROUTED))
		return 0;
	for (uint32_t j = 0; j < d->route_k; j++)
		s += (float)r[t * d->route_k + j].id * r[t * d->route_k + j].w;
	return s;
}

/* y = 2x (+ routing); -MOE_EINVAL_INPUT for a value that is not finite. */
static int echo(struct ipc_arena *a, const struct ipc_desc *d)
{
	const float *x = ipc_slot_in(a, d->slot);
	float *y = ipc_slot_out(a, d->slot);

	for (uint32_t t = 0; t < d->n_tokens; t++) {
		float e = extra(a, d, t);

		for (uint32_t i = 0; i < F_EMBD; i++) {
			float v = x[t * F_EMBD + i];

			if (!isfinite(v))
				return -MOE_EINVAL_INPUT;
			y[t * F_EMBD + i] = 2 * v + e;
		}
	}
	return 0;
}

static void answer(struct ipc_arena *a, const struct ipc_desc *d)
{
	struct ipc_cqe c;

	memset(&c, 0, sizeof(c));
	c.id = d->id;
	c.slot = d->slot;
	c.gen = d->gen;
	c.n_tokens = d->n_tokens;
	c.status = ipc_desc_check(d, a);
	if (!c.status && (d->layer < 1 || d->layer >= F_LAYERS))
		c.status = -EINVAL;
	if (!c.status)
		c.status = echo(a, d);
	c.experts_hit = d->n_tokens;
	c.experts_missed = 1;
	c.usec = 7;
	c.k_used = 2 * d->n_tokens;
	assert_int_equal(ipc_ring_push(&a->cq, &c), 0);
	ipc_bell_ring(a->cq_bell);
}

/* Read what the client sent; false once it hung up or said BYE. */
static bool read_ctl(struct fake *f, int s)
{
	char buf[IPC_MSG_MAX];

	for (;;) {
		ssize_t n = ipc_recv(s, buf, sizeof(buf), NULL, MSG_DONTWAIT);
		int type;

		if (n == -EAGAIN)
			return true;
		if (n <= 0)
			return false;
		type = ipc_msg_check(buf, (size_t)n, sizeof(struct ipc_msg_hdr));
		if (type == IPC_MSG_KICK)
			atomic_fetch_add(&f->kicks, 1);
		if (type == IPC_MSG_BYE) {
			atomic_fetch_add(&f->byes, 1);
			return false;
		}
	}
}

static uint32_t cap(uint32_t asked, uint32_t limit)
{
	return asked && asked < limit ? asked : limit;
}

static int make_arena(const struct ipc_hello *h, struct ipc_arena *a,
		      struct ipc_hello_reply *r)
{
	struct ipc_arena_params p = {
		.sq_entries = 4, .cq_entries = 4,
		.slot_count = cap(h->max_inflight, F_INFLIGHT),
		.max_tokens = cap(h->max_tokens, F_TOKENS),
		.n_embd = F_EMBD,
		.max_route_k = h->max_route_k < F_ROUTE_K ? h->max_route_k
							  : F_ROUTE_K,
	};
	int rc = ipc_arena_create(a, &p);

	if (rc)
		return rc;
	memset(r, 0, sizeof(*r));
	ipc_msg_init(&r->h, IPC_MSG_HELLO_REPLY, sizeof(*r), 0);
	r->version = IPC_PROTO_VERSION_MAX;
	strcpy(r->arch, "fakemoe");
	r->n_layer = F_LAYERS;
	r->n_embd = F_EMBD;
	r->n_expert = F_EXPERTS;
	r->n_used = 2;
	r->max_k = F_EXPERTS;
	r->first_moe_layer = 1;
	r->last_moe_layer = F_LAYERS - 1;
	r->n_moe_layers = F_LAYERS - 1;
	r->moe_layers[0] = 0x0e; /* layers 1, 2, 3 */
	r->arena_size = a->size;
	r->slot_size = a->lay.slot_size;
	r->slot_count = p.slot_count;
	r->max_tokens = p.max_tokens;
	r->max_inflight = p.slot_count;
	r->max_route_k = p.max_route_k;
	return 0;
}

/* The rings of one client until it leaves; true if we "died". */
static bool serve_rings(struct fake *f, int s, struct ipc_arena *a)
{
	struct ipc_desc held[F_INFLIGHT * 2], d;
	int n_held = 0;
	int64_t die_at = 0;

	while (!atomic_load(&f->stop) && read_ctl(f, s)) {
		if (atomic_load(&f->die) || (die_at && now_ms() >= die_at))
			return true;
		if (!atomic_load(&f->hold) && !die_at && n_held) {
			for (int i = 0; i < n_held; i++)
				answer(a, &held[i]);
			n_held = 0;
		}
		if (ipc_ring_pop(&a->sq, &d)) {
			/* Sleep on the bell: the client sees `waiters` and
			 * sends a KICK, as it does to the real moed. */
			ipc_bell_wait(a->sq_bell, ipc_ring_ready, &a->sq, 64,
				      2000000);
			continue;
		}
		atomic_fetch_add(&f->requests, 1);
		pthread_mutex_lock(&f->mu);
		f->last = d;
		pthread_mutex_unlock(&f->mu);
		if (f->cfg.die_after_ms && !die_at)
			die_at = now_ms() + f->cfg.die_after_ms;
		if (atomic_load(&f->hold) || die_at)
			held[n_held++] = d;
		else
			answer(a, &d);
	}
	return false;
}

/* Wait for the client to go (a silent moed). */
static void linger(struct fake *f, int s)
{
	struct pollfd p = { .fd = s, .events = POLLIN };

	while (!atomic_load(&f->stop))
		if (poll(&p, 1, 10) > 0 && !read_ctl(f, s))
			return;
}

/* One connection; true if we "died" on it. */
static bool session(struct fake *f, int s)
{
	struct ipc_hello h;
	struct ipc_hello_reply r;
	struct ipc_arena a;
	bool died;

	ipc_sock_timeout(s, 2000);
	if (ipc_recv(s, &h, sizeof(h), NULL, 0) != sizeof(h) ||
	    ipc_msg_check(&h, sizeof(h), sizeof(h)) != IPC_MSG_HELLO)
		return false;
	atomic_fetch_add(&f->hellos, 1);
	pthread_mutex_lock(&f->mu);
	memcpy(f->name, h.name, sizeof(f->name));
	pthread_mutex_unlock(&f->mu);
	if (f->cfg.hangup)
		return false;
	if (f->cfg.silent) {
		linger(f, s);
		return false;
	}
	if (f->cfg.refuse || make_arena(&h, &a, &r)) {
		memset(&r, 0, sizeof(r));
		ipc_msg_init(&r.h, IPC_MSG_HELLO_REPLY, sizeof(r),
			     f->cfg.refuse ? f->cfg.refuse : -ENOMEM);
		ipc_send(s, &r, sizeof(r), -1, 0);
		return false;
	}
	ipc_send(s, &r, sizeof(r), a.fd, 0);
	died = serve_rings(f, s, &a);
	ipc_arena_close(&a);
	return died;
}

static void *serve(void *arg)
{
	struct fake *f = arg;
	struct pollfd p = { .fd = f->lfd, .events = POLLIN };

	while (!atomic_load(&f->stop)) {
		int s;

		if (poll(&p, 1, 10) <= 0)
			continue;
		s = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0)
			continue;
		if (session(f, s)) {
			/* Died: every socket closed, as the kernel would
			 * after a SIGKILL, the socket file left behind. */
			atomic_store(&f->dead, true);
			close(s);
			close(f->lfd);
			f->lfd = -1;
			return NULL;
		}
		close(s);
	}
	return NULL;
}

static void fake_start(const struct fake_cfg *cfg)
{
	memset(&F, 0, sizeof(F));
	if (cfg)
		F.cfg = *cfg;
	snprintf(F.path, sizeof(F.path), "%s/moed.sock", dir);
	pthread_mutex_init(&F.mu, NULL);
	F.lfd = ipc_listen(F.path, 0660, 8);
	assert_true(F.lfd >= 0);
	assert_int_equal(pthread_create(&F.th, NULL, serve, &F), 0);
}

static void fake_stop(void)
{
	atomic_store(&F.stop, true);
	pthread_join(F.th, NULL);
	if (F.lfd >= 0)
		close(F.lfd);
	unlink(F.path);
	pthread_mutex_destroy(&F.mu);
}

static int setup(void **state)
{
	fake_start(NULL);
	return 0;
}

static int teardown(void **state)
{
	fake_stop();
	return 0;
}

/* ---- helpers ---- */

static moe_client *connect_ok(uint32_t max_tokens, uint32_t timeout_ms)
{
	struct moe_connect_opts o = { .max_tokens = max_tokens,
				      .max_route_k = F_ROUTE_K,
				      .timeout_ms = timeout_ms };
	moe_client *c = NULL;

	assert_int_equal(moe_connect(&c, F.path, &o), 0);
	assert_non_null(c);
	return c;
}

static void fill(float *x, size_t n, float seed)
{
	for (size_t i = 0; i < n; i++)
		x[i] = seed + (float)i * 0.25f;
}

static void expect_doubled(const float *x, const float *y, size_t n)
{
	for (size_t i = 0; i < n; i++)
		assert_true(y[i] == 2 * x[i]);
}

static struct ipc_desc last_desc(void)
{
	struct ipc_desc d;

	pthread_mutex_lock(&F.mu);
	d = F.last;
	pthread_mutex_unlock(&F.mu);
	return d;
}

/* ---- tests ---- */

static void connect_and_info(void **state)
{
	struct moe_model_info mi;
	moe_client *c = connect_ok(8, 0);
	char name[32];

	assert_int_equal(moe_model_info(c, &mi), 0);
	assert_string_equal(mi.arch, "fakemoe");
	assert_int_equal(mi.n_layer, F_LAYERS);
	assert_int_equal(mi.n_embd, F_EMBD);
	assert_int_equal(mi.n_expert, F_EXPERTS);
	assert_int_equal(mi.n_used, 2);
	assert_int_equal(mi.max_k, F_EXPERTS);
	assert_int_equal(mi.first_moe_layer, 1);
	assert_int_equal(mi.last_moe_layer, 3);
	assert_int_equal(mi.n_moe_layers, 3);
	assert_int_equal(mi.max_tokens, 8);            /* asked */
	assert_int_equal(mi.max_inflight, F_INFLIGHT); /* moed's limit */
	assert_int_equal(mi.max_route_k, F_ROUTE_K);
	assert_int_equal(mi.proto_version, IPC_PROTO_VERSION_MAX);
	assert_int_equal(moe_layer_is_moe(c, 0), 0);
	for (uint32_t l = 1; l < F_LAYERS; l++)
		assert_int_equal(moe_layer_is_moe(c, l), 1);
	assert_int_equal(moe_layer_is_moe(c, F_LAYERS), 0);
	assert_int_equal(moe_layer_is_moe(c, 100000), 0);
	assert_int_equal(moe_layer_is_moe(NULL, 1), -EINVAL);
	assert_int_equal(moe_model_info(NULL, &mi), -EINVAL);
	assert_int_equal(moe_model_info(c, NULL), -EINVAL);
	pthread_mutex_lock(&F.mu);
	memcpy(name, F.name, sizeof(name));
	pthread_mutex_unlock(&F.mu);
	assert_string_equal(name, "test_client"); /* the process's name */
	moe_close(c);
	moe_close(NULL);
	for (int i = 0; i < 200 && !atomic_load(&F.byes); i++)
		usleep(5000);
	assert_int_equal(atomic_load(&F.byes), 1); /* close says goodbye */
}

static void connect_options(void **state)
{
	struct moe_connect_opts o = { .name = "a-rather-long-program-name-cut-here" };
	moe_client *c = NULL;
	char name[32];

	o.reserved[3] = 1;
	assert_int_equal(moe_connect(&c, F.path, &o), -EINVAL);
	assert_null(c);
	assert_int_equal(moe_connect(NULL, F.path, NULL), -EINVAL);
	o.reserved[3] = 0;
	assert_int_equal(moe_connect(&c, F.path, &o), 0);
	pthread_mutex_lock(&F.mu);
	memcpy(name, F.name, sizeof(name));
	pthread_mutex_unlock(&F.mu);
	assert_string_equal(name, "a-rather-long-program-name-cut-");
	moe_close(c);
	/* No path: $MOED_SOCKET, then the default. */
	setenv(MOE_SOCKET_ENV, F.path, 1);
	assert_int_equal(moe_connect(&c, NULL, NULL), 0);
	moe_close(c);
	setenv(MOE_SOCKET_ENV, "", 1);
	if (access(MOE_DEFAULT_SOCKET, F_OK) != 0)
		assert_int_equal(moe_connect(&c, NULL, NULL), -ENOENT);
	unsetenv(MOE_SOCKET_ENV);
}

static void forward_round_trip(void **state)
{
	moe_client *c = connect_ok(8, 0);
	float x[8 * F_EMBD], y[8 * F_EMBD];
	struct moe_result r;
	unsigned kicks;

	fill(x, 8 * F_EMBD, -3.0f);
	assert_int_equal(moe_forward(c, 1, x, 8, y, NULL, &r), 0);
	expect_doubled(x, y, 8 * F_EMBD);
	assert_int_equal(r.status, 0);
	assert_true(r.id != 0);
	assert_int_equal(r.n_tokens, 8);
	assert_int_equal(r.experts_hit, 8);
	assert_int_equal(r.experts_missed, 1);
	assert_int_equal(r.k_used, 16);
	assert_int_equal(r.usec, 7);
	assert_true(r.wall_usec > 0 && r.wall_usec < 10000000);
	/* One token, then in place (y == x), then again after the fake has
	 * gone to sleep on its bell: the client must KICK to wake it. */
	assert_int_equal(moe_forward(c, 3, x, 1, y, NULL, NULL), 0);
	expect_doubled(x, y, F_EMBD);
	memcpy(y, x, sizeof(x));
	assert_int_equal(moe_forward(c, 2, y, 8, y, NULL, NULL), 0);
	expect_doubled(x, y, 8 * F_EMBD);
	kicks = atomic_load(&F.kicks);
	for (int i = 0; i < 20 && atomic_load(&F.kicks) == kicks; i++) {
		usleep(10000); /* the fake is asleep on its bell by now */
		assert_int_equal(moe_forward(c, 2, x, 2, y, NULL, NULL), 0);
		expect_doubled(x, y, 2 * F_EMBD);
	}
	assert_true(atomic_load(&F.kicks) > kicks);
	moe_close(c);
}

static void forward_options(void **state)
{
	moe_client *c = connect_ok(8, 0);
	float x[2 * F_EMBD], y[2 * F_EMBD];
	uint32_t ids[2 * 3] = { 1, 2, 7, 0, 3, 5 };
	float w[2 * 3] = { 0.5f, 0.25f, 1.0f, 2.0f, -1.0f, 0.125f };
	struct moe_req_opts o = { .top_p = 0.75f, .min_k = 1, .max_k = 3 };
	struct ipc_desc d;

	fill(x, 2 * F_EMBD, 1.0f);
	assert_int_equal(moe_forward(c, 1, x, 2, y, &o, NULL), 0);
	d = last_desc();
	assert_true(d.top_p == 0.75f);
	assert_int_equal(d.min_k, 1);
	assert_int_equal(d.max_k, 3);
	assert_int_equal(d.flags, 0);
	/* Caller-given routing reaches moed: the fake adds sum(id * w). */
	memset(&o, 0, sizeof(o));
	o.route_k = 3;
	o.route_ids = ids;
	o.route_w = w;
	assert_int_equal(moe_forward(c, 2, x, 2, y, &o, NULL), 0);
	d = last_desc();
	assert_int_equal(d.flags, IPC_DESC_ROUTED);
	assert_int_equal(d.route_k, 3);
	for (int t = 0; t < 2; t++) {
		float e = 0;

		for (int j = 0; j < 3; j++)
			e += (float)ids[t * 3 + j] * w[t * 3 + j];
		for (int i = 0; i < F_EMBD; i++)
			assert_true(y[t * F_EMBD + i] == 2 * x[t * F_EMBD + i] + e);
	}
	moe_close(c);
}

/* A request moed fails comes back as its status; y is not written. */
static void request_fails(void **state)
{
	moe_client *c = connect_ok(4, 0);
	float x[4 * F_EMBD], y[4 * F_EMBD];
	struct moe_result r;

	fill(x, 4 * F_EMBD, 0.5f);
	x[70] = NAN;
	memset(y, 0x5a, sizeof(y));
	assert_int_equal(moe_forward(c, 1, x, 4, y, NULL, &r), -MOE_EINVAL_INPUT);
	assert_int_equal(r.status, -MOE_EINVAL_INPUT);
	assert_int_equal(((unsigned char *)y)[0], 0x5a);
	x[70] = 1.0f;
	assert_int_equal(moe_forward(c, 1, x, 4, y, NULL, &r), 0); /* goes on */
	moe_close(c);
}

static void several_in_flight(void **state)
{
	moe_client *c = connect_ok(4, 0);
	float x[F_INFLIGHT][4 * F_EMBD], y[F_INFLIGHT][4 * F_EMBD];
	uint64_t id[F_INFLIGHT], extra_id;
	struct moe_result r[F_INFLIGHT];
	int got = 0, n;

	atomic_store(&F.hold, true); /* let them pile up */
	for (int i = 0; i < F_INFLIGHT; i++) {
		fill(x[i], 4 * F_EMBD, (float)i * 100);
		assert_int_equal(moe_submit(c, 1 + i % 3, x[i], 4, y[i], NULL,
					    &id[i]), 0);
		for (int j = 0; j < i; j++)
			assert_true(id[i] != id[j]);
	}
	assert_int_equal(moe_submit(c, 1, x[0], 4, y[0], NULL, &extra_id),
			 -EBUSY);
	assert_int_equal(moe_poll(c, r, F_INFLIGHT), 0);
	assert_int_equal(moe_wait(c, id[2], r, 50), -ETIMEDOUT);
	atomic_store(&F.hold, false);
	/* The third first, then the first, then whatever comes. */
	assert_int_equal(moe_wait(c, id[2], &r[0], -1), 0);
	assert_int_equal(r[0].id, id[2]);
	expect_doubled(x[2], y[2], 4 * F_EMBD);
	assert_int_equal(moe_wait(c, id[2], &r[0], 0), -ENOENT); /* collected */
	assert_int_equal(moe_wait(c, id[0], &r[0], -1), 0);
	assert_int_equal(r[0].id, id[0]);
	expect_doubled(x[0], y[0], 4 * F_EMBD);
	for (int tries = 0; got < 2 && tries < 1000; tries++) {
		n = moe_poll(c, r + got, F_INFLIGHT);
		assert_true(n >= 0);
		got += n;
		if (!n)
			usleep(1000);
	}
	assert_int_equal(got, 2);
	assert_true((r[0].id == id[1] && r[1].id == id[3]) ||
		    (r[0].id == id[3] && r[1].id == id[1]));
	expect_doubled(x[1], y[1], 4 * F_EMBD);
	expect_doubled(x[3], y[3], 4 * F_EMBD);
	assert_int_equal(moe_wait(c, MOE_WAIT_ANY, r, 0), -ENOENT);
	assert_int_equal(moe_wait(c, 12345, r, 0), -ENOENT);
	/* Every slot is back: ANY collects a new one. */
	for (int i = 0; i < F_INFLIGHT; i++)
		assert_int_equal(moe_submit(c, 2, x[i], 4, y[i], NULL, NULL), 0);
	for (int i = 0; i < F_INFLIGHT; i++)
		assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &r[i], -1), 0);
	for (int i = 0; i < F_INFLIGHT; i++)
		expect_doubled(x[i], y[i], 4 * F_EMBD);
	moe_close(c);
}

static void zero_copy_slots(void **state)
{
	moe_client *c = connect_ok(8, 0);
	struct moe_slot s, more[F_INFLIGHT];
	struct moe_result r;
	float x[F_EMBD], want[8 * F_EMBD];
	uint64_t id;

	assert_int_equal(moe_slot_acquire(c, &s), 0);
	assert_int_equal(s.max_tokens, 8);
	assert_int_equal(s.n_embd, F_EMBD);
	fill(s.in, 8 * F_EMBD, 2.0f);
	memcpy(want, s.in, sizeof(want));
	assert_int_equal(moe_submit_slot(c, s.index, 1, 8, NULL, &id), 0);
	/* In flight: neither resubmitted nor released. */
	assert_int_equal(moe_submit_slot(c, s.index, 1, 8, NULL, NULL), -EBUSY);
	assert_int_equal(moe_slot_release(c, s.index), -EBUSY);
	assert_int_equal(moe_wait(c, id, &r, -1), 0);
	assert_int_equal(r.slot, s.index);
	expect_doubled(want, s.out, 8 * F_EMBD);
	/* The slot stays ours: feed its output back in. */
	memcpy(s.in, s.out, 3 * F_EMBD * sizeof(float));
	memcpy(want, s.in, 3 * F_EMBD * sizeof(float));
	assert_int_equal(moe_submit_slot(c, s.index, 3, 3, NULL, &id), 0);
	assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &r, -1), 0);
	assert_int_equal(r.id, id);
	expect_doubled(want, s.out, 3 * F_EMBD);
	/* Held slots count against the limit. */
	for (int i = 1; i < F_INFLIGHT; i++)
		assert_int_equal(moe_slot_acquire(c, &more[i]), 0);
	assert_int_equal(moe_slot_acquire(c, &more[0]), -EBUSY);
	fill(x, F_EMBD, 0);
	assert_int_equal(moe_submit(c, 1, x, 1, x, NULL, NULL), -EBUSY);
	assert_int_equal(moe_forward(c, 1, x, 1, x, NULL, NULL), -EBUSY);
	for (int i = 1; i < F_INFLIGHT; i++)
		assert_int_equal(moe_slot_release(c, more[i].index), 0);
	assert_int_equal(moe_slot_release(c, s.index), 0);
	assert_int_equal(moe_slot_release(c, s.index), -EINVAL); /* not held */
	assert_int_equal(moe_submit_slot(c, s.index, 1, 1, NULL, NULL), -EINVAL);
	assert_int_equal(moe_submit_slot(c, 999, 1, 1, NULL, NULL), -EINVAL);
	assert_int_equal(moe_forward(c, 1, x, 1, x, NULL, NULL), 0);
	moe_close(c);
}

/* Everything moed would refuse is refused here, before it is sent. */
static void bad_arguments(void **state)
{
	moe_client *c = connect_ok(8, 0);
	float x[9 * F_EMBD] = { 0 }, y[9 * F_EMBD];
	uint32_t ids[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
	float w[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
	struct moe_req_opts o;
	struct moe_slot s;
	unsigned before = atomic_load(&F.requests);

	assert_int_equal(moe_forward(c, 0, x, 1, y, NULL, NULL), -EINVAL); /* dense */
	assert_int_equal(moe_forward(c, F_LAYERS, x, 1, y, NULL, NULL), -EINVAL);
	assert_int_equal(moe_forward(c, 1, x, 0, y, NULL, NULL), -EINVAL);
	assert_int_equal(moe_forward(c, 1, x, 9, y, NULL, NULL), -E2BIG);
	assert_int_equal(moe_forward(c, 1, NULL, 1, y, NULL, NULL), -EINVAL);
	assert_int_equal(moe_forward(c, 1, x, 1, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(moe_forward(NULL, 1, x, 1, y, NULL, NULL), -EINVAL);
	o = (struct moe_req_opts){ .top_p = 1.5f };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	o = (struct moe_req_opts){ .top_p = NAN };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	o = (struct moe_req_opts){ .min_k = 3, .max_k = 2 };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	o = (struct moe_req_opts){ .max_k = F_EXPERTS + 1 };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	o = (struct moe_req_opts){ .route_k = F_ROUTE_K + 1, .route_ids = ids,
				   .route_w = w };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -E2BIG);
	o = (struct moe_req_opts){ .route_k = 2, .route_ids = ids };
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	o = (struct moe_req_opts){ .route_k = 2, .route_ids = ids, .route_w = w };
	ids[3] = F_EXPERTS; /* token 1's second expert does not exist */
	assert_int_equal(moe_forward(c, 1, x, 2, y, &o, NULL), -EINVAL);
	ids[3] = 3;
	w[1] = INFINITY;
	assert_int_equal(moe_forward(c, 1, x, 2, y, &o, NULL), -EINVAL);
	w[1] = 1;
	o = (struct moe_req_opts){ 0 };
	o.reserved[7] = 1;
	assert_int_equal(moe_forward(c, 1, x, 1, y, &o, NULL), -EINVAL);
	assert_int_equal(moe_submit(c, 0, x, 1, y, NULL, NULL), -EINVAL);
	assert_int_equal(moe_slot_acquire(c, &s), 0);
	assert_int_equal(moe_submit_slot(c, s.index, 0, 1, NULL, NULL), -EINVAL);
	assert_int_equal(moe_submit_slot(c, s.index, 1, 9, NULL, NULL), -E2BIG);
	assert_int_equal(moe_poll(c, NULL, 1), -EINVAL);
	assert_int_equal(moe_wait(NULL, 1, NULL, 0), -EINVAL);
	usleep(20000);
	assert_int_equal(atomic_load(&F.requests), before); /* nothing sent */
	o = (struct moe_req_opts){ .route_k = 2, .route_ids = ids, .route_w = w };
	assert_int_equal(moe_forward(c, 1, x, 2, y, &o, NULL), 0); /* and it works */
	moe_close(c);
}

/* moed dies with a request in flight: the blocked call returns EDEAD
 * promptly, every later call too; a new moed takes a new connection. */
static void moed_dies(void **state)
{
	struct fake_cfg cfg = { .die_after_ms = 100 };
	struct moe_result r;
	float x[2 * F_EMBD], y[2 * F_EMBD];
	struct moe_model_info mi;
	moe_client *c;
	int64_t t0;
	uint64_t id;

	fake_stop();
	fake_start(&cfg);
	c = connect_ok(4, 0);
	fill(x, 2 * F_EMBD, 1.0f);
	t0 = now_ms();
	assert_int_equal(moe_forward(c, 1, x, 2, y, NULL, NULL), -MOE_EDEAD);
	assert_true(atomic_load(&F.dead));
	/* Died 100 ms in; noticed within about 100 ms more. */
	assert_true(now_ms() - t0 < 100 + 400);
	assert_int_equal(moe_forward(c, 1, x, 2, y, NULL, NULL), -MOE_EDEAD);
	assert_int_equal(moe_submit(c, 1, x, 2, y, NULL, &id), -MOE_EDEAD);
	assert_int_equal(moe_poll(c, &r, 1), -MOE_EDEAD);
	assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &r, 0), -ENOENT);
	assert_int_equal(moe_model_info(c, &mi), 0); /* facts are kept */
	moe_close(c);
	/* Nobody listens at the path now. */
	assert_int_equal(moe_connect(&c, F.path, NULL), -ECONNREFUSED);
	fake_stop();
	fake_start(NULL);
	c = connect_ok(4, 0);
	assert_int_equal(moe_forward(c, 1, x, 2, y, NULL, NULL), 0);
	expect_doubled(x, y, 2 * F_EMBD);
	moe_close(c);
}

/* The same, noticed by a waiter (submit / wait) and by a poller. */
static void moed_dies_async(void **state)
{
	struct moe_result r;
	float x[F_EMBD], y[F_EMBD];
	moe_client *c = connect_ok(4, 0);
	uint64_t id, id2;
	int64_t t0;
	int rc;

	fill(x, F_EMBD, 3.0f);
	assert_int_equal(moe_forward(c, 2, x, 1, y, NULL, NULL), 0);
	atomic_store(&F.hold, true);
	assert_int_equal(moe_submit(c, 2, x, 1, y, NULL, &id), 0);
	assert_int_equal(moe_submit(c, 3, x, 1, y, NULL, &id2), 0);
	usleep(20000);
	atomic_store(&F.die, true);
	t0 = now_ms();
	assert_int_equal(moe_wait(c, id, &r, 10000), -MOE_EDEAD);
	assert_true(now_ms() - t0 < 400);
	assert_int_equal(moe_wait(c, id2, &r, 10000), -MOE_EDEAD);
	do {
		rc = moe_poll(c, &r, 1);
	} while (rc == 0 && now_ms() - t0 < 2000);
	assert_int_equal(rc, -MOE_EDEAD);
	moe_close(c);
	fake_stop();
	fake_start(NULL);
}

static int stuffed[64], n_stuffed;

/* Stop the fake from accepting, then fill its listen backlog. */
static int full_backlog(const char *path)
{
	atomic_store(&F.stop, true);
	pthread_join(F.th, NULL);
	while (n_stuffed < 64) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);

		strcpy(sa.sun_path, path);
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(s);
			return errno == EAGAIN ? 0 : -errno;
		}
		stuffed[n_stuffed++] = s;
	}
	return -ENOSPC;
}

/* Empty the backlog and serve again. */
static void release_backlog(void)
{
	while (n_stuffed)
		close(stuffed[--n_stuffed]);
	atomic_store(&F.stop, false);
	assert_int_equal(pthread_create(&F.th, NULL, serve, &F), 0);
}

/* A moed that is alive but does not answer: bounded waits. */
static void moed_stalls(void **state)
{
	struct fake_cfg silent = { .silent = true };
	struct moe_connect_opts o = { .timeout_ms = 150 };
	float x[F_EMBD], y[F_EMBD];
	struct moe_result r;
	struct moe_slot s[F_INFLIGHT];
	moe_client *c;
	int64_t t0;
	uint64_t id;
	int n = 0;

	/* The request times out; the slot comes back once moed answers. */
	c = connect_ok(4, 150);
	fill(x, F_EMBD, 1.0f);
	atomic_store(&F.hold, true);
	t0 = now_ms();
	assert_int_equal(moe_forward(c, 1, x, 1, y, NULL, NULL), -ETIMEDOUT);
	assert_true(now_ms() - t0 >= 140 && now_ms() - t0 < 1000);
	assert_int_equal(moe_submit(c, 1, x, 1, y, NULL, &id), 0);
	t0 = now_ms();
	assert_int_equal(moe_wait(c, id, &r, 60), -ETIMEDOUT);
	assert_true(now_ms() - t0 >= 55);
	atomic_store(&F.hold, false);
	assert_int_equal(moe_wait(c, id, &r, 5000), 0); /* still in flight */
	assert_int_equal(r.id, id);
	assert_int_equal(moe_wait(c, MOE_WAIT_ANY, &r, 0), -ENOENT); /* abandoned: not ours */
	for (int tries = 0; n < F_INFLIGHT && tries < 500; tries++) {
		if (moe_slot_acquire(c, &s[n]) == 0)
			n++;
		else
			usleep(2000);
	}
	assert_int_equal(n, F_INFLIGHT);
	moe_close(c);
	/* A moed that no longer accepts: its backlog full, connect() would
	 * block for ever without a bound. */
	fake_stop();
	fake_start(NULL);
	assert_int_equal(full_backlog(F.path), 0);
	t0 = now_ms();
	assert_int_equal(moe_connect(&c, F.path, &o), -ETIMEDOUT);
	assert_true(now_ms() - t0 >= 140 && now_ms() - t0 < 1000);
	release_backlog();
	/* A moed that never answers the hello. */
	fake_stop();
	fake_start(&silent);
	t0 = now_ms();
	assert_int_equal(moe_connect(&c, F.path, &o), -ETIMEDOUT);
	assert_true(now_ms() - t0 < 1000);
	fake_stop();
	fake_start(NULL);
}

static void refusals(void **state)
{
	static const int32_t codes[] = { -EPERM, -EUSERS, -MOE_EVERSION,
					 -EINVAL, -ENOMEM };
	struct fake_cfg cfg = { 0 };
	char longpath[256];
	moe_client *c = NULL;

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		cfg.refuse = codes[i];
		fake_stop();
		fake_start(&cfg);
		assert_int_equal(moe_connect(&c, F.path, NULL), codes[i]);
		assert_null(c);
	}
	cfg = (struct fake_cfg){ .hangup = true };
	fake_stop();
	fake_start(&cfg);
	assert_int_equal(moe_connect(&c, F.path, NULL), -MOE_EDEAD);
	fake_stop();
	fake_start(NULL);
	snprintf(longpath, sizeof(longpath), "%s/%0150d", dir, 0);
	assert_int_equal(moe_connect(&c, longpath, NULL), -ENAMETOOLONG);
	snprintf(longpath, sizeof(longpath), "%s/nobody.sock", dir);
	assert_int_equal(moe_connect(&c, longpath, NULL), -ENOENT);
	assert_null(c);
	assert_string_equal(moe_strerror(-MOE_EDEAD), "moed has gone away");
	assert_string_equal(moe_strerror(-MOE_EVERSION), "protocol version mismatch");
}

/* Only the moe_ API leaves the library: the ipc layer inside stays
 * private (the test's own copy, linked statically, is not the one). */
static void exports_only_api(void **state)
{
	static const char *hidden[] = { "ipc_ring_push", "ipc_arena_attach",
					"ipc_bell_wait", "ipc_connect",
					"client_now", "client_fail" };
	void *h = dlopen("libmoeclient.so.1", RTLD_NOW | RTLD_NOLOAD);

	assert_non_null(h); /* loaded by its SONAME */
	assert_non_null(dlsym(h, "moe_forward"));
	assert_non_null(dlsym(h, "moe_strerror"));
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
		assert_null(dlsym(h, hidden[i]));
	dlclose(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(connect_and_info, setup, teardown),
		cmocka_unit_test_setup_teardown(connect_options, setup, teardown),
		cmocka_unit_test_setup_teardown(forward_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(forward_options, setup, teardown),
		cmocka_unit_test_setup_teardown(request_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(several_in_flight, setup, teardown),
		cmocka_unit_test_setup_teardown(zero_copy_slots, setup, teardown),
		cmocka_unit_test_setup_teardown(bad_arguments, setup, teardown),
		cmocka_unit_test_setup_teardown(moed_dies, setup, teardown),
		cmocka_unit_test_setup_teardown(moed_dies_async, setup, teardown),
		cmocka_unit_test_setup_teardown(moed_stalls, setup, teardown),
		cmocka_unit_test_setup_teardown(refusals, setup, teardown),
		cmocka_unit_test(exports_only_api),
	};
	int rc;

	snprintf(dir, sizeof(dir), "%s/moe-client-XXXXXX",
		 getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	rmdir(dir);
	return rc;
}
