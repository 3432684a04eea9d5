/* Expert compute throughput from one core to all of them: Q4_K experts
 * far larger than the caches, run on the pinned worker pool (each expert
 * on its node's workers), beside a plain memory-read loop over the same
 * experts on the same workers in the same run. The machine is shared:
 * the ratio compute/read is the figure that means something. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dtype.h"
#include "ffn.h"
#include "plan.h"
#include "pool.h"
#include "quant.h"
#include "topo.h"

#define N_EMBD 2048
#define N_FF 1024
#define WEIGHT_BYTES (256ull << 20)
#define REPS 5

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct bench {
	struct moe_ffn_mats m;
	size_t bytes;         /* of one expert */
	uint32_t n_exp;
	uint8_t **w;          /* per expert, on its node */
	uint32_t *node_of;    /* per expert: plan node index */
	const float *x;
	uint32_t nt;          /* tokens per expert */
	/* per worker */
	float **h, **out, **scr;
	uint64_t *sink;
};

static void mat(struct moe_mat *m, uint32_t rows, uint32_t cols)
{
	m->type = MOE_Q4_K;
	m->kern = moe_kernels(MOE_Q4_K);
	m->rows = rows;
	m->cols = cols;
	m->row_size = moe_row_size(MOE_Q4_K, cols);
	m->size = m->row_size * rows;
}

/* One properly quantised expert; the others are its copies (values are
 * realistic, and quantising 256 MiB would take longer than the bench). */
static void quantise(const struct moe_mat *m, uint8_t *dst, uint64_t *s)
{
	float row[N_EMBD];

	for (uint32_t r = 0; r < m->rows; r++) {
		for (uint32_t i = 0; i < m->cols; i++) {
			*s = *s * 6364136223846793005ull + 1442695040888963407ull;
			row[i] = (float)((int64_t)(*s >> 33) - (1ll << 30)) * 0x1p-36f;
		}
		moe_quantize_row(m->type, row, dst + r * m->row_size, m->cols);
	}
}

static int make_weights(struct bench *b, const struct moe_plan *p)
{
	uint64_t s = 12345;

	b->w = calloc(b->n_exp, sizeof(*b->w));
	b->node_of = calloc(b->n_exp, sizeof(*b->node_of));
	if (!b->w || !b->node_of)
		return -1;
	for (uint32_t i = 0; i < b->n_exp; i++) {
		/* Experts spread over the nodes, as a plan owns them. */
		b->node_of[i] = p->workers[i % p->n_workers].node;
		if (moe_topo_alloc((void **)&b->w[i], b->bytes,
				   (int)p->nodes[b->node_of[i]].os_index))
			return -1;
		if (i == 0) {
			quantise(&b->m.gate, b->w[0], &s);
			quantise(&b->m.up, b->w[0] + b->m.gate.size, &s);
			quantise(&b->m.down, b->w[0] + 2 * b->m.gate.size, &s);
		} else {
			memcpy(b->w[i], b->w[0], b->bytes);
		}
	}
	return 0;
}

static void ffn_task(void *ctx, uint32_t e, uint32_t worker)
{
	struct bench *b = ctx;
	const uint8_t *base = b->w[e];
	struct moe_ffn_ptrs w = { base, base + b->m.gate.size,
				  base + 2 * b->m.gate.size };
	struct moe_ffn_batch batch = {
		.x = b->x, .ldx = N_EMBD, .nt = b->nt, .h = b->h[worker],
		.ldh = N_FF, .out = b->out[worker], .ldo = N_EMBD,
		.use_blas = 0,
	};

	moe_ffn_gate_up(&b->m, &w, &batch, 0, N_FF, b->scr[worker]);
	moe_ffn_down(&b->m, &w, &batch, 0, N_EMBD, b->scr[worker]);
}

/* The same bytes, read and summed 8 bytes at a time. */
static void read_task(void *ctx, uint32_t e, uint32_t worker)
{
	struct bench *b = ctx;
	const uint8_t *p = b->w[e];
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;

	for (size_t i = 0; i + 32 <= b->bytes; i += 32) {
		uint64_t v[4];

		memcpy(v, p + i, 32);
		s0 += v[0];
		s1 += v[1];
		s2 += v[2];
		s3 += v[3];
	}
	b->sink[worker * 8] += s0 + s1 + s2 + s3;
}

/* Seconds for one pass over every expert. */
static double pass(struct moe_pool *pool, struct bench *b, moe_task_fn fn,
		   uint32_t nt)
{
	double t = now();

	b->nt = nt;
	moe_pool_run_nodes(pool, b->n_exp, b->node_of, fn, b);
	return now() - t;
}

