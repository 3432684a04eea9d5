/* A bounded soak (`make soak`): SOAK_CLIENTS client processes (8) talk to
 * one moed through libmoeclient for SOAK_MINUTES minutes (5), each
 * request a random MoE layer, 1 to 64 tokens (mostly a few, as decoding
 * sends) and random routing: the model's, dynamic K (top_p with min_k
 * and max_k), a narrower max_k, or experts and weights the client gives.
 * One request in SOAK_CHECK_EVERY (16) is checked against the engine run
 * in the client's own process (testutil's tref: moe_engine_forward and
 * moe_engine_apply over the mapped model, the very calls moe-layer makes,
 * so "against moe-layer on a sample" without a process per check). The
 * model is larger than moed's cache, so experts are read and evicted
 * throughout.
 *
 * Prints, per window of SOAK_WINDOW_S seconds (60, or a sixth of a
 * shorter run, so that the first window is not also the last), requests,
 * tokens, errors, latency p50/p99 and moed's RSS; at the end requests
 * served, errors (any failed call or a checked answer off the reference
 * by more than float rounding of a different batch: 1e-4 of the output's
 * scale), the p99 drift (last window against the first) and the RSS
 * drift. Exits 1 on any error, if moed dies, or if moed's RSS grew by
 * more than SOAK_MAX_RSS_GROWTH_MB (32: its whole expert cache again,
 * the cache being full after the first window) from the first window to
 * the last: a leak, not noise. p99 drift is printed only: a busy machine
 * can slow any window, and speed is no pass mark. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "router.h"
#include "testutil.h"

#define MAX_CLIENTS 64
#define MAX_WINDOWS 1440
#define MAX_TOK 64
#define ROUTE_K 8
#define TOLERANCE 1e-4
#define NB 512 /* latency buckets: 16 per power of two of microseconds */

struct window {
	_Atomic uint64_t requests, tokens, errors;
	_Atomic uint64_t hist[NB];
	long rss_kb; /* moed's, at the window's end (the parent writes it) */
};

struct client_tally {
	_Atomic uint64_t requests, checked, errors;
	char first_error[256];
};

static struct shared {
	_Atomic int stop;
	double t0;
	struct window w[MAX_WINDOWS];
	struct client_tally c[MAX_CLIENTS];
} *sh;

static unsigned window_s = 60, check_every = 16;
static struct tmoed md;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static double env_num(const char *name, double def)
{
	const char *v = getenv(name);

	return v && *v ? strtod(v, NULL) : def;
}

static unsigned bucket(uint32_t us)
{
	unsigned e = 0;

	if (us < 16)
		return us;
	while ((us >> e) >= 32)
		e++;
	return (e + 1) * 16 + ((us >> e) & 15); /* (us >> e) in 16..31 */
}

static double bucket_us(unsigned b)
{
	if (b < 16)
		return b;
	return (double)(16 + b % 16) * (1u << (b / 16 - 1));
}

static double percentile(const struct window *w, double p)
{
	uint64_t n = 0, seen = 0;

	for (unsigned b = 0; b < NB; b++)
		n += w->hist[b];
	for (unsigned b = 0; b < NB && n; b++) {
		seen += w->hist[b];
		if (seen >= p * n)
			return bucket_us(b);
	}
	return 0;
}

/* ---- a client ---- */

struct req {
	uint32_t layer, nt;
	struct moe_req_opts o;
	uint32_t ids[MAX_TOK * ROUTE_K];
	float w[MAX_TOK * ROUTE_K];
};

/* Random routing options for r (the model's, dynamic K, a narrower
 * max_k, or the client's own experts). */
static void pick_routing(struct trng *g, struct req *r,
			 const struct moe_model_info *mi)
{
	uint32_t k;

	memset(&r->o, 0, sizeof(r->o));
	switch (trng_next(g) % 4) {
	case 0:
		break;
	case 1:
		r->o.top_p = trng_float(g, 0.3f, 1.0f);
		r->o.min_k = 1 + (uint32_t)(trng_next(g) % 2);
		r->o.max_k = r->o.min_k + (uint32_t)(trng_next(g) % mi->n_used);
		break;
	case 2:
		r->o.max_k = 1 + (uint32_t)(trng_next(g) % mi->n_used);
		break;
	case 3:
		k = 1 + (uint32_t)(trng_next(g) % ROUTE_K);
		k = k < mi->n_expert ? k : mi->n_expert;
		for (uint32_t t = 0; t < r->nt; t++) {
			/* k distinct experts: a run from a random start */
			uint32_t e0 = (uint32_t)(trng_next(g) % mi->n_expert);

			for (uint32_t j = 0; j < k; j++) {
				r->ids[t * k + j] = (e0 + j) % mi->n_expert;
				r->w[t * k + j] = trng_float(g, 0.05f, 1.0f);
			}
		}
		r->o.route_k = k;
		r->o.route_ids = r->ids;
		r->o.route_w = r->w;
		break;
	}
}

