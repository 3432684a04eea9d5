/* moe-bench's clients (see bench_load.h). The parent asks moed for the
 * model's shape once, sizes every record up front (the number of
 * requests is known from the options), and puts the records, the
 * experts of each request and the barrier in memory shared with the
 * clients, so that threads and forked processes run the same code. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_cleanup.h"
#include "bench_load.h"

/* What the clients share with the parent and each other. The barrier is
 * a counter and a generation polled with short sleeps, not a pthread
 * barrier, so that an abort (a client that failed to start, a client
 * process that died) releases everyone instead of leaving them waiting;
 * it is crossed twice a run, outside the timed work. */
struct shared {
	_Atomic uint32_t bar_count, bar_gen;
	_Atomic uint64_t progress; /* tokens through every layer */
	_Atomic int abort;         /* a client failed: the others stop */
	_Atomic uint32_t finished; /* clients done (thread mode) */
};

/* One client's outcome, written by the client, read after it is done. */
struct client_out {
	int rc;
	char msg[MOE_MSG_MAX];
	int64_t t_start, t_decode, t_end;
	uint64_t prefill_tokens, decode_tokens;
};

/* Read-only once the clients start. */
struct plan {
	const struct bench_load_opts *o;
	struct moe_model_info mi;
	uint32_t *layers;         /* the MoE layers */
	uint32_t n_moe;
	uint32_t k;               /* experts per token */
	uint32_t per_req_ids_prefill, per_req_ids_decode;
	size_t *rec_base, *ids_base; /* per client, into rec and ids */
	size_t n_rec, n_ids;
	struct bench_rec *rec;    /* shared */
	uint32_t *ids;            /* shared */
	struct client_out *out;   /* shared, per client */
	struct shared *sh;
};

struct stream {
	uint32_t left;       /* tokens (decode) or prompts (prefill) to go */
	uint32_t ntok;       /* rows per request */
	uint32_t li;         /* index into plan.layers */
	int busy;
	uint64_t id;
	size_t rec;          /* record of the request in flight */
	uint64_t rng;
	float *x, *y;
	uint32_t *route_ids;
	float *route_w;
	struct bench_trace *gen;
};

