/* Router: picks each token's experts and their weights the way each
 * architecture's reference implementation does (softmax or sigmoid
 * scores, selection bias, group-limited selection, top-k, optional
 * renormalisation and scaling), plus per-call dynamic K (top-p). */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "model.h"

/* Per-call routing options. All zero: the model's own top-k. */
struct moe_route_opts {
	float top_p;    /* 0: off. Else the fewest experts whose probabilities,
			 * sorted and normalised over the eligible experts,
			 * add up to at least top_p... */
	uint32_t min_k; /* ...but no fewer than this (0: 1)... */
	uint32_t max_k; /* ...and no more (0: the model's expert_used_count) */
};

/* One token's routing: k experts, in selection order (best first). */
struct moe_route {
	uint32_t k;
	uint32_t id[MOE_MAX_K];
	float w[MOE_MAX_K];
};

/* Check o against layer L: -EINVAL with a message naming the field. */
int moe_route_opts_check(const struct moe_layer *L,
			 const struct moe_route_opts *o, struct moe_msg *err);

/* Check caller-given routing: ids below n_expert and distinct, k in
 * 1..MOE_MAX_K, finite weights. -EINVAL with a message naming the token
 * (tok is only used in the message). */
int moe_route_check(const struct moe_layer *L, const struct moe_route *r,
		    uint32_t tok, struct moe_msg *err);

/* Scratch floats moe_route_batch needs for nt tokens. */
size_t moe_route_scratch(const struct moe_layer *L, uint32_t nt);

/* Route nt tokens x[t * ldx .. + n_embd). router_w: the router matrix's
 * bytes; bias: n_expert floats or NULL. o may be NULL. The router rows
 * are read once for the whole batch. */
void moe_route_batch(const struct moe_layer *L, const void *router_w,
		     const float *bias, const float *x, size_t ldx,
		     uint32_t nt, const struct moe_route_opts *o,
		     struct moe_route *out, float *scratch);

/* The selection step alone, from one token's router logits (n_expert
 * floats; overwritten). Exposed for the tests. */
void moe_route_select(const struct moe_layer *L, float *logits,
		      const float *bias, const struct moe_route_opts *o,
		      struct moe_route *r, float *scratch);

#endif