static void pick(struct trng *g, struct req *r, const struct moe_client *c,
		 const struct moe_model_info *mi)
{
	do
		r->layer = mi->first_moe_layer +
			   (uint32_t)(trng_next(g) % (mi->last_moe_layer - mi->first_moe_layer + 1));
	while (moe_layer_is_moe(c, r->layer) != 1);
	/* Mostly decode-sized, sometimes a prompt's chunk. */
	r->nt = trng_next(g) % 10 < 7 ? 1 + (uint32_t)(trng_next(g) % 4)
				      : 1 + (uint32_t)(trng_next(g) % MAX_TOK);
	pick_routing(g, r, mi);
}

/* The reference's answer; 0 when y is within TOLERANCE of it. */
static int check(struct tref *ref, const struct req *r, const float *x,
		 const float *y, float *want, uint32_t n_embd)
{
	struct moe_route rt[MAX_TOK];
	struct moe_route_opts o = { r->o.top_p, r->o.min_k, r->o.max_k };
	double scale = 1e-6, worst = 0;
	size_t n = (size_t)r->nt * n_embd;
	int rc;

	if (r->o.route_k) {
		for (uint32_t t = 0; t < r->nt; t++) {
			rt[t].k = r->o.route_k;
			for (uint32_t j = 0; j < r->o.route_k; j++) {
				rt[t].id[j] = r->ids[t * r->o.route_k + j];
				rt[t].w[j] = r->w[t * r->o.route_k + j];
			}
		}
		rc = tref_forward(ref, r->layer, x, r->nt, NULL, rt, want);
	} else {
		rc = tref_forward(ref, r->layer, x, r->nt, &o, NULL, want);
	}
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++)
		scale = fmax(scale, fabs(want[i]));
	for (size_t i = 0; i < n; i++)
		worst = fmax(worst, fabs((double)y[i] - want[i]));
	return worst <= TOLERANCE * scale && !isnan(worst) ? 0 : 1;
}

static void note_error(struct client_tally *t, const char *fmt, ...)
{
	va_list ap;

	if (t->errors++ == 0) {
		va_start(ap, fmt);
		vsnprintf(t->first_error, sizeof(t->first_error), fmt, ap);
		va_end(ap);
	}
}

static int client(int id)
{
	struct moe_connect_opts co = { .max_tokens = MAX_TOK,
				       .max_route_k = ROUTE_K,
				       .name = "soak" };
	struct client_tally *t = &sh->c[id];
	struct trng g = { 0x50a1ull + (uint64_t)id };
	struct moe_model_info mi;
	struct moe_client *c;
	struct tref *ref;
	struct moe_result res;
	float *x, *y, *want;
	struct req r;
	int rc;

	rc = moe_connect(&c, md.sock, &co);
	if (rc) {
		note_error(t, "connect: %s", moe_strerror(rc));
		return 1;
	}
	moe_model_info(c, &mi);
	ref = tref_open(md.model, 1);
	x = malloc((size_t)MAX_TOK * mi.n_embd * sizeof(float));
	y = malloc((size_t)MAX_TOK * mi.n_embd * sizeof(float));
	want = malloc((size_t)MAX_TOK * mi.n_embd * sizeof(float));
	if (!ref || !x || !y || !want) {
		note_error(t, "no reference engine or memory");
		return 1;
	}
	while (!sh->stop) {
		double t0 = now();
		unsigned wi = (unsigned)((t0 - sh->t0) / window_s);
		struct window *w = &sh->w[wi < MAX_WINDOWS ? wi : MAX_WINDOWS - 1];

		pick(&g, &r, c, &mi);
		trng_fill(&g, x, (size_t)r.nt * mi.n_embd, -1.5f, 1.5f);
		rc = moe_forward(c, r.layer, x, r.nt, y, &r.o, &res);
		t->requests++;
		w->requests++;
		w->tokens += r.nt;
		if (rc) {
			w->errors++;
			note_error(t, "layer %u, %u tokens, route_k %u, top_p %.2f: %s",
				   r.layer, r.nt, r.o.route_k, r.o.top_p,
				   moe_strerror(rc));
			if (rc == -MOE_EDEAD)
				break;
			continue;
		}
		w->hist[bucket(res.wall_usec)]++;
		if (t->requests % check_every)
			continue;
		t->checked++;
		if (check(ref, &r, x, y, want, mi.n_embd)) {
			w->errors++;
			note_error(t, "layer %u, %u tokens, route_k %u, top_p %.2f min_k %u max_k %u: output off the reference",
				   r.layer, r.nt, r.o.route_k, r.o.top_p,
				   r.o.min_k, r.o.max_k);
		}
	}
	moe_close(c);
	tref_close(ref);
	free(x);
	free(y);
	free(want);
	return 0;
}

/* ---- the parent ---- */

