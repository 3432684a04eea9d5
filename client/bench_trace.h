/* Synthetic expert traces for moe-bench: which experts each token uses at
 * each layer, drawn without the model's router, for studying cache
 * policies on access patterns of a known shape. Three shapes:
 *   uniform      every expert equally likely;
 *   Zipf(s)      the expert of rank r (1 = hottest) with weight 1 / r^s;
 *                each layer ranks its experts in its own order, so the hot
 *                experts differ from layer to layer;
 *   correlated   each of a token's k picks repeats the previous token's
 *                pick at that layer with a given probability, else is a
 *                fresh draw (uniform, or Zipf when s > 0) among experts the
 *                previous token did not use: the repeat rate is exactly
 *                that probability in expectation.
 * A token's k experts are distinct; a fresh pick is drawn among the
 * experts not yet taken, in proportion to their weights. The sequence
 * depends only on the options (seed included). Not thread-safe: one trace
 * per thread or stream. */
#ifndef MOE_BENCH_TRACE_H
#define MOE_BENCH_TRACE_H

#include <stdint.h>

enum bench_dist {
	BENCH_UNIFORM,
	BENCH_ZIPF,
	BENCH_CORRELATED,
};

struct bench_trace_opts {
	enum bench_dist dist;
	uint32_t n_layer;  /* layers the trace covers, numbered 0..n_layer-1 */
	uint32_t n_expert; /* experts per layer, 1..BENCH_TRACE_MAX_EXPERT */
	uint32_t k;        /* experts per token, 1..n_expert */
	double zipf_s;     /* BENCH_ZIPF: the exponent, > 0; BENCH_CORRELATED:
			    * 0 for a uniform base, else a Zipf base */
	double repeat;     /* BENCH_CORRELATED: probability in [0, 1] */
	uint64_t seed;
};

#define BENCH_TRACE_MAX_EXPERT 4096

struct bench_trace;

/* Returns 0 and sets *out; -EINVAL (an option out of range: n_layer or
 * n_expert 0 or too large, k outside 1..n_expert, zipf_s not finite or
 * negative, or 0 for BENCH_ZIPF, repeat outside [0, 1], an unknown dist);
 * -ENOMEM. */
int bench_trace_new(struct bench_trace **out, const struct bench_trace_opts *o);
void bench_trace_free(struct bench_trace *t);

/* The next token's k distinct experts at layer (< n_layer) into ids. */
void bench_trace_next(struct bench_trace *t, uint32_t layer, uint32_t *ids);

/* The expert that holds rank r (0: the hottest) of layer's Zipf order;
 * the identity for a uniform trace. For tests and reports. */
uint32_t bench_trace_expert_at(const struct bench_trace *t, uint32_t layer,
			       uint32_t r);

/* Probability of rank r (0-based) under Zipf(s) over n ranks. */
double bench_zipf_pmf(uint32_t n, double s, uint32_t r);

/* Parse "uniform", "zipf", "zipf:S", "correlated:P" or
 * "correlated:P:S" into o->dist, zipf_s and repeat (Zipf's s defaults to
 * 1.0). Returns 0 or -EINVAL. */
int bench_trace_parse(const char *spec, struct bench_trace_opts *o);

#endif
