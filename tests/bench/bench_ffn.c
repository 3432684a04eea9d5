/* Expert FFN throughput per weight type, at batch 1 and batch 16, in GB/s
 * of weight bytes, beside a plain memory-read loop over the same bytes
 * measured in the same run (the machine is shared: only ratios mean
 * much). One core; the weights are far larger than the caches. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "dtype.h"
#include "ffn.h"
#include "quant.h"

#define N_EMBD 2048
#define N_FF 1024
#define WEIGHT_BYTES (192ull << 20) /* per type: far past any L3 */
#define REPS 3

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Written so the compiler cannot drop the summing loop. */
volatile uint64_t bench_sink;

/* The same bytes, read and summed 8 bytes at a time. */
static double read_loop(const uint8_t *p, size_t n)
{
	double best = 1e9;

	for (int r = 0; r < REPS; r++) {
		uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
		double t = now();

		for (size_t i = 0; i + 32 <= n; i += 32) {
			uint64_t v[4];

			memcpy(v, p + i, 32);
			s0 += v[0];
			s1 += v[1];
			s2 += v[2];
			s3 += v[3];
		}
		t = now() - t;
		bench_sink = s0 + s1 + s2 + s3;
		if (t < best)
			best = t;
	}
	return (double)n / best / 1e9;
}

struct expert {
	struct moe_ffn_mats m;
	size_t bytes;
};

static void mat(struct moe_mat *m, uint32_t type, uint32_t rows,
		uint32_t cols, uint64_t off)
{
	m->type = type;
	m->kern = moe_kernels(type);
	m->rows = rows;
	m->cols = cols;
	m->row_size = moe_row_size(type, cols);
	m->size = m->row_size * rows;
	m->off = off;
}

/* Fill n bytes with copies of one properly quantised expert, so values
 * are realistic without quantising 192 MiB. */
static uint8_t *make_weights(const struct expert *e, size_t n)
{
	uint8_t *w = aligned_alloc(64, n);
	float *row = malloc(N_EMBD * sizeof(float));
	uint64_t s = 12345;

	for (size_t r = 0; r < e->bytes / e->m.gate.row_size; r++) {
		for (int i = 0; i < N_EMBD; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			row[i] = (float)((int64_t)(s >> 33) - (1ll << 30)) * 0x1p-36f;
		}
		moe_quantize_row(e->m.gate.type, row, w + r * e->m.gate.row_size,
				 N_EMBD);
	}
	for (size_t off = e->bytes; off < n; off += e->bytes)
		memcpy(w + off, w, off + e->bytes <= n ? e->bytes : n - off);
	free(row);
	return w;
}

static double run_ffn(const struct expert *e, const uint8_t *w, size_t n_exp,
		      uint32_t nt, int blas, float *x, float *h, float *out,
		      float *scr)
{
	struct moe_ffn_batch b = {
		.x = x, .ldx = N_EMBD, .nt = nt, .h = h, .ldh = N_FF,
		.out = out, .ldo = N_EMBD, .use_blas = blas,
	};
	double best = 1e9;

	for (int r = 0; r < REPS; r++) {
		double t = now();

		for (size_t i = 0; i < n_exp; i++) {
			const uint8_t *base = w + i * e->bytes;
			struct moe_ffn_ptrs p = { base, base + e->m.gate.size,
						  base + 2 * e->m.gate.size };

			moe_ffn_gate_up(&e->m, &p, &b, 0, N_FF, scr);
			moe_ffn_down(&e->m, &p, &b, 0, N_EMBD, scr);
		}
		t = now() - t;
		if (t < best)
			best = t;
	}
	return (double)(n_exp * e->bytes) / best / 1e9;
}

int main(void)
{
	static const uint32_t types[] = { MOE_F32, MOE_F16, MOE_BF16, MOE_Q8_0,
					  MOE_Q4_0, MOE_Q4_K, MOE_Q6_K };
	float *x = malloc(16 * N_EMBD * sizeof(float));
	float *h = malloc(16 * N_FF * sizeof(float));
	float *out = malloc(16 * N_EMBD * sizeof(float));
	float *scr = malloc(moe_ffn_scratch(N_EMBD, 16) * sizeof(float));

	openblas_set_num_threads(1); /* one core, as the other columns */
	for (int i = 0; i < 16 * N_EMBD; i++)
		x[i] = (float)((i * 7919) % 200 - 100) / 100.0f;
	printf("expert FFN, one core, %s kernels, n_embd %d, n_ff %d, %llu MiB of weights per type\n",
	       moe_isa_name(moe_isa_best()), N_EMBD, N_FF, WEIGHT_BYTES >> 20);
	printf("(GB/s of weight bytes; b16: 16 tokens per pass, by the streaming\n"
	       " kernels and by dequantised tiles + OpenBLAS sgemm)\n");
	printf("%-6s %10s %10s %10s %10s %8s %8s\n", "type", "read GB/s",
	       "b1 GB/s", "b16 GB/s", "b16 sgemm", "b1/read", "b16/read");
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct expert e;
		size_t n_exp;
		uint8_t *w;
		double rd, b1, b16, b16s;

		mat(&e.m.gate, types[i], N_FF, N_EMBD, 0);
		mat(&e.m.up, types[i], N_FF, N_EMBD, 0);
		mat(&e.m.down, types[i], N_EMBD, N_FF, 0);
		e.bytes = e.m.gate.size * 3;
		n_exp = WEIGHT_BYTES / e.bytes;
		w = make_weights(&e, n_exp * e.bytes);
		rd = read_loop(w, n_exp * e.bytes);
		b1 = run_ffn(&e, w, n_exp, 1, 0, x, h, out, scr);
		b16 = run_ffn(&e, w, n_exp, 16, 0, x, h, out, scr);
		b16s = run_ffn(&e, w, n_exp, 16, 1, x, h, out, scr);
		printf("%-6s %10.2f %10.2f %10.2f %10.2f %8.2f %8.2f\n",
		       moe_dtype_info(types[i])->name, rd, b1, b16, b16s,
		       b1 / rd, b16 / rd);
		free(w);
	}
	free(x);
	free(h);
	free(out);
	free(scr);
	return 0;
}
