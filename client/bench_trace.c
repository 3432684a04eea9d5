/* Synthetic expert traces: uniform, Zipf and temporally correlated picks
 * (see bench_trace.h). Every pick goes through one sampler: draw among
 * the experts not yet taken, in proportion to their weights, walking the
 * layer's experts in rank order. n_expert is at most a few thousand and
 * k at most 64, so the walk costs less than a router would. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "bench_trace.h"

enum { FREE, TAKEN, PREVIOUS }; /* what taken[] holds per expert */

struct bench_trace {
	struct bench_trace_opts o;
	uint64_t rng;
	double *w;          /* weight of each rank, the same for every layer */
	uint32_t *perm;     /* layer * n_expert + rank -> expert */
	uint32_t *prev;     /* layer * k: the previous token's picks */
	bool *have_prev;    /* per layer */
	uint8_t *taken;     /* per expert, for the token being drawn */
	bool *repeat_slot;  /* per pick of the token being drawn */
};

/* splitmix64: small, fast, and good enough for picking experts. */
static uint64_t next64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double next01(uint64_t *s)
{
	return (double)(next64(s) >> 11) * 0x1p-53;
}

double bench_zipf_pmf(uint32_t n, double s, uint32_t r)
{
	double sum = 0;

	for (uint32_t i = 1; i <= n; i++)
		sum += pow(i, -s);
	return pow(r + 1.0, -s) / sum;
}

static int check(const struct bench_trace_opts *o)
{
	if (!o->n_layer || o->n_layer > 1u << 16 || !o->n_expert ||
	    o->n_expert > BENCH_TRACE_MAX_EXPERT || !o->k || o->k > o->n_expert)
		return -EINVAL;
	if (!isfinite(o->zipf_s) || o->zipf_s < 0 || o->zipf_s > 100)
		return -EINVAL;
	if (o->dist == BENCH_ZIPF && o->zipf_s == 0)
		return -EINVAL;
	if (o->dist == BENCH_CORRELATED && !(o->repeat >= 0 && o->repeat <= 1))
		return -EINVAL;
	if (o->dist != BENCH_UNIFORM && o->dist != BENCH_ZIPF &&
	    o->dist != BENCH_CORRELATED)
		return -EINVAL;
	return 0;
}

/* A Zipf-shaped trace ranks each layer's experts in an order of its own
 * (Fisher-Yates); a uniform one keeps the identity. */
static void rank_layers(struct bench_trace *t, bool shuffle)
{
	uint32_t n = t->o.n_expert;

	for (uint32_t l = 0; l < t->o.n_layer; l++) {
		uint32_t *p = t->perm + (size_t)l * n;

		for (uint32_t i = 0; i < n; i++)
			p[i] = i;
		for (uint32_t i = n - 1; shuffle && i > 0; i--) {
			uint32_t j = (uint32_t)(next64(&t->rng) % (i + 1ull));
			uint32_t x = p[i];

			p[i] = p[j];
			p[j] = x;
		}
	}
}

int bench_trace_new(struct bench_trace **out, const struct bench_trace_opts *o)
{
	size_t n = o->n_expert, cells = (size_t)o->n_layer * n;
	bool zipf = o->dist == BENCH_ZIPF || o->zipf_s > 0;
	struct bench_trace *t;

	if (check(o))
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->o = *o;
	t->rng = o->seed;
	t->w = malloc(n * sizeof(*t->w));
	t->perm = malloc(cells * sizeof(*t->perm));
	t->prev = malloc((size_t)o->n_layer * o->k * sizeof(*t->prev));
	t->have_prev = calloc(o->n_layer, sizeof(*t->have_prev));
	t->taken = malloc(n);
	t->repeat_slot = malloc(o->k * sizeof(*t->repeat_slot));
	if (!t->w || !t->perm || !t->prev || !t->have_prev ||
	    !t->taken || !t->repeat_slot) {
		bench_trace_free(t);
		return -ENOMEM;
	}
	for (size_t r = 0; r < n; r++)
		t->w[r] = zipf ? pow(r + 1.0, -o->zipf_s) : 1.0;
	rank_layers(t, zipf);
	*out = t;
	return 0;
}

void bench_trace_free(struct bench_trace *t)
{
	if (!t)
		return;
	free(t->w);
	free(t->perm);
	free(t->prev);
	free(t->have_prev);
	free(t->taken);
	free(t->repeat_slot);
	free(t);
}

