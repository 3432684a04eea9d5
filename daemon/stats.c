/* moed's serving figures (see stats.h): the histogram's quantiles and
 * the per-layer pages moectl asks for. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"

uint32_t moe_hist_low(uint32_t b)
{
	uint32_t e = b / 8 + 2;

	if (b < 8)
		return b;
	return (8 + b % 8) << (e - 3);
}

/* The middle of bucket b (exact below 8). */
static uint32_t hist_mid(uint32_t b)
{
	if (b < 8)
		return b;
	return moe_hist_low(b) + (1u << (b / 8 - 1)) / 2;
}

uint32_t moe_hist_quantile(const struct moe_hist *h, double q)
{
	uint64_t rank, cum = 0;
	uint32_t v;

	if (!h->n)
		return 0;
	rank = (uint64_t)ceil(q * (double)h->n);
	if (rank < 1)
		rank = 1;
	if (rank >= h->n)
		return (uint32_t)h->max; /* known exactly */
	for (uint32_t b = 0; b < MOE_HIST_BUCKETS; b++) {
		cum += h->b[b];
		if (cum >= rank) {
			v = hist_mid(b);
			return v > h->max ? (uint32_t)h->max : v;
		}
	}
	return (uint32_t)h->max;
}

void moe_hist_latency(const struct moe_hist *h, struct ipc_latency *l)
{
	l->count = h->n;
	l->sum_usec = h->sum;
	l->p50_usec = moe_hist_quantile(h, 0.50);
	l->p90_usec = moe_hist_quantile(h, 0.90);
	l->p99_usec = moe_hist_quantile(h, 0.99);
	l->max_usec = (uint32_t)h->max;
}

int moe_serve_stats_init(struct moe_serve_stats *st, const struct moe_model *m)
{
	size_t n_load = 0, at = 0;

	memset(st, 0, sizeof(*st));
	st->m = m;
	for (uint32_t l = 0; l < m->n_layer; l++)
		if (m->layers[l].moe)
			n_load += m->layers[l].n_expert;
	st->layer = calloc(m->n_layer, sizeof(*st->layer));
	st->load = calloc(m->n_layer, sizeof(*st->load));
	st->load_mem = calloc(n_load ? n_load : 1, sizeof(*st->load_mem));
	if (!st->layer || !st->load || !st->load_mem) {
		moe_serve_stats_free(st);
		return -ENOMEM;
	}
	for (uint32_t l = 0; l < m->n_layer; l++) {
		if (!m->layers[l].moe)
			continue;
		st->load[l] = st->load_mem + at;
		at += m->layers[l].n_expert;
	}
	return 0;
}

void moe_serve_stats_free(struct moe_serve_stats *st)
{
	free(st->layer);
	free(st->load);
	free(st->load_mem);
	memset(st, 0, sizeof(*st));
}

void moe_serve_stats_uses(struct moe_serve_stats *st, uint32_t layer,
			  const struct moe_route *r, uint32_t nt,
			  uint32_t hit, uint32_t missed)
{
	uint64_t *load = st->load[layer];

	for (uint32_t t = 0; t < nt; t++)
		for (uint32_t i = 0; i < r[t].k; i++)
			load[r[t].id[i]]++;
	st->layer[layer].hits += hit;
	st->layer[layer].misses += missed;
}

static uint32_t next_moe(const struct moe_model *m, uint32_t layer)
{
	for (uint32_t l = layer + 1; l < m->n_layer; l++)
		if (m->layers[l].moe)
			return l;
	return IPC_STATS_NONE;
}

static void fill_layer(const struct moe_serve_stats *st, uint32_t layer,
		       uint32_t first, struct ipc_stats_layer_reply *r)
{
	const struct moe_layer_stats *L = &st->layer[layer];
	uint32_t n_expert = st->m->layers[layer].n_expert;
	uint32_t n = n_expert - first;

	if (n > IPC_STATS_PAGE_EXPERTS)
		n = IPC_STATS_PAGE_EXPERTS;
	r->layer = layer;
	r->next_layer = next_moe(st->m, layer);
	r->n_expert = n_expert;
	r->first_expert = first;
	r->n_load = n;
	r->next_expert = first + n;
	r->requests = L->requests;
	r->tokens = L->tokens;
	r->failed = L->failed;
	r->expert_hits = L->hits;
	r->expert_misses = L->misses;
	r->expert_passes = L->passes;
	moe_hist_latency(&L->lat, &r->latency);
	memcpy(r->load, st->load[layer] + first, n * sizeof(r->load[0]));
}

int moe_serve_stats_layer(const struct moe_serve_stats *st,
			  const struct ipc_stats_layer *q,
			  struct ipc_stats_layer_reply *r, char *why,
			  size_t len)
{
	const struct moe_model *m = st->m;
	uint32_t layer = q->layer == IPC_STATS_FIRST ? m->first_moe_layer
						     : q->layer;
	int rc = -EINVAL;

	memset(r, 0, sizeof(*r));
	if (layer >= m->n_layer || !m->layers[layer].moe)
		snprintf(why, len, "layer %u is not a MoE layer of this model",
			 q->layer);
	else if (q->first_expert >= m->layers[layer].n_expert)
		snprintf(why, len, "first_expert %u: layer %u has %u experts",
			 q->first_expert, layer, m->layers[layer].n_expert);
	else {
		fill_layer(st, layer, q->first_expert, r);
		rc = 0;
	}
	ipc_msg_init(&r->h, IPC_MSG_STATS_LAYER_REPLY, sizeof(*r), rc);
	return rc;
}
