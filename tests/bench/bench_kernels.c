/* Kernel throughput: for each computable type and each ISA this CPU runs,
 * dot at batch 1 and dot_multi at batch 16 over a weight matrix larger than
 * L3, in GB/s of weight bytes, beside a plain read of as many bytes in the
 * same run. A standalone program; it takes ten seconds or so. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dtype.h"
#include "quant.h"

#define MATRIX_BYTES ((size_t)64 << 20) /* twice this machine's L3 */
#define N 4096                          /* weights per row */
#define BATCH 16
#define SEED_ROWS 64    /* distinct rows, copied over the whole matrix */
#define PASS_BUDGET 0.2 /* seconds: slow kernels read part of the matrix */
#define MIN_TIME 0.3    /* seconds of passes per figure, best pass counts */
#define MAX_PASSES 3

static const uint32_t types[] = {
	MOE_F32, MOE_F16, MOE_BF16, MOE_Q8_0, MOE_Q6_K, MOE_Q4_K, MOE_Q4_0,
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x1234567;

static float rnd(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float)(rng_state >> 40) * 0x1p-23f - 1.0f;
}

/* Four sums in flight so the adds keep up with the memory. */
static uint64_t read_pass(const uint64_t *p, size_t words)
{
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;

	for (size_t i = 0; i < words; i += 4) {
		s0 += p[i];
		s1 += p[i + 1];
		s2 += p[i + 2];
		s3 += p[i + 3];
	}
	return s0 + s1 + s2 + s3;
}

static volatile uint64_t sink;

static double mem_read_gbs(const void *buf)
{
	double best = 0;

	for (int rep = 0; rep < 5; rep++) {
		double t = now();

		sink = read_pass(buf, MATRIX_BYTES / 8);
		t = now() - t;
		best = fmax(best, MATRIX_BYTES / t * 1e-9);
	}
	return best;
}

struct job {
	const struct moe_kernels *k;
	const uint8_t *matrix;
	size_t rows, row_bytes;
	const float *x;
	size_t batch;
};

/* One pass from the top of the matrix, until its end or PASS_BUDGET; GB/s
 * of the weight bytes it read. */
static double pass(const struct job *j)
{
	static float out[BATCH];
	double t0 = now(), t = 0;
	size_t r = 0;

	while (r < j->rows) {
		size_t end = r + 64 < j->rows ? r + 64 : j->rows;

		for (; r < end; r++) {
			const uint8_t *row = j->matrix + r * j->row_bytes;

			if (j->batch == 1)
				out[0] = j->k->dot(row, j->x, N);
			else
				j->k->dot_multi(row, j->x, N, j->batch, out, 1, N);
		}
		t = now() - t0;
		if (t > PASS_BUDGET)
			break;
	}
	return r * j->row_bytes / t * 1e-9;
}

static double best_pass(const struct job *j)
{
	double best = 0, t0 = now();

	for (int p = 0; p < MAX_PASSES && now() - t0 < MIN_TIME; p++)
		best = fmax(best, pass(j));
	return best;
}

/* Quantise SEED_ROWS random rows and tile them over the matrix. */
static size_t fill(uint32_t t, uint8_t *matrix, float *src)
{
	size_t row_bytes = moe_row_size(t, N), rows = MATRIX_BYTES / row_bytes;

	for (size_t i = 0; i < (size_t)SEED_ROWS * N; i++)
		src[i] = rnd();
	for (size_t r = 0; r < SEED_ROWS; r++)
		if (moe_quantize_row(t, src + r * N, matrix + r * row_bytes, N)) {
			fprintf(stderr, "cannot quantise %u\n", t);
			exit(1);
		}
	for (size_t r = SEED_ROWS; r < rows; r++)
		memcpy(matrix + r * row_bytes,
		       matrix + (r % SEED_ROWS) * row_bytes, row_bytes);
	return rows;
}

int main(void)
{
	uint8_t *matrix = aligned_alloc(4096, MATRIX_BYTES);
	float *src = malloc(sizeof(float) * SEED_ROWS * N);
	float *x = malloc(sizeof(float) * BATCH * N);
	double mem, t0 = now();

	if (!matrix || !src || !x) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	memset(matrix, 1, MATRIX_BYTES);
	for (size_t i = 0; i < (size_t)BATCH * N; i++)
		x[i] = rnd();
	mem = mem_read_gbs(matrix);
	printf("weights: %zu MiB, rows of %d; memory read (uint64 sum): %.2f GB/s\n",
	       MATRIX_BYTES >> 20, N, mem);
	printf("%-5s %-7s %14s %6s %17s %6s %9s\n", "type", "isa",
	       "dot b=1 GB/s", "/mem", "multi b=16 GB/s", "/mem", "GFLOP/s");
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct job j = { .matrix = matrix, .x = x };

		j.row_bytes = moe_row_size(types[i], N);
		j.rows = fill(types[i], matrix, src);
		for (int isa = 0; isa < MOE_ISA_COUNT; isa++) {
			double b1, b16;

			j.k = moe_kernels_for(types[i], isa);
			if (!j.k)
				continue;
			j.batch = 1;
			b1 = best_pass(&j);
			j.batch = BATCH;
			b16 = best_pass(&j);
			printf("%-5s %-7s %14.2f %6.2f %17.2f %6.2f %9.1f\n",
			       moe_dtype_info(types[i])->name, moe_isa_name(isa),
			       b1, b1 / mem, b16, b16 / mem,
			       b16 / j.row_bytes * N * 2 * BATCH);
		}
	}
	if (!moe_isa_supported(MOE_ISA_AVX512))
		printf("AVX-512 not supported by this CPU: not measured\n");
	printf("memory read again: %.2f GB/s; %.1f s in all\n",
	       mem_read_gbs(matrix), now() - t0);
	free(x);
	free(src);
	free(matrix);
	return 0;
}
