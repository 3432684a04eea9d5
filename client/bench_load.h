/* moe-bench's load: clients that drive moed through libmoeclient and
 * record every request. Each client is its own connection (a thread, or a
 * process with --procs) running `inflight` independent streams, one
 * request in flight each. A stream first sends its prompt (prefill: one
 * request of `prefill` rows per MoE layer), then decodes its tokens one by
 * one (one row per request per layer); all clients finish prefill before
 * any decodes, so each phase has a wall time of its own.
 *   Router-driven: each token's hidden state starts random and flows
 *   through every MoE layer as a residual stream (the next layer's input
 *   is the input plus alpha times the output): moed's own routers choose.
 *   Synthetic: a bench_trace chooses the experts and moed is handed that
 *   routing (caller-given routing), bypassing its router.
 * Everything depends only on the options and the seed, so two runs on two
 * moeds see the same trace (up to floating-point differences in batches). */
#ifndef MOE_BENCH_LOAD_H
#define MOE_BENCH_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench_route.h"
#include "bench_trace.h"
#include "diag.h"

enum bench_workload {
	BENCH_ROUTER,
	BENCH_TRACE,
};

struct bench_load_opts {
	const char *sock;
	enum bench_workload kind;
	struct bench_trace_opts trace; /* BENCH_TRACE: dist, zipf_s, repeat,
					* k (0: the model's); the layers and
					* experts come from moed */
	uint32_t tokens;     /* decode tokens, all streams together */
	uint32_t prefill;    /* prompt rows per stream; 0: no prefill */
	uint32_t clients;    /* connections */
	uint32_t inflight;   /* streams (requests in flight) per client */
	bool procs;          /* clients as processes, not threads */
	double alpha;        /* residual stream: x += alpha * y */
	uint64_t seed;
	uint32_t timeout_ms; /* bound on each request */
	/* Router-driven: route each request here too, to record its experts
	 * (for the I/O ceiling); NULL: not recorded. */
	const struct bench_router *router;
	const char *label;   /* progress bar on stderr; NULL: none */
};

/* One request, as the client saw it. */
struct bench_rec {
	int64_t t_done;     /* CLOCK_MONOTONIC ns when collected */
	uint32_t wall_usec; /* submit to collection */
	uint32_t usec;      /* inside moed */
	uint32_t hit, miss; /* expert uses resident / read */
	uint32_t layer;
	uint32_t n_tokens;
	uint32_t ids_off;   /* its distinct experts: ids[ids_off ..] */
	uint32_t n_ids;     /* 0 when not recorded */
	uint8_t prefill;
};

struct bench_load {
	struct bench_rec *rec; /* sorted by t_done */
	size_t n_rec;
	uint32_t *ids;
	size_t n_ids;
	int64_t t_start, t_decode, t_end; /* ns: start, decode start, end */
	uint64_t prefill_tokens, decode_tokens;
	uint32_t k;            /* experts per token */
};

/* Run the load against moed at o->sock. 0 with *out filled (free with
 * bench_load_free), or a negative code with err naming the client and
 * what failed (moed refused, died, or answered a request with an error;
 * moed granted fewer tokens or requests in flight than asked). */
int bench_load_run(const struct bench_load_opts *o, struct bench_load *out,
		   struct moe_msg *err);
void bench_load_free(struct bench_load *l);

/* Ask moed for every expert of every MoE layer once (caller-given
 * routing, one expert per token), so that a cache large enough holds the
 * whole model before a run. n_expert[l]: experts of layer l (0: not a MoE
 * layer). 0 or a negative code with err set. */
int bench_load_touch_all(const char *sock, const uint32_t *n_expert,
			 uint32_t n_layer, uint32_t timeout_ms,
			 struct moe_msg *err);

#endif