struct client {
	const struct plan *p;
	uint32_t c;
	moe_client *mc;
	struct stream *st;
	struct bench_route_scratch *rs;
	unsigned char *seen;
	size_t next_rec, next_ids;
	struct client_out *out;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t next64(uint64_t *s)
{
	return mix64(*s += 0x9e3779b97f4a7c15ull);
}

/* Memory the clients share whether they are threads or processes. */
static void *shared_alloc(size_t n)
{
	void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void shared_free(void *p, size_t n)
{
	if (p)
		munmap(p, n ? n : 1);
}

/* Wait until all n clients arrive, or until the run is aborted. */
static void barrier(struct shared *sh, uint32_t n)
{
	/* Read before arriving: the last to arrive bumps it only after
	 * everyone has. B1: pairs with the release in the bump (B2). */
	uint32_t gen = atomic_load_explicit(&sh->bar_gen, memory_order_acquire);

	if (atomic_fetch_add_explicit(&sh->bar_count, 1, memory_order_acq_rel) + 1 == n) {
		atomic_store_explicit(&sh->bar_count, 0, memory_order_relaxed);
		/* B2: the reset above is seen by whoever sees the new gen. */
		atomic_fetch_add_explicit(&sh->bar_gen, 1, memory_order_release);
		return;
	}
	while (atomic_load_explicit(&sh->bar_gen, memory_order_acquire) == gen &&
	       !atomic_load_explicit(&sh->abort, memory_order_relaxed))
		usleep(200);
}

/* ---- one client ---- */

static int fail(struct client *cl, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct client *cl, int rc, const char *fmt, ...)
{
	va_list ap;

	if (!cl->out->rc) {
		cl->out->rc = rc;
		va_start(ap, fmt);
		vsnprintf(cl->out->msg, sizeof(cl->out->msg), fmt, ap);
		va_end(ap);
	}
	atomic_store_explicit(&cl->p->sh->abort, 1, memory_order_relaxed);
	return rc;
}

static uint32_t decode_share(const struct plan *p, uint32_t g)
{
	uint32_t n = p->o->clients * p->o->inflight;

	return p->o->tokens / n + (g < p->o->tokens % n);
}

static int stream_init(struct client *cl, struct stream *s, uint32_t g)
{
	const struct plan *p = cl->p;
	uint32_t rows = p->o->prefill > 1 ? p->o->prefill : 1;
	struct bench_trace_opts to = p->o->trace;

	s->rng = mix64(p->o->seed * 0x100000001b3ull + g + 1);
	s->x = malloc((size_t)rows * p->mi.n_embd * sizeof(float));
	s->y = malloc((size_t)rows * p->mi.n_embd * sizeof(float));
	if (!s->x || !s->y)
		return -ENOMEM;
	if (p->o->kind != BENCH_TRACE)
		return 0;
	s->route_ids = malloc((size_t)rows * p->k * sizeof(uint32_t));
	s->route_w = malloc((size_t)rows * p->k * sizeof(float));
	if (!s->route_ids || !s->route_w)
		return -ENOMEM;
	for (size_t i = 0; i < (size_t)rows * p->k; i++)
		s->route_w[i] = 1.0f / (float)p->k;
	to.n_layer = p->n_moe;
	to.n_expert = p->mi.n_expert;
	to.k = p->k;
	to.seed = s->rng ^ 0x5eedull;
	return bench_trace_new(&s->gen, &to);
}

static int connect_client(struct client *cl)
{
	const struct plan *p = cl->p;
	const struct bench_load_opts *o = p->o;
	struct moe_connect_opts co = {
		.max_tokens = o->prefill > 1 ? o->prefill : 1,
		.max_inflight = o->inflight,
		.max_route_k = o->kind == BENCH_TRACE ? p->k : 0,
		.timeout_ms = o->timeout_ms,
		.name = "moe-bench",
	};
	struct moe_model_info mi;
	int rc = moe_connect(&cl->mc, o->sock, &co);

	if (rc)
		return fail(cl, rc, "client %u: cannot connect to moed at %s: %s",
			    cl->c, o->sock, moe_strerror(rc));
	moe_model_info(cl->mc, &mi);
	if (mi.max_tokens < co.max_tokens || mi.max_inflight < co.max_inflight ||
	    mi.max_route_k < co.max_route_k)
		return fail(cl, -E2BIG, "client %u: moed granted %u tokens per request, %u in flight, routing %u wide (asked %u, %u, %u)",
			    cl->c, mi.max_tokens, mi.max_inflight, mi.max_route_k,
			    co.max_tokens, co.max_inflight, co.max_route_k);
	return 0;
}

static int client_open(struct client *cl)
{
	const struct plan *p = cl->p;
	uint32_t S = p->o->inflight;
	int rc = connect_client(cl);

	if (rc)
		return rc;
	cl->st = calloc(S, sizeof(*cl->st));
	cl->seen = calloc(p->mi.n_expert, 1);
	if (p->o->router)
		cl->rs = bench_route_scratch_new(p->o->router,
						 p->o->prefill > 1 ? p->o->prefill : 1);
	if (!cl->st || !cl->seen || (p->o->router && !cl->rs))
		return fail(cl, -ENOMEM, "client %u: out of memory", cl->c);
	for (uint32_t s = 0; s < S; s++) {
		rc = stream_init(cl, &cl->st[s], cl->c * S + s);
		if (rc)
			return fail(cl, rc, "client %u: %s", cl->c, moe_strerror(rc));
	}
	return 0;
}

static void client_close(struct client *cl)
{
	for (uint32_t s = 0; cl->st && s < cl->p->o->inflight; s++) {
		free(cl->st[s].x);
		free(cl->st[s].y);
		free(cl->st[s].route_ids);
		free(cl->st[s].route_w);
		bench_trace_free(cl->st[s].gen);
	}
	free(cl->st);
	free(cl->seen);
	bench_route_scratch_free(cl->rs);
	moe_close(cl->mc);
}

/* A new token (or prompt): random rows in [-1, 1), the first layer. */
static void start_token(const struct plan *p, struct stream *s)
{
	size_t n = (size_t)s->ntok * p->mi.n_embd;

	for (size_t i = 0; i < n; i++)
		s->x[i] = (float)((int64_t)(next64(&s->rng) >> 40) - (1 << 23)) * 0x1p-23f;
	s->li = 0;
}

/* The request's distinct experts into the shared pool. */
static uint32_t record_ids(struct client *cl, struct stream *s, uint32_t layer,
			   uint32_t *dst, uint32_t cap)
{
	const struct plan *p = cl->p;
	uint32_t n = 0;

	if (p->o->kind == BENCH_TRACE) {
		memset(cl->seen, 0, p->mi.n_expert);
		for (size_t i = 0; i < (size_t)s->ntok * p->k; i++)
			if (!cl->seen[s->route_ids[i]] && n < cap) {
				cl->seen[s->route_ids[i]] = 1;
				dst[n++] = s->route_ids[i];
			}
		return n;
	}
	if (!p->o->router)
		return 0;
	/* Never more than ntok * k: within cap by construction. */
	return bench_route_experts(p->o->router, cl->rs, layer, s->x, s->ntok, dst);
}

static int submit(struct client *cl, struct stream *s, int prefill)
{
	const struct plan *p = cl->p;
	uint32_t layer = p->layers[s->li];
	uint32_t cap = prefill ? p->per_req_ids_prefill : p->per_req_ids_decode;
	struct moe_req_opts ro = { 0 };
	struct bench_rec *r;
	int trace = p->o->kind == BENCH_TRACE, rc;

	if (cl->next_rec >= p->rec_base[cl->c + 1] ||
	    cl->next_ids + cap > p->ids_base[cl->c + 1])
		return fail(cl, -EOVERFLOW, "client %u: more requests than planned", cl->c);
	if (trace) {
		for (uint32_t t = 0; t < s->ntok; t++)
			bench_trace_next(s->gen, s->li, s->route_ids + (size_t)t * p->k);
		ro.route_k = p->k;
		ro.route_ids = s->route_ids;
		ro.route_w = s->route_w;
	}
	s->rec = cl->next_rec++;
	r = &p->rec[s->rec];
	memset(r, 0, sizeof(*r));
	r->layer = layer;
	r->n_tokens = s->ntok;
	r->prefill = (uint8_t)prefill;
	r->ids_off = (uint32_t)cl->next_ids;
	r->n_ids = record_ids(cl, s, layer, p->ids + cl->next_ids, cap);
	cl->next_ids += r->n_ids;
	rc = moe_submit(cl->mc, layer, s->x, s->ntok, trace ? NULL : s->y,
			trace ? &ro : NULL, &s->id);
	if (rc)
		return fail(cl, rc, "client %u: submitting layer %u (%u tokens): %s",
			    cl->c, layer, s->ntok, moe_strerror(rc));
	s->busy = 1;
	return 0;
}

/* A completion: record it, move the residual stream on, and either go to
 * the next layer or finish the token. */
static void complete(struct client *cl, struct stream *s,
		     const struct moe_result *res, int prefill)
{
	const struct plan *p = cl->p;
	struct bench_rec *r = &p->rec[s->rec];
	size_t n = (size_t)s->ntok * p->mi.n_embd;

	r->t_done = now_ns();
	r->wall_usec = res->wall_usec;
	r->usec = res->usec;
	r->hit = res->experts_hit;
	r->miss = res->experts_missed;
	s->busy = 0;
	if (p->o->kind == BENCH_ROUTER)
		for (size_t i = 0; i < n; i++)
			s->x[i] += (float)p->o->alpha * s->y[i];
	if (++s->li < p->n_moe)
		return;
	atomic_fetch_add_explicit(&p->sh->progress, s->ntok, memory_order_relaxed);
	if (prefill)
		cl->out->prefill_tokens += s->ntok;
	else
		cl->out->decode_tokens += s->ntok;
	if (--s->left)
		start_token(p, s);
}

static struct stream *stream_of(struct client *cl, uint64_t id)
{
	for (uint32_t s = 0; s < cl->p->o->inflight; s++)
		if (cl->st[s].busy && cl->st[s].id == id)
			return &cl->st[s];
	return NULL;
}

static int phase(struct client *cl, int prefill)
{
	const struct plan *p = cl->p;
	uint32_t active = 0;
	int rc = 0;

	for (uint32_t s = 0; s < p->o->inflight; s++) {
		struct stream *st = &cl->st[s];

		st->ntok = prefill ? p->o->prefill : 1;
		st->left = prefill ? 1 : decode_share(p, cl->c * p->o->inflight + s);
		if (st->left) {
			start_token(p, st);
			active++;
		}
	}
	while (!rc && active) {
		struct moe_result res;
		struct stream *st;

		if (atomic_load_explicit(&p->sh->abort, memory_order_relaxed))
			return -ECANCELED;
		for (uint32_t s = 0; !rc && s < p->o->inflight; s++)
			if (!cl->st[s].busy && cl->st[s].left)
				rc = submit(cl, &cl->st[s], prefill);
		if (rc)
			break;
		rc = moe_wait(cl->mc, MOE_WAIT_ANY, &res, -1);
		if (rc)
			return fail(cl, rc, "client %u: waiting for moed: %s", cl->c,
				    moe_strerror(rc));
		st = stream_of(cl, res.id);
		if (!st)
			return fail(cl, -EPROTO, "client %u: a completion for request %" PRIu64 " it did not send",
				    cl->c, res.id);
		if (res.status)
			return fail(cl, res.status, "client %u: moed failed a request for layer %u: %s",
				    cl->c, p->rec[st->rec].layer, moe_strerror(res.status));
		complete(cl, st, &res, prefill);
		active -= !st->left;
	}
	return rc;
}

/* Every client reaches every barrier, failed or not: a client that
 * stopped early must not leave the others waiting. */
static void client_main(const struct plan *p, uint32_t c)
{
	struct client cl = { .p = p, .c = c, .out = &p->out[c],
			     .next_rec = p->rec_base[c], .next_ids = p->ids_base[c] };
	int ok = client_open(&cl) == 0;

	barrier(p->sh, p->o->clients);
	cl.out->t_start = now_ns();
	if (p->o->prefill) {
		if (ok)
			ok = phase(&cl, 1) == 0;
		barrier(p->sh, p->o->clients);
	}
	cl.out->t_decode = now_ns();
	if (ok)
		phase(&cl, 0);
	cl.out->t_end = now_ns();
	client_close(&cl);
}

/* ---- the parent ---- */

struct thread_arg {
	const struct plan *p;
	uint32_t c;
};

static void *client_thread(void *arg)
{
	struct thread_arg *a = arg;

	client_main(a->p, a->c);
	atomic_fetch_add_explicit(&a->p->sh->finished, 1, memory_order_release);
	return NULL;
}

static void progress_bar(const struct plan *p, int64_t t0, uint64_t total)
{
	uint64_t done = atomic_load_explicit(&p->sh->progress, memory_order_relaxed);
	double secs = (double)(now_ns() - t0) * 1e-9;
	int width = 30, fill = total ? (int)(done * (uint64_t)width / total) : width;

	fprintf(stderr, "\r%-12s [%.*s%*s] %" PRIu64 "/%" PRIu64 " tokens, %.1f tokens/s ",
		p->o->label, fill, "##############################", width - fill, "",
		done, total, secs > 0 ? (double)done / secs : 0.0);
}

static uint64_t total_tokens(const struct plan *p)
{
	return (uint64_t)p->o->tokens +
	       (uint64_t)p->o->prefill * p->o->clients * p->o->inflight;
}

static int run_threads(const struct plan *p, bool bar, struct moe_msg *err)
{
	uint32_t n = p->o->clients, started = 0;
	pthread_t *th = calloc(n, sizeof(*th));
	struct thread_arg *a = calloc(n, sizeof(*a));
	int64_t t0 = now_ns();
	int rc = 0;

	if (!th || !a) {
		free(th);
		free(a);
		return moe_msgf(err, -ENOMEM, "out of memory");
	}
	for (; started < n; started++) {
		a[started] = (struct thread_arg){ p, started };
		rc = -pthread_create(&th[started], NULL, client_thread, &a[started]);
		if (rc) {
			/* Those started would wait for it at the barrier. */
			atomic_store_explicit(&p->sh->abort, 1, memory_order_relaxed);
			moe_msgf(err, rc, "cannot start client thread %u of %u: %s",
				 started, n, moe_strerror(rc));
			break;
		}
	}
	while (atomic_load_explicit(&p->sh->finished, memory_order_acquire) < started) {
		if (bar)
			progress_bar(p, t0, total_tokens(p));
		usleep(100000);
	}
	for (uint32_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	free(th);
	free(a);
	return rc;
}

static int reap_client(const struct plan *p, pid_t *pid, uint32_t c,
		       int rc, struct moe_msg *err)
{
	int ws;

	if (pid[c] <= 0 || waitpid(pid[c], &ws, WNOHANG) != pid[c])
		return rc;
	pid[c] = 0;
	if (rc || (WIFEXITED(ws) && WEXITSTATUS(ws) == 0))
		return rc;
	atomic_store_explicit(&p->sh->abort, 1, memory_order_relaxed);
	return moe_msgf(err, -ECHILD, "client process %u %s %d", c,
			WIFSIGNALED(ws) ? "was killed by signal" : "exited with status",
			WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
}

/* A client process that dies abnormally aborts the run (the abort flag
 * releases the others from the barrier and stops their work). */
static int run_procs(const struct plan *p, bool bar, struct moe_msg *err)
{
	uint32_t n = p->o->clients, left = 0;
	pid_t *pid = calloc(n, sizeof(*pid));
	int64_t t0 = now_ns();
	int rc = 0;

	if (!pid)
		return moe_msgf(err, -ENOMEM, "out of memory");
	fflush(NULL);
	for (uint32_t c = 0; c < n && !rc; c++) {
		pid_t parent = getpid();

		pid[c] = fork();
		if (pid[c] == 0) {
			/* A client outlives no moe-bench: dies with it, and
			 * leaves a signal's cleanup to it. */
			bench_cleanup_default();
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(1);
			client_main(p, c);
			_exit(0);
		}
		if (pid[c] < 0) {
			atomic_store_explicit(&p->sh->abort, 1, memory_order_relaxed);
			rc = moe_msgf(err, -errno, "fork: %s", moe_strerror(-errno));
		} else {
			left++;
		}
	}
	while (left) {
		for (uint32_t c = 0; c < n; c++) {
			pid_t was = pid[c];

			rc = reap_client(p, pid, c, rc, err);
			left -= was > 0 && pid[c] == 0;
		}
		if (bar && left)
			progress_bar(p, t0, total_tokens(p));
		if (left)
			usleep(50000);
	}
	free(pid);
	return rc;
}

/* The model's shape and the grants, asked once before any client runs,
 * so that a refusal is reported once and plainly. */
static int probe(struct plan *p, struct moe_msg *err)
{
	const struct bench_load_opts *o = p->o;
	struct moe_connect_opts co = { .timeout_ms = o->timeout_ms, .name = "moe-bench" };
	moe_client *mc;
	int rc = moe_connect(&mc, o->sock, &co);

	if (rc)
		return moe_msgf(err, rc, "cannot connect to moed at %s: %s", o->sock,
				moe_strerror(rc));
	moe_model_info(mc, &p->mi);
	p->layers = calloc(p->mi.n_layer ? p->mi.n_layer : 1, sizeof(*p->layers));
	for (uint32_t l = 0; p->layers && l < p->mi.n_layer; l++)
		if (moe_layer_is_moe(mc, l) == 1)
			p->layers[p->n_moe++] = l;
	moe_close(mc);
	if (!p->layers)
		return moe_msgf(err, -ENOMEM, "out of memory");
	p->k = o->kind == BENCH_TRACE && o->trace.k ? o->trace.k : p->mi.n_used;
	if (o->prefill > p->mi.max_tokens)
		return moe_msgf(err, -E2BIG, "--prefill %u: moed takes at most %u tokens per request (its --max-tokens)",
				o->prefill, p->mi.max_tokens);
	if (o->inflight > p->mi.max_inflight)
		return moe_msgf(err, -E2BIG, "--inflight %u: moed allows at most %u requests in flight per client (its --max-inflight)",
				o->inflight, p->mi.max_inflight);
	if (o->kind == BENCH_TRACE && p->k > p->mi.max_k)
		return moe_msgf(err, -E2BIG, "--k %u: moed allows at most %u experts per token",
				p->k, p->mi.max_k);
	if (!p->n_moe)
		return moe_msgf(err, -EINVAL, "moed serves no MoE layer");
	return 0;
}

/* Requests and expert ids each client may record, known in advance. */
static int size_records(struct plan *p)
{
	const struct bench_load_opts *o = p->o;
	uint32_t kk = p->k, ne = p->mi.n_expert;

	p->per_req_ids_decode = kk < ne ? kk : ne;
	p->per_req_ids_prefill = (uint64_t)o->prefill * kk < ne ? o->prefill * kk : ne;
	p->rec_base = calloc(o->clients + 1, sizeof(size_t));
	p->ids_base = calloc(o->clients + 1, sizeof(size_t));
	if (!p->rec_base || !p->ids_base)
		return -ENOMEM;
	for (uint32_t c = 0; c < o->clients; c++) {
		size_t r = 0, i = 0;

		for (uint32_t s = 0; s < o->inflight; s++) {
			size_t d = decode_share(p, c * o->inflight + s);

			r += (size_t)p->n_moe * (d + (o->prefill > 0));
			i += (size_t)p->n_moe * (d * p->per_req_ids_decode +
						 (o->prefill ? p->per_req_ids_prefill : 0));
		}
		p->rec_base[c + 1] = p->rec_base[c] + r;
		p->ids_base[c + 1] = p->ids_base[c] + i;
	}
	p->n_rec = p->rec_base[o->clients];
	p->n_ids = p->ids_base[o->clients];
	return 0;
}

static int by_time(const void *a, const void *b)
{
	const struct bench_rec *x = a, *y = b;

	return (x->t_done > y->t_done) - (x->t_done < y->t_done);
}

/* Completed records, in completion order, into memory of their own. */
static int gather(const struct plan *p, struct bench_load *l)
{
	const struct bench_load_opts *o = p->o;

	l->rec = malloc((p->n_rec ? p->n_rec : 1) * sizeof(*l->rec));
	l->ids = malloc((p->n_ids ? p->n_ids : 1) * sizeof(*l->ids));
	if (!l->rec || !l->ids)
		return -ENOMEM;
	for (size_t i = 0; i < p->n_rec; i++)
		if (p->rec[i].t_done)
			l->rec[l->n_rec++] = p->rec[i];
	qsort(l->rec, l->n_rec, sizeof(*l->rec), by_time);
	memcpy(l->ids, p->ids, p->n_ids * sizeof(*l->ids));
	l->n_ids = p->n_ids;
	l->k = p->k;
	l->t_start = INT64_MAX;
	l->t_decode = INT64_MAX;
	for (uint32_t c = 0; c < o->clients; c++) {
		const struct client_out *co = &p->out[c];

		if (co->t_start < l->t_start)
			l->t_start = co->t_start;
		if (co->t_decode < l->t_decode)
			l->t_decode = co->t_decode;
		if (co->t_end > l->t_end)
			l->t_end = co->t_end;
		l->prefill_tokens += co->prefill_tokens;
		l->decode_tokens += co->decode_tokens;
	}
	return 0;
}

static int first_error(const struct plan *p, struct moe_msg *err)
{
	/* The first client to fail says why; the others were told to stop. */
	for (uint32_t c = 0; c < p->o->clients; c++)
		if (p->out[c].rc && p->out[c].rc != -ECANCELED)
			return moe_msgf(err, p->out[c].rc, "%s", p->out[c].msg);
	return 0;
}

static int setup_shared(struct plan *p)
{
	p->sh = shared_alloc(sizeof(*p->sh));
	p->out = shared_alloc(p->o->clients * sizeof(*p->out));
	p->rec = shared_alloc(p->n_rec * sizeof(*p->rec));
	p->ids = shared_alloc(p->n_ids * sizeof(*p->ids));
	return !p->sh || !p->out || !p->rec || !p->ids ? -ENOMEM : 0;
}

static void teardown(struct plan *p)
{
	shared_free(p->sh, sizeof(*p->sh));
	shared_free(p->out, p->o->clients * sizeof(*p->out));
	shared_free(p->rec, p->n_rec * sizeof(*p->rec));
	shared_free(p->ids, p->n_ids * sizeof(*p->ids));
	free(p->rec_base);
	free(p->ids_base);
	free(p->layers);
}

int bench_load_run(const struct bench_load_opts *o, struct bench_load *out,
		   struct moe_msg *err)
{
	struct plan p = { .o = o };
	bool bar = o->label && isatty(STDERR_FILENO);
	int rc;

	memset(out, 0, sizeof(*out));
	if (!o->clients || !o->inflight)
		return moe_msgf(err, -EINVAL, "need at least one client and one request in flight");
	rc = probe(&p, err);
	if (rc) {
		teardown(&p);
		return rc;
	}
	if (size_records(&p) || setup_shared(&p)) {
		teardown(&p);
		return moe_msgf(err, -ENOMEM, "out of memory for %zu request records", p.n_rec);
	}
	rc = o->procs ? run_procs(&p, bar, err) : run_threads(&p, bar, err);
	if (bar)
		fprintf(stderr, "\r\033[K");
	if (!rc)
		rc = first_error(&p, err);
	if (!rc && gather(&p, out))
		rc = moe_msgf(err, -ENOMEM, "out of memory gathering records");
	teardown(&p);
	if (rc)
		bench_load_free(out);
	return rc;
}

void bench_load_free(struct bench_load *l)
{
	free(l->rec);
	free(l->ids);
	memset(l, 0, sizeof(*l));
}

/* ---- warming a cache with every expert ---- */

static int touch_layer(moe_client *mc, const struct moe_model_info *mi,
		       uint32_t layer, uint32_t n_expert, float *x,
		       uint32_t *ids, float *w, struct moe_msg *err)
{
	for (uint32_t e0 = 0; e0 < n_expert; e0 += mi->max_tokens) {
		uint32_t n = n_expert - e0 < mi->max_tokens ? n_expert - e0 : mi->max_tokens;
		struct moe_req_opts ro = { .route_k = 1, .route_ids = ids, .route_w = w };
		int rc;

		for (uint32_t t = 0; t < n; t++) {
			ids[t] = e0 + t;
			w[t] = 1.0f;
		}
		rc = moe_forward(mc, layer, x, n, x, &ro, NULL);
		if (rc)
			return moe_msgf(err, rc, "loading layer %u experts %u..%u: %s",
					layer, e0, e0 + n - 1, moe_strerror(rc));
	}
	return 0;
}

int bench_load_touch_all(const char *sock, const uint32_t *n_expert,
			 uint32_t n_layer, uint32_t timeout_ms,
			 struct moe_msg *err)
{
	struct moe_connect_opts co = { .max_route_k = 1, .timeout_ms = timeout_ms,
				       .name = "moe-bench" };
	struct moe_model_info mi;
	moe_client *mc;
	float *x = NULL, *w = NULL;
	uint32_t *ids = NULL;
	int rc = moe_connect(&mc, sock, &co);

	if (rc)
		return moe_msgf(err, rc, "cannot connect to moed at %s: %s", sock,
				moe_strerror(rc));
	moe_model_info(mc, &mi);
	x = calloc((size_t)mi.max_tokens * mi.n_embd, sizeof(float));
	w = malloc(mi.max_tokens * sizeof(float));
	ids = malloc(mi.max_tokens * sizeof(uint32_t));
	if (!x || !w || !ids)
		rc = moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t l = 0; !rc && l < n_layer; l++)
		if (n_expert[l])
			rc = touch_layer(mc, &mi, l, n_expert[l], x, ids, w, err);
	free(x);
	free(w);
	free(ids);
	moe_close(mc);
	return rc;
}