static int worker_buffers(struct bench *b, const struct moe_plan *p)
{
	size_t scr = moe_ffn_scratch(N_EMBD, 16) * sizeof(float);
	uint32_t n = p->n_workers;

	b->h = calloc(n, sizeof(*b->h));
	b->out = calloc(n, sizeof(*b->out));
	b->scr = calloc(n, sizeof(*b->scr));
	b->sink = calloc((size_t)n * 8, sizeof(*b->sink));
	if (!b->h || !b->out || !b->scr || !b->sink)
		return -1;
	for (uint32_t w = 0; w < n; w++) {
		int os = (int)p->nodes[p->workers[w].node].os_index;

		if (moe_topo_scratch_alloc((void **)&b->h[w], 16 * N_FF * 4, os) ||
		    moe_topo_scratch_alloc((void **)&b->out[w], 16 * N_EMBD * 4, os) ||
		    moe_topo_scratch_alloc((void **)&b->scr[w], scr, os))
			return -1;
	}
	return 0;
}

/* Workers 0..k-1 of the plan: node by node, one per core. */
static void row(struct bench *b, const struct moe_plan *p,
		struct moe_pool_pin *pins, uint32_t k)
{
	double best[3] = { 1e9, 1e9, 1e9 }, all = (double)b->n_exp * b->bytes;
	struct moe_pool *pool;
	double rd, b1, b16;

	if (moe_pool_new_pinned(&pool, k, pins)) {
		fprintf(stderr, "bench_scale: cannot pin %u workers\n", k);
		exit(1);
	}
	/* Interleaved, best of each: the machine's other work drifts, and
	 * should not favour whichever loop ran at a quiet moment. */
	for (int r = 0; r < REPS; r++) {
		double t[3] = { pass(pool, b, read_task, 1),
				pass(pool, b, ffn_task, 1),
				pass(pool, b, ffn_task, 16) };

		for (int i = 0; i < 3; i++)
			best[i] = t[i] < best[i] ? t[i] : best[i];
	}
	rd = all / best[0] / 1e9;
	b1 = all / best[1] / 1e9;
	b16 = all / best[2] / 1e9;
	printf("%5u %10.2f %10.2f %8.2f %10.2f %8.2f\n", k, rd, b1, b1 / rd,
	       b16, b16 / rd);
	moe_pool_free(pool);
	(void)p;
}

int main(void)
{
	struct bench b = { 0 };
	struct moe_model m = { 0 };
	struct moe_msg err = { "" };
	struct moe_pool_pin *pins;
	struct moe_topo *t;
	struct moe_plan *p;
	float *x = malloc(16 * N_EMBD * sizeof(float));

	if (moe_topo_open(&t, NULL, &err) || moe_plan_new(&p, t, &m, NULL, &err)) {
		fprintf(stderr, "bench_scale: %s\n", err.text);
		return 1;
	}
	for (int i = 0; i < 16 * N_EMBD; i++)
		x[i] = (float)((i * 7919) % 200 - 100) / 100.0f;
	b.x = x;
	mat(&b.m.gate, N_FF, N_EMBD);
	mat(&b.m.up, N_FF, N_EMBD);
	mat(&b.m.down, N_EMBD, N_FF);
	b.bytes = b.m.gate.size * 2 + b.m.down.size;
	b.n_exp = (uint32_t)(WEIGHT_BYTES / b.bytes);
	pins = calloc(p->n_workers, sizeof(*pins));
	if (!pins || make_weights(&b, p) || worker_buffers(&b, p)) {
		fprintf(stderr, "bench_scale: out of memory\n");
		return 1;
	}
	moe_plan_pins(p, pins);
	printf("expert FFN scaling, %s kernels, Q4_K, n_embd %d, n_ff %d: %u experts, %.0f MiB; %u node(s), %u cores, one pinned worker per core\n",
	       moe_isa_name(moe_isa_best()), N_EMBD, N_FF, b.n_exp,
	       (double)b.n_exp * b.bytes / (1 << 20), t->n_nodes, t->n_cores);
	printf("%5s %10s %10s %8s %10s %8s\n", "cores", "read GB/s", "b1 GB/s",
	       "b1/read", "b16 GB/s", "b16/read");
	for (uint32_t k = 1; k <= p->n_workers; k++)
		row(&b, p, pins, k);
	free(pins);
	free(x);
	moe_plan_free(p);
	moe_topo_close(t);
	return 0;
}
