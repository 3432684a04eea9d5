/* Router math. Scores are probabilities (softmax over all experts, or an
 * independent sigmoid per expert); a selection bias shifts which experts
 * win but not their weights; groups limit the candidates first. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "quant.h"
#include "router.h"

/* Smallest sum llama.cpp-style renormalisation divides by. */
#define NORM_MIN_SUM 6.103515625e-5f

static void scores(const struct moe_layer *L, float *v)
{
	uint32_t n = L->n_expert;
	float max = -INFINITY, sum = 0.0f;

	if (L->gating == MOE_GATING_SIGMOID) {
		for (uint32_t e = 0; e < n; e++)
			v[e] = 1.0f / (1.0f + expf(-v[e]));
		return;
	}
	for (uint32_t e = 0; e < n; e++)
		if (v[e] > max)
			max = v[e];
	for (uint32_t e = 0; e < n; e++) {
		v[e] = expf(v[e] - max);
		sum += v[e];
	}
	for (uint32_t e = 0; e < n; e++)
		v[e] /= sum;
}

/* Group score: the sum of the group's two best selection scores. */
static float group_score(const float *sel, uint32_t size)
{
	float a = -INFINITY, b = -INFINITY;

	for (uint32_t i = 0; i < size; i++) {
		if (sel[i] > a) {
			b = a;
			a = sel[i];
		} else if (sel[i] > b) {
			b = sel[i];
		}
	}
	return size > 1 ? a + b : a;
}

/* Exclude every expert outside the n_group_used best groups. */
static void limit_groups(const struct moe_layer *L, float *sel, float *gs)
{
	uint32_t size = L->n_expert / L->n_group;

	for (uint32_t g = 0; g < L->n_group; g++)
		gs[g] = group_score(sel + g * size, size);
	for (uint32_t g = 0; g < L->n_group; g++) {
		uint32_t better = 0;

		/* rank by score, ties to the lower group number */
		for (uint32_t h = 0; h < L->n_group; h++)
			better += gs[h] > gs[g] || (gs[h] == gs[g] && h < g);
		if (better >= L->n_group_used)
			for (uint32_t i = 0; i < size; i++)
				sel[g * size + i] = -INFINITY;
	}
}

/* The best kmax experts by sel, best first, ties to the lower id. */
static uint32_t top_k(const float *sel, uint32_t n, uint32_t kmax,
		      uint32_t *id)
{
	uint32_t k = 0;

	for (uint32_t e = 0; e < n; e++) {
		uint32_t pos;

		if (sel[e] == -INFINITY)
			continue;
		if (k == kmax && !(sel[e] > sel[id[k - 1]]))
			continue;
		pos = k < kmax ? k++ : k - 1;
		while (pos > 0 && sel[e] > sel[id[pos - 1]]) {
			id[pos] = id[pos - 1];
			pos--;
		}
		id[pos] = e;
	}
	return k;
}

static uint32_t dynamic_k(const float *p, const float *sel, uint32_t n,
			  const uint32_t *id, uint32_t k,
			  const struct moe_route_opts *o)
{
	uint32_t min_k = o->min_k ? o->min_k : 1;
	float total = 0.0f, cum = 0.0f;
	uint32_t i;

	for (uint32_t e = 0; e < n; e++)
		if (sel[e] != -INFINITY)
			total += p[e];
	for (i = 0; i < k && (i < min_k || cum < o->top_p * total); i++)
		cum += p[id[i]];
	return i;
}

void moe_route_select(const struct moe_layer *L, float *logits,
		      const float *bias, const struct moe_route_opts *o,
		      struct moe_route *r, float *scratch)
{
	uint32_t n = L->n_expert, kmax = L->n_used;
	float *sel = scratch, *gs = scratch + n, sum = 0.0f;

	if (o && o->top_p > 0.0f && o->max_k)
		kmax = o->max_k;
	scores(L, logits);
	for (uint32_t e = 0; e < n; e++)
		sel[e] = bias ? logits[e] + bias[e] : logits[e];
	if (L->n_group > 1 && L->n_group_used < L->n_group)
		limit_groups(L, sel, gs);
	r->k = top_k(sel, n, kmax, r->id);
	if (o && o->top_p > 0.0f)
		r->k = dynamic_k(logits, sel, n, r->id, r->k, o);
	for (uint32_t i = 0; i < r->k; i++) {
		r->w[i] = logits[r->id[i]];
		sum += r->w[i];
	}
	if (L->norm_w && sum < NORM_MIN_SUM)
		sum = NORM_MIN_SUM;
	for (uint32_t i = 0; i < r->k; i++) {
		if (L->norm_w)
			r->w[i] /= sum;
		r->w[i] *= L->w_scale;
	}
}

size_t moe_route_scratch(const struct moe_layer *L, uint32_t nt)
{
	/* logits for every token, then sel and group scores for one */
	return (size_t)nt * L->n_expert + 2 * (size_t)L->n_expert;
}

void moe_route_batch(const struct moe_layer *L, const void *router_w,
		     const float *bias, const float *x, size_t ldx,
		     uint32_t nt, const struct moe_route_opts *o,
		     struct moe_route *out, float *scratch)
{
	const struct moe_kernels *k = L->router.kern;
	const uint8_t *w = router_w;
	float *logits = scratch, *rest = scratch + (size_t)nt * L->n_expert;

	for (uint32_t e = 0; e < L->n_expert; e++)
		k->dot_multi(w + e * L->router.row_size, x, ldx, nt,
			     logits + e, L->n_expert, L->router.cols);
	for (uint32_t t = 0; t < nt; t++)
		moe_route_select(L, logits + (size_t)t * L->n_expert, bias, o,
				 &out[t], rest);
}

int moe_route_opts_check(const struct moe_layer *L,
			 const struct moe_route_opts *o, struct moe_msg *err)
{
	uint32_t cap = L->n_expert < MOE_MAX_K ? L->n_expert : MOE_MAX_K;

	if (!(o->top_p >= 0.0f && o->top_p <= 1.0f))
		return moe_msgf(err, -EINVAL, "top_p %g: must be in [0, 1]",
				o->top_p);
	if (o->max_k > cap)
		return moe_msgf(err, -EINVAL,
				"max_k %u: layer %u has %u experts (limit %u)",
				o->max_k, L->index, L->n_expert, cap);
	if (o->min_k > (o->max_k ? o->max_k : L->n_used))
		return moe_msgf(err, -EINVAL, "min_k %u is above max_k %u",
				o->min_k, o->max_k ? o->max_k : L->n_used);
	return 0;
}

int moe_route_check(const struct moe_layer *L, const struct moe_route *r,
		    uint32_t tok, struct moe_msg *err)
{
	if (r->k < 1 || r->k > MOE_MAX_K)
		return moe_msgf(err, -EINVAL,
				"token %u: routing k %u: must be 1..%u", tok,
				r->k, MOE_MAX_K);
	for (uint32_t i = 0; i < r->k; i++) {
		if (r->id[i] >= L->n_expert)
			return moe_msgf(err, -EINVAL,
					"token %u: expert id %u: layer %u has %u experts",
					tok, r->id[i], L->index, L->n_expert);
		if (!isfinite(r->w[i]))
			return moe_msgf(err, -EINVAL,
					"token %u: weight %u of expert %u is not finite",
					tok, i, r->id[i]);
		for (uint32_t j = 0; j < i; j++)
			if (r->id[j] == r->id[i])
				return moe_msgf(err, -EINVAL,
						"token %u: expert %u chosen twice",
						tok, r->id[i]);
	}
	return 0;
}