static int make_model(void)
{
	const char *given = getenv("SOAK_MODEL");

	tmoed_init(&md, "soak");
	if (given && *given) {
		snprintf(md.model, sizeof(md.model), "%s", given);
		return 0;
	}
	/* 70 MB of experts in 5 MoE layers (a dense one first), grouped
	 * routing, a shared expert, 4- and 6-bit types. */
	return run_cmd("%s/moe-gen %s -q --arch deepseek2 --layers 6 --dense-layers 1 --experts 32 --top-k 6 --groups 4 --groups-used 2 --shared-experts 1 --embd 512 --ff 512 --type gate=Q4_K,up=Q4_K,down=Q6_K",
		       bin_dir(), md.model);
}

static void report_window(unsigned i)
{
	const struct window *w = &sh->w[i];

	printf("window %3u: %8lu requests %9lu tokens %3lu errors  p50 %7.0f us  p99 %7.0f us  moed RSS %ld KiB\n",
	       i + 1, (unsigned long)w->requests, (unsigned long)w->tokens,
	       (unsigned long)w->errors, percentile(w, 0.50),
	       percentile(w, 0.99), w->rss_kb);
	fflush(stdout);
}

int main(void)
{
	unsigned n = (unsigned)env_num("SOAK_CLIENTS", 8);
	double minutes = env_num("SOAK_MINUTES", 5);
	unsigned windows, done = 0;
	uint64_t served = 0, errors = 0, checked = 0;
	pid_t pids[MAX_CLIENTS];
	bool died = false;
	long max_growth_kb;
	int st;

	window_s = (unsigned)env_num("SOAK_WINDOW_S", minutes >= 6 ? 60 : fmax(1, minutes * 10));
	max_growth_kb = (long)(env_num("SOAK_MAX_RSS_GROWTH_MB", 32) * 1024);
	check_every = (unsigned)env_num("SOAK_CHECK_EVERY", 16);
	windows = (unsigned)(minutes * 60 / window_s + 0.5);
	if (n < 1 || n > MAX_CLIENTS || windows < 1 || windows > MAX_WINDOWS ||
	    window_s < 1 || check_every < 1) {
		fprintf(stderr, "soak: SOAK_CLIENTS 1..%d, SOAK_MINUTES at least one SOAK_WINDOW_S, at most %d windows\n",
			MAX_CLIENTS, MAX_WINDOWS);
		return 2;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || make_model())
		return 1;
	if (tmoed_start(&md, "--cache-mb 32 %s", getenv("SOAK_MOED_OPTS") ? getenv("SOAK_MOED_OPTS") : "")) {
		tmoed_print_log(&md);
		fprintf(stderr, "soak: moed did not start\n");
		return 1;
	}
	printf("soak: %u clients for %g minutes against %s (moed pid %d, log %s)\n",
	       n, minutes, md.model, (int)md.pid, md.log);
	sh->t0 = now();
	for (unsigned i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			_exit(client((int)i));
	}
	while (done < windows && !died) {
		double end = sh->t0 + (double)(done + 1) * window_s;

		while (now() < end && !died) {
			usleep(100000);
			died = waitpid(md.pid, NULL, WNOHANG) == md.pid;
		}
		sh->w[done].rss_kb = proc_rss_kb(md.pid);
		report_window(done++);
	}
	sh->stop = 1;
	for (unsigned i = 0; i < n; i++) {
		waitpid(pids[i], &st, 0);
		served += sh->c[i].requests;
		checked += sh->c[i].checked;
		errors += sh->c[i].errors;
		if (sh->c[i].errors)
			printf("client %u: %lu errors, the first: %s\n", i,
			       (unsigned long)sh->c[i].errors,
			       sh->c[i].first_error);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			errors++;
	}
	if (died) {
		md.pid = 0;
		printf("moed died; its log:\n");
		tmoed_print_log(&md);
		errors++;
	} else if (tmoed_stop(&md)) {
		printf("moed did not stop cleanly; its log:\n");
		tmoed_print_log(&md);
		errors++;
	}
	printf("requests served: %lu (%lu checked against the reference)\n",
	       (unsigned long)served, (unsigned long)checked);
	printf("errors: %lu\n", (unsigned long)errors);
	if (done >= 1) {
		const struct window *a = &sh->w[0], *b = &sh->w[done - 1];

		printf("p99 drift: %.0f us in the first window, %.0f us in the last (x%.2f)\n",
		       percentile(a, 0.99), percentile(b, 0.99),
		       percentile(b, 0.99) / fmax(percentile(a, 0.99), 1));
		printf("RSS drift: %ld KiB after the first window, %ld KiB after the last (%+ld KiB)\n",
		       a->rss_kb, b->rss_kb, b->rss_kb - a->rss_kb);
		if (done >= 2 && (a->rss_kb <= 0 || b->rss_kb <= 0)) {
			printf("FAIL: moed's RSS could not be read\n");
			errors++;
		} else if (b->rss_kb - a->rss_kb > max_growth_kb) {
			printf("FAIL: moed's RSS grew by %ld KiB, more than the %ld KiB SOAK_MAX_RSS_GROWTH_MB allows\n",
			       b->rss_kb - a->rss_kb, max_growth_kb);
			errors++;
		}
	}
	return errors ? 1 : 0;
}
