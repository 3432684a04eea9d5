/* The MoE layer engine: routes a batch of tokens, groups them per expert
 * so each expert's weights are read once per batch, runs the experts on
 * the worker pool and sums each token's experts in a fixed order, so the
 * output does not depend on the number of threads.
 *
 * Router weights, selection biases and shared experts are loaded at open
 * and stay resident ("pinned"); routed experts come from an expert source
 * (the file mapped in memory, or the expert store). An engine runs one
 * call at a time. */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "ffn.h"
#include "model.h"
#include "router.h"

/* Where routed experts' bytes come from. */
struct moe_expert_src {
	/* Make expert e of layer readable and fill p; may block on a read.
	 * 1 if it was resident, 0 if it had to be read, or a negative code
	 * with err set. */
	int (*acquire)(void *ctx, uint32_t layer, uint32_t e,
		       struct moe_ffn_ptrs *p, struct moe_msg *err);
	/* The engine is done with an acquired expert. */
	void (*release)(void *ctx, uint32_t layer, uint32_t e);
	/* Optional, for sources that read: acquire without waiting. 1 as
	 * acquire (resident, p filled); 0: a read started, and wait gives
	 * the result (0 with p filled, or an error; either way the expert
	 * counts as acquired only on success). Lets a pass start every
	 * missing expert's read, compute the resident ones meanwhile, and
	 * take the others as their reads land. */
	int (*want)(void *ctx, uint32_t layer, uint32_t e,
		    struct moe_ffn_ptrs *p, struct moe_msg *err);
	int (*wait)(void *ctx, uint32_t layer, uint32_t e,
		    struct moe_ffn_ptrs *p, struct moe_msg *err);
	/* Optional, for sources that keep experts in each node's memory:
	 * want, wait and release as above, of the copy in node's memory (a
	 * plan node index). With a plan, the engine takes each expert from
	 * every node the plan says holds it, its owner and its copies, and
	 * each node's workers compute their rows from their own; a copy that
	 * cannot be had leaves its rows to the owner's. The node given to a
	 * want is given to its wait and release. */
	int (*want_on)(void *ctx, uint32_t layer, uint32_t e, uint32_t node,
		       struct moe_ffn_ptrs *p, struct moe_msg *err);
	int (*wait_on)(void *ctx, uint32_t layer, uint32_t e, uint32_t node,
		       struct moe_ffn_ptrs *p, struct moe_msg *err);
	void (*release_on)(void *ctx, uint32_t layer, uint32_t e,
			   uint32_t node);
	/* Optional hint: these experts of layer will likely be acquired
	 * soon. NULL when the source has nothing to gain from it. */
	void (*prefetch)(void *ctx, uint32_t layer, const uint32_t *ids,
			 uint32_t n);
	void *ctx;
};

struct moe_plan;

struct moe_engine_opts {
	/* Placement: workers pinned as the plan says, each expert's rows
	 * computed by workers of the node holding it, scratch on the
	 * worker's node; per-expert token counts are fed to the plan. NULL:
	 * an unpinned pool of `threads` workers. */
	struct moe_plan *plan;
	uint32_t threads;    /* workers, the caller included; 0: online CPUs
			      * (ignored with a plan: one per planned core) */
	uint32_t blas_min;   /* an expert with this many tokens or more uses
			      * sgemm; 0: default 32; UINT32_MAX: never */
	uint32_t max_batch;  /* tokens per internal pass; 0: default 256 */
};

struct moe_engine;

int moe_engine_new(struct moe_engine **out, const struct moe_model *m,
		   const struct moe_expert_src *src,
		   const struct moe_engine_opts *o, struct moe_msg *err);
void moe_engine_free(struct moe_engine *e);

/* Bytes held resident for routers, biases and shared experts. */
uint64_t moe_engine_pinned_bytes(const struct moe_engine *e);
uint32_t moe_engine_threads(const struct moe_engine *e);

/* Route nt tokens (rows of n_embd floats) of a MoE layer. o may be NULL.
 * -EINVAL (layer not MoE, bad options), -MOE_EINVAL_INPUT (a value not
 * finite: the message names token and element). */
int moe_engine_route(struct moe_engine *e, uint32_t layer, const float *x,
		     uint32_t nt, const struct moe_route_opts *o,
		     struct moe_route *routes, struct moe_msg *err);

/* y = the layer's MoE output for nt tokens routed as routes says (given
 * by the caller or by moe_engine_route), shared experts included. */
int moe_engine_apply(struct moe_engine *e, uint32_t layer, const float *x,
		     uint32_t nt, const struct moe_route *routes, float *y,
		     struct moe_msg *err);

/* After moe_engine_apply: per expert of the layer, 1 if the last apply
 * had to wait for its read (a miss), else 0. */
const uint8_t *moe_engine_missed(const struct moe_engine *e);

/* With prefetch on (off by default), every apply predicts the next MoE
 * layer's experts from its input, as moe_engine_prefetch_next does, and
 * hints them once its own experts are wanted: the hint cannot push out
 * an expert the apply needs, and the demand reads go first. It is not
 * given when the cache cannot hold the apply's own experts at once. */
void moe_engine_set_prefetch(struct moe_engine *e, bool on);

/* Predict the experts of the MoE layer after `layer` from this layer's
 * input (the residual stream changes slowly between layers) and hint
 * them to the source. Returns how many were hinted; 0 when the source
 * takes no hints or `layer` is the last MoE layer. */
uint32_t moe_engine_prefetch_next(struct moe_engine *e, uint32_t layer,
				  const float *x, uint32_t nt);

/* Route then apply. routes may be NULL when the caller does not want
 * them back. */
int moe_engine_forward(struct moe_engine *e, uint32_t layer, const float *x,
		       uint32_t nt, const struct moe_route_opts *o,
		       struct moe_route *routes, float *y,
		       struct moe_msg *err);

/* An expert source over the model file mapped read-only (the page cache
 * holds the experts, as llama.cpp does). */
struct moe_mapsrc;
int moe_mapsrc_open(struct moe_mapsrc **out, const struct moe_model *m,
		    struct moe_expert_src *src, struct moe_msg *err);
void moe_mapsrc_close(struct moe_mapsrc *s);

#endif
