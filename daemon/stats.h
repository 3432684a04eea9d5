/* moed's serving figures: per MoE layer the requests, tokens, expert hits
 * and misses, weight passes, a histogram of request times and the tokens
 * each expert got; and the request times over every layer. The
 * dispatcher thread alone updates and reads them (questions are answered
 * between rounds by the same thread), so the request path adds plain
 * increments: no atomics, no locks. */
#ifndef MOE_STATS_H
#define MOE_STATS_H

#include <stdint.h>

#include "model.h"
#include "proto.h"
#include "router.h"

/* Eight buckets per power of two of microseconds: values 0..7 have a
 * bucket each, and bucket 8 * (e - 2) + m holds [(8 + m) << (e - 3),
 * (9 + m) << (e - 3)) for e = 3..31. A fixed 240 counters cover any
 * uint32_t, at a relative error of at most 1/16 from a bucket's middle. */
#define MOE_HIST_BUCKETS 240

struct moe_hist {
	uint64_t n, sum, max;
	uint64_t b[MOE_HIST_BUCKETS];
};

static inline uint32_t moe_hist_bucket(uint32_t us)
{
	uint32_t e;

	if (us < 8)
		return us;
	e = 31u - (uint32_t)__builtin_clz(us);
	return 8 * (e - 2) + ((us >> (e - 3)) & 7);
}

static inline void moe_hist_add(struct moe_hist *h, uint32_t us)
{
	h->b[moe_hist_bucket(us)]++;
	h->n++;
	h->sum += us;
	if (us > h->max)
		h->max = us;
}

/* The smallest value bucket b holds. */
uint32_t moe_hist_low(uint32_t b);

/* The q-quantile (0 < q <= 1) of what was added: the middle of the
 * bucket holding the ceil(q * n)-th smallest value, never above the
 * largest value added, which is the answer when that rank is n. 0 when
 * empty. */
uint32_t moe_hist_quantile(const struct moe_hist *h, double q);

/* A histogram as the wire carries it. */
void moe_hist_latency(const struct moe_hist *h, struct ipc_latency *l);

struct moe_layer_stats {
	uint64_t requests, tokens, failed;
	uint64_t hits, misses, passes;
	struct moe_hist lat;
};

struct moe_serve_stats {
	const struct moe_model *m;
	struct moe_layer_stats *layer; /* per model layer; dense stay 0 */
	uint64_t **load;   /* per MoE layer: tokens per expert; else NULL */
	uint64_t *load_mem;
	struct moe_hist lat; /* every layer */
};

/* Sized for m (which must outlive it). 0 or -ENOMEM. */
int moe_serve_stats_init(struct moe_serve_stats *st, const struct moe_model *m);
void moe_serve_stats_free(struct moe_serve_stats *st);

/* One request that ran on layer (it passed the checks), completed with
 * status after us microseconds. */
static inline void moe_serve_stats_done(struct moe_serve_stats *st,
					uint32_t layer, uint32_t nt,
					int status, uint32_t us)
{
	struct moe_layer_stats *L = &st->layer[layer];

	L->requests++;
	L->tokens += nt;
	L->failed += status != 0;
	moe_hist_add(&L->lat, us);
	moe_hist_add(&st->lat, us);
}

/* The routed tokens of a request that ran on layer, hit and missed its
 * expert uses: the hit rate and each expert's load. */
void moe_serve_stats_uses(struct moe_serve_stats *st, uint32_t layer,
			  const struct moe_route *r, uint32_t nt,
			  uint32_t hit, uint32_t missed);

/* Answer a per-layer question: 0 with r filled (header included), or
 * -EINVAL with r's header saying so and why naming the field. */
int moe_serve_stats_layer(const struct moe_serve_stats *st,
			  const struct ipc_stats_layer *q,
			  struct ipc_stats_layer_reply *r, char *why,
			  size_t len);

#endif