uint32_t bench_trace_expert_at(const struct bench_trace *t, uint32_t layer,
			       uint32_t r)
{
	return t->perm[(size_t)layer * t->o.n_expert + r];
}

/* Draw one FREE expert of layer in proportion to its weight and mark it
 * TAKEN; UINT32_MAX when none is FREE. The free weight is summed afresh
 * each time: subtracting as experts are taken would drift. */
static uint32_t draw(struct bench_trace *t, uint32_t layer)
{
	const uint32_t *p = t->perm + (size_t)layer * t->o.n_expert;
	double left = 0, u, acc = 0;
	uint32_t last = UINT32_MAX;

	for (uint32_t r = 0; r < t->o.n_expert; r++)
		if (t->taken[p[r]] == FREE)
			left += t->w[r];
	u = next01(&t->rng) * left;
	for (uint32_t r = 0; r < t->o.n_expert; r++) {
		if (t->taken[p[r]] != FREE)
			continue;
		last = r;
		acc += t->w[r];
		if (acc > u)
			break;
	}
	if (last == UINT32_MAX)
		return UINT32_MAX;
	/* Rounding can leave u at the very end: the last free one then. */
	t->taken[p[last]] = TAKEN;
	return p[last];
}

/* The correlated shape: repeats first, then fresh picks among experts the
 * previous token did not use. With fewer than 2k - 1 experts that set can
 * run dry; the previous token's experts not repeated are then reused. */
static void next_correlated(struct bench_trace *t, uint32_t layer,
			    uint32_t *ids)
{
	uint32_t k = t->o.k, *prev = t->prev + (size_t)layer * k;

	for (uint32_t j = 0; j < k; j++) {
		t->repeat_slot[j] = next01(&t->rng) < t->o.repeat;
		t->taken[prev[j]] = t->repeat_slot[j] ? TAKEN : PREVIOUS;
	}
	for (uint32_t j = 0; j < k; j++) {
		if (t->repeat_slot[j]) {
			ids[j] = prev[j];
			continue;
		}
		ids[j] = draw(t, layer);
		if (ids[j] != UINT32_MAX)
			continue;
		for (uint32_t i = 0; i < k; i++)
			if (t->taken[prev[i]] == PREVIOUS)
				t->taken[prev[i]] = FREE;
		ids[j] = draw(t, layer);
	}
}

void bench_trace_next(struct bench_trace *t, uint32_t layer, uint32_t *ids)
{
	uint32_t k = t->o.k;

	memset(t->taken, FREE, t->o.n_expert);
	if (t->o.dist == BENCH_CORRELATED && t->have_prev[layer])
		next_correlated(t, layer, ids);
	else
		for (uint32_t j = 0; j < k; j++)
			ids[j] = draw(t, layer);
	memcpy(t->prev + (size_t)layer * k, ids, k * sizeof(*ids));
	t->have_prev[layer] = true;
}

static int parse_double(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno || end == s || (*end && *end != ':') ? -EINVAL : 0;
}

int bench_trace_parse(const char *spec, struct bench_trace_opts *o)
{
	const char *arg = strchr(spec, ':');
	size_t len = arg ? (size_t)(arg - spec) : strlen(spec);

	o->zipf_s = 0;
	o->repeat = 0;
	if (len == 7 && strncmp(spec, "uniform", 7) == 0 && !arg) {
		o->dist = BENCH_UNIFORM;
		return 0;
	}
	if (len == 4 && strncmp(spec, "zipf", 4) == 0) {
		o->dist = BENCH_ZIPF;
		o->zipf_s = 1.0;
		if (arg && (parse_double(arg + 1, &o->zipf_s) ||
			    strchr(arg + 1, ':') || !(o->zipf_s > 0)))
			return -EINVAL;
		return 0;
	}
	if (len == 10 && strncmp(spec, "correlated", 10) == 0 && arg) {
		const char *s = strchr(arg + 1, ':');

		o->dist = BENCH_CORRELATED;
		if (parse_double(arg + 1, &o->repeat) ||
		    !(o->repeat >= 0 && o->repeat <= 1))
			return -EINVAL;
		if (s && (parse_double(s + 1, &o->zipf_s) || strchr(s + 1, ':') ||
			  !(o->zipf_s >= 0)))
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}
