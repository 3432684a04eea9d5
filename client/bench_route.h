/* The model's own routers, run inside moe-bench: which experts moed's
 * router picks for the hidden states moe-bench sends. The router-driven
 * workload needs the picks only to know the expert bytes its trace
 * needed (for the I/O ceiling); moed still routes every request itself.
 * The same code (daemon/router.c) on the same inputs picks the same
 * experts. Read-only once open: any number of threads may route at once,
 * each with its own scratch. */
#ifndef MOE_BENCH_ROUTE_H
#define MOE_BENCH_ROUTE_H

#include <stdint.h>

#include "diag.h"
#include "model.h"

struct bench_router;
struct bench_route_scratch;

/* Load every MoE layer's router (and selection bias) from m's file.
 * 0, or -errno / -ENOMEM with err naming the file and offset. */
int bench_router_open(struct bench_router **out, const struct moe_model *m,
		      struct moe_msg *err);
void bench_router_close(struct bench_router *r);

/* Scratch for routing up to max_tokens tokens at once; NULL when out of
 * memory. */
struct bench_route_scratch *bench_route_scratch_new(const struct bench_router *r,
						    uint32_t max_tokens);
void bench_route_scratch_free(struct bench_route_scratch *s);

/* The distinct experts that nt (<= the scratch's max_tokens) rows of x
 * use at MoE layer `layer`, in ascending order, into ids (room for the
 * layer's n_expert). Returns how many. */
uint32_t bench_route_experts(const struct bench_router *r,
			     struct bench_route_scratch *s, uint32_t layer,
			     const float *x, uint32_t nt, uint32_t *ids);

#endif
