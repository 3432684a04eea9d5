/* Tests for the weight kernels (daemon/quant*.c): the scalar reference
 * against blocks built and decoded here in double, every fast kernel against
 * the reference on every type and every ISA this CPU has, each token's bits
 * independent of its batch, quantiser round trips, fp16/bf16 conversion,
 * and ISA selection. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dtype.h"
#include "quant.h"
#include "testutil.h"

static const uint32_t all_types[] = {
	MOE_F32, MOE_F16, MOE_BF16, MOE_Q4_0, MOE_Q8_0, MOE_Q4_K, MOE_Q6_K,
};
#define NTYPES (sizeof(all_types) / sizeof(all_types[0]))

static const char *tname(uint32_t t)
{
	return moe_dtype_info(t)->name;
}

/* ---- an independent decoder, in double --------------------------------- */

static unsigned int u16le(const uint8_t *p)
{
	return p[0] | (unsigned int)p[1] << 8;
}

static void put16(uint8_t *p, unsigned int v)
{
	p[0] = v & 0xff;
	p[1] = v >> 8;
}

/* IEEE binary16 and bfloat16 from their definitions. */
static double dh(unsigned int h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v;

	if (e == 31)
		v = m ? NAN : INFINITY;
	else
		v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
	return (h & 0x8000) ? -v : v;
}

static double dbf(unsigned int h)
{
	int e = (h >> 7) & 255, m = h & 127;
	double v;

	if (e == 255)
		v = m ? NAN : INFINITY;
	else
		v = e ? ldexp(128 + m, e - 134) : ldexp(m, -133);
	return (h & 0x8000) ? -v : v;
}

/* Q4_K sub-block j's scale and min from the 12 packed bytes: 6 bits each,
 * sub-blocks 0-3 whole in bytes 0-7, 4-7 split between bytes 8-11 (low
 * nibbles) and the top two bits of bytes 0-7. */
static void dd_q4k_sm(const uint8_t *s, int j, int *sc, int *m)
{
	if (j < 4) {
		*sc = s[j] % 64;
		*m = s[4 + j] % 64;
	} else {
		*sc = s[4 + j] % 16 + 16 * (s[j - 4] / 64);
		*m = s[4 + j] / 16 + 16 * (s[j] / 64);
	}
}

/* Element i of one block, in double. */
static double dd_elem(uint32_t t, const uint8_t *b, int i)
{
	float f;
	int j, sc, m, q;

	switch (t) {
	case MOE_F32:
		memcpy(&f, b + 4 * i, 4);
		return f;
	case MOE_F16:
		return dh(u16le(b + 2 * i));
	case MOE_BF16:
		return dbf(u16le(b + 2 * i));
	case MOE_Q4_0:
		q = i < 16 ? b[2 + i] % 16 : b[2 + i - 16] / 16;
		return (q - 8) * dh(u16le(b));
	case MOE_Q8_0:
		return (int8_t)b[2 + i] * dh(u16le(b));
	case MOE_Q4_K:
		j = i / 32;
		dd_q4k_sm(b + 4, j, &sc, &m);
		q = b[16 + 32 * (j / 2) + i % 32];
		q = j % 2 ? q / 16 : q % 16;
		return dh(u16le(b)) * sc * q - dh(u16le(b + 2)) * m;
	case MOE_Q6_K: {
		int half = i / 128, k = i % 128 / 32, l = i % 32;
		int lo = b[64 * half + 32 * (k % 2) + l];
		int hi = b[128 + 32 * half + l];

		q = (k < 2 ? lo % 16 : lo / 16) + 16 * ((hi >> (2 * k)) % 4);
		return dh(u16le(b + 208)) * (int8_t)b[192 + i / 16] * (q - 32);
	}
	}
	fail_msg("no decoder for type %u", t);
	return 0;
}

static void dd_row(uint32_t t, const uint8_t *row, double *out, size_t n)
{
	const struct moe_dtype_info *ti = moe_dtype_info(t);

	for (size_t i = 0; i < n; i++)
		out[i] = dd_elem(t, row + i / ti->block * ti->block_size,
				 (int)(i % ti->block));
}

/* ---- rows of random blocks --------------------------------------------- */

/* A scale that is a small power of two, so that every product and every
 * partial sum of a dot with x in {-1, 0, 1} is exact in float. */
static uint16_t exact_scale(struct trng *r, float mag)
{
	float v = mag / (float)(1 << (trng_next(r) % 2));

	return moe_f32_to_f16(trng_next(r) % 2 ? v : -v);
}

static float rand_weight(struct trng *r, int exact)
{
	return exact ? (float)(int)(trng_next(r) % 17) - 8 : trng_float(r, -1, 1);
}

/* A block scale: random within +-mag, or exact_scale(mag). */
static uint16_t rand_scale(struct trng *r, int exact, float mag)
{
	return exact ? exact_scale(r, mag)
		     : moe_f32_to_f16(trng_float(r, -mag, mag));
}

/* Random bytes everywhere (every nibble, scale and sign pattern), then
 * finite fp16 block scales and finite float weights. Exact rows keep
 * every dot with x in {-1, 0, 1} below 2^24 units of their scales. */
static void fill_row(struct trng *r, uint32_t t, uint8_t *row, size_t n,
		     int exact)
{
	const struct moe_dtype_info *ti = moe_dtype_info(t);
	size_t nb = n / ti->block, bs = ti->block_size;

	for (size_t i = 0; i < nb * bs; i++)
		row[i] = (uint8_t)trng_next(r);
	for (size_t i = 0; i < nb; i++) {
		uint8_t *b = row + i * bs;
		float w = rand_weight(r, exact);

		switch (t) {
		case MOE_F32:
			memcpy(b, &w, 4);
			break;
		case MOE_F16:
			put16(b, moe_f32_to_f16(w));
			break;
		case MOE_BF16:
			put16(b, moe_f32_to_bf16(w));
			break;
		case MOE_Q4_0:
		case MOE_Q8_0:
			put16(b, rand_scale(r, exact, exact ? 0.5f : 1));
			break;
		case MOE_Q4_K:
			put16(b, rand_scale(r, exact, exact ? 0.125f : 0.1f));
			put16(b + 2, rand_scale(r, exact, exact ? 0.125f : 0.1f));
			break;
		case MOE_Q6_K:
			put16(b + 208, rand_scale(r, exact, exact ? 0.0625f : 0.01f));
			break;
		}
	}
}

/* ---- the reference against hand-built blocks ---------------------------- */

static const struct moe_kernels *ref(uint32_t t)
{
	const struct moe_kernels *k = moe_kernels_for(t, MOE_ISA_SCALAR);

	assert_non_null(k);
	return k;
}

/* Single elements worked out by hand from the layout. */
static void test_ref_by_hand(void **state)
{
	uint8_t q4_0[18] = { 0 }, q8_0[34] = { 0 }, q4_k[144] = { 0 };
	uint8_t q6_k[210] = { 0 }, f16[2], bf16[2];
	float out[256];

	/* Q4_0, d = 0.5: byte 3 = 0xa2 holds element 3 (2 - 8) * 0.5 = -3
	 * and element 19 (10 - 8) * 0.5 = 1; zero bytes give -8 * 0.5. */
	put16(q4_0, 0x3800);
	q4_0[2 + 3] = 0xa2;
	ref(MOE_Q4_0)->dequant(q4_0, out, 32);
	assert_true(out[3] == -3.0f && out[19] == 1.0f && out[0] == -4.0f);

	/* Q8_0, d = -1: qs[7] = -100 is 100. */
	put16(q8_0, 0xbc00);
	q8_0[2 + 7] = (uint8_t)-100;
	ref(MOE_Q8_0)->dequant(q8_0, out, 32);
	assert_true(out[7] == 100.0f && out[8] == 0.0f);

	/* Q4_K, d = 1, dmin = 0.5, sub-block 5: scale 37 = 0b10'0101 and
	 * min 22 = 0b01'0110 -> byte 9 = 0x65 (low nibbles), top bits 2 in
	 * byte 1 and 1 in byte 5. Element 163 = 5 * 32 + 3 is in group 2
	 * (byte 64 + 3), high nibble: 9 -> 1 * 37 * 9 - 0.5 * 22 = 322. */
	put16(q4_k, 0x3c00);
	put16(q4_k + 2, 0x3800);
	q4_k[4 + 9] = 0x65;
	q4_k[4 + 1] = 2 << 6;
	q4_k[4 + 5] = 1 << 6;
	q4_k[16 + 67] = 0x90;
	ref(MOE_Q4_K)->dequant(q4_k, out, 256);
	assert_true(out[163] == 322.0f);
	assert_true(out[160] == -11.0f); /* q = 0: just the min */
	assert_true(out[131] == 0.0f);   /* sub-block 4, low nibble, sc = m = 0 */

	/* Q6_K, d = 0.5: element 193 is half 1, k = 2, l = 1, scale 193 / 16
	 * = 12 set to -3; q = 45 = 0b10'1101: high nibble 13 of ql[64 + 1],
	 * bits 4-5 = 2 of qh[32 + 1] -> 0.5 * -3 * (45 - 32) = -19.5. */
	put16(q6_k + 208, 0x3800);
	q6_k[192 + 12] = (uint8_t)-3;
	q6_k[64 + 1] = 0xd0;
	q6_k[128 + 32 + 1] = 2 << 4;
	ref(MOE_Q6_K)->dequant(q6_k, out, 256);
	assert_true(out[193] == -19.5f);
	assert_true(out[192] == 48.0f); /* q = 0: 0.5 * -3 * -32 */

	put16(f16, 0x3555); /* 1/3 rounded: 0x1.554p-2 */
	ref(MOE_F16)->dequant(f16, out, 1);
	assert_true(out[0] == 0x1.554p-2f);
	put16(bf16, 0xc0a0); /* -5 */
	ref(MOE_BF16)->dequant(bf16, out, 1);
	assert_true(out[0] == -5.0f);
}

/* The packing as the test reads the spec: see dd_q4k_sm. */
static void pack_q4k(uint8_t *b, const int sc[8], const int m[8],
		     const int q[256])
{
	uint8_t *s = b + 4, *qs = b + 16;

	memset(s, 0, 12 + 128);
	for (int j = 0; j < 4; j++) {
		s[j] = sc[j] | (sc[j + 4] >> 4) << 6;
		s[j + 4] = m[j] | (m[j + 4] >> 4) << 6;
		s[j + 8] = (sc[j + 4] & 15) | (m[j + 4] & 15) << 4;
	}
	for (int i = 0; i < 256; i++)
		qs[32 * (i / 64) + i % 32] |= q[i] << (i % 64 < 32 ? 0 : 4);
}

static void pack_q6k(uint8_t *b, const int q[256])
{
	memset(b, 0, 192);
	for (int i = 0; i < 256; i++) {
		int half = i / 128, k = i % 128 / 32, l = i % 32;

		b[64 * half + 32 * (k % 2) + l] |= (q[i] % 16) << (k < 2 ? 0 : 4);
		b[128 + 32 * half + l] |= (q[i] / 16) << (2 * k);
	}
}

/* Compare a dequantised block with values known in double. */
static void expect_block(const float *got, const double *want, int n)
{
	for (int i = 0; i < n; i++)
		if (fabs(got[i] - want[i]) > 1e-6 * fabs(want[i]) + 1e-30)
			fail_msg("element %d: got %.9g want %.9g", i, got[i],
				 want[i]);
}

/* Blocks built from random parameters; the expected values come from the
 * parameters, not from decoding. */
static void test_ref_built_blocks(void **state)
{
	struct trng r = { 11 };
	uint8_t b[210];
	float got[256];
	double want[256];
	int q[256], sc[16], m[8];

	for (int rep = 0; rep < 200; rep++) {
		uint16_t d = moe_f32_to_f16(trng_float(&r, -2, 2));
		uint16_t dmin = moe_f32_to_f16(trng_float(&r, -2, 2));

		for (int j = 0; j < 8; j++) {
			sc[j] = (int)(trng_next(&r) % 64);
			m[j] = (int)(trng_next(&r) % 64);
		}
		for (int i = 0; i < 256; i++)
			q[i] = (int)(trng_next(&r) % 16);
		put16(b, d);
		put16(b + 2, dmin);
		pack_q4k(b, sc, m, q);
		for (int i = 0; i < 256; i++)
			want[i] = dh(d) * sc[i / 32] * q[i] - dh(dmin) * m[i / 32];
		ref(MOE_Q4_K)->dequant(b, got, 256);
		for (int i = 0; i < 256; i++) { /* cancels: scale by the terms */
			double terms = fabs(dh(d) * sc[i / 32] * q[i]) +
				       fabs(dh(dmin) * m[i / 32]);

			if (fabs(got[i] - want[i]) > 1e-6 * terms)
				fail_msg("Q4_K rep %d element %d: %.9g vs %.9g",
					 rep, i, got[i], want[i]);
		}

		for (int j = 0; j < 16; j++)
			sc[j] = (int)(trng_next(&r) % 256) - 128;
		for (int i = 0; i < 256; i++)
			q[i] = (int)(trng_next(&r) % 64);
		pack_q6k(b, q);
		for (int j = 0; j < 16; j++)
			b[192 + j] = (uint8_t)sc[j];
		put16(b + 208, d);
		for (int i = 0; i < 256; i++)
			want[i] = dh(d) * sc[i / 16] * (q[i] - 32);
		ref(MOE_Q6_K)->dequant(b, got, 256);
		expect_block(got, want, 256);

		put16(b, d);
		for (int i = 0; i < 16; i++)
			b[2 + i] = (uint8_t)(q[i] % 16 | q[i + 16] % 16 << 4);
		for (int i = 0; i < 32; i++)
			want[i] = (q[i] % 16 - 8) * dh(d);
		ref(MOE_Q4_0)->dequant(b, got, 32);
		expect_block(got, want, 32);

		for (int i = 0; i < 32; i++) {
			b[2 + i] = (uint8_t)(q[i] * 4 - 128);
			want[i] = (q[i] * 4 - 128) * dh(d);
		}
		ref(MOE_Q8_0)->dequant(b, got, 32);
		expect_block(got, want, 32);
	}
}

/* The reference on random rows against the decoder above, and its dot
 * against a double-precision dot. */
static void test_ref_random_rows(void **state)
{
	struct trng r = { 12 };
	static uint8_t row[2304 * 4]; /* the largest: 2304 F32 */
	static float x[2304], got[2304];
	static double want[2304];

	for (size_t ti = 0; ti < NTYPES; ti++) {
		uint32_t t = all_types[ti];
		size_t n = moe_dtype_info(t)->block == 256 ? 2304 : 1280;
		double dot = 0, mag = 0, vmax = 0;
		float fd;

		fill_row(&r, t, row, n, 0);
		trng_fill(&r, x, n, -1, 1);
		dd_row(t, row, want, n);
		ref(t)->dequant(row, got, n);
		for (size_t i = 0; i < n; i++) {
			dot += want[i] * x[i];
			mag += fabs(want[i] * x[i]);
			vmax = fmax(vmax, fabs(want[i]));
		}
		for (size_t i = 0; i < n; i++)
			if (!(fabs(got[i] - want[i]) <= 8 * FLT_EPSILON * vmax))
				fail_msg("%s element %zu: %.9g vs %.9g", tname(t),
					 i, got[i], want[i]);
		fd = ref(t)->dot(row, x, n);
		if (!(fabs(fd - dot) <= 2 * n * FLT_EPSILON * mag))
			fail_msg("%s dot %.9g vs %.9g", tname(t), fd, dot);
	}
}

/* ---- every ISA against the reference ------------------------------------ */

static enum moe_isa top_isa; /* highest ISA tested: CPU and $MOE_ISA allow */

struct run {
	uint32_t t;
	size_t n;
	int exact;    /* weights and x make every sum exact: demand equality */
	size_t woff;  /* byte offset of the row from an aligned address */
};

/* |got - want| within what float summation in any order can do. */
static void expect_dot(const struct run *c, const char *what,
		       enum moe_isa isa, float got, double want, double mag)
{
	double tol = c->exact ? 0 : 2.0 * (double)(c->n + 32) * FLT_EPSILON * mag;

	if (!(fabs(got - want) <= tol))
		fail_msg("%s %s n=%zu off=%zu exact=%d on %s: %.9g, want %.9g",
			 tname(c->t), what, c->n, c->woff, c->exact,
			 moe_isa_name(isa), got, want);
}

static void check_dequant(const struct run *c, enum moe_isa isa,
			  const uint8_t *row, const float *want)
{
	float *got = malloc(c->n * sizeof(*got));
	float vmax = 0, tol;

	assert_non_null(got);
	moe_kernels_for(c->t, isa)->dequant(row, got, c->n);
	for (size_t i = 0; i < c->n; i++)
		vmax = fmaxf(vmax, fabsf(want[i]));
	tol = c->exact ? 0 : 8 * FLT_EPSILON * vmax;
	for (size_t i = 0; i < c->n; i++)
		if (!(fabsf(got[i] - want[i]) <= tol))
			fail_msg("%s dequant n=%zu off=%zu on %s: [%zu] %.9g vs %.9g",
				 tname(c->t), c->n, c->woff, moe_isa_name(isa),
				 i, got[i], want[i]);
	free(got);
}

#define MAXT 9
#define LDO 3 /* odd output stride; the slots between must stay untouched */

/* nt = 1..MAXT tokens, ldx = n + 3 (odd), x starting one float in. */
static void check_dot_multi(const struct run *c, enum moe_isa isa,
			    const uint8_t *row, const float *x, size_t ldx,
			    const double *want, const double *mag)
{
	const struct moe_kernels *k = moe_kernels_for(c->t, isa);
	float out[MAXT * LDO];

	for (size_t nt = 1; nt <= MAXT; nt++) {
		for (size_t i = 0; i < MAXT * LDO; i++)
			out[i] = -12345.0f;
		k->dot_multi(row, x, ldx, nt, out, LDO, c->n);
		for (size_t i = 0; i < MAXT * LDO; i++) {
			if (i % LDO == 0 && i / LDO < nt)
				expect_dot(c, "dot_multi", isa, out[i],
					   want[i / LDO], mag[i / LDO]);
			else if (out[i] != -12345.0f)
				fail_msg("%s dot_multi nt=%zu wrote out[%zu]",
					 tname(c->t), nt, i);
		}
	}
}

/* One row of one type: the reference's values and, per token, the exact
 * dot in double; then every ISA against them. */
static void check_case(struct trng *r, const struct run *c)
{
	size_t bytes = moe_row_size(c->t, c->n), ldx = c->n + 3;
	uint8_t *base = malloc(bytes + 64);
	float *xbase = malloc((MAXT * ldx + 1) * sizeof(float));
	float *w = malloc(c->n * sizeof(*w)), *x = xbase + 1;
	double want[MAXT] = { 0 }, mag[MAXT] = { 0 };
	uint8_t *row = base + c->woff;

	assert_true(base && xbase && w && bytes);
	fill_row(r, c->t, row, c->n, c->exact);
	for (size_t i = 0; i < MAXT * ldx; i++)
		x[i] = c->exact ? (float)(int)(trng_next(r) % 3) - 1
				: trng_float(r, -1, 1);
	ref(c->t)->dequant(row, w, c->n);
	for (size_t t = 0; t < MAXT; t++)
		for (size_t i = 0; i < c->n; i++) {
			want[t] += (double)w[i] * x[t * ldx + i];
			mag[t] += fabs((double)w[i] * x[t * ldx + i]);
		}
	for (int isa = MOE_ISA_SCALAR; isa <= (int)top_isa; isa++) {
		check_dequant(c, isa, row, w);
		expect_dot(c, "dot", isa,
			   moe_kernels_for(c->t, isa)->dot(row, x, c->n),
			   want[0], mag[0]);
		check_dot_multi(c, isa, row, x, ldx, want, mag);
	}
	free(w);
	free(xbase);
	free(base);
}

/* Odd and even block and unit counts, counts that cross the fast kernels'
 * 1024-weight chunks, float rows that end inside a 32-weight unit, and odd
 * row addresses. */
static void test_isa_vs_ref(void **state)
{
	static const size_t floats[8] = { 1, 7, 31, 32, 33, 100, 1037, 2100 };
	static const size_t blocks32[8] = { 32, 3 * 32, 7 * 32, 40 * 32 };
	static const size_t blocks256[8] = { 256,     2 * 256, 3 * 256,
					     7 * 256, 8 * 256, 9 * 256 };
	static const size_t offs[] = { 0, 1, 6 };
	struct trng r = { 13 };

	for (size_t ti = 0; ti < NTYPES; ti++) {
		uint32_t t = all_types[ti];
		size_t blk = moe_dtype_info(t)->block;
		const size_t *n = blk == 1 ? floats : blk == 32 ? blocks32 : blocks256;

		for (size_t si = 0; si < 8 && n[si]; si++)
			for (size_t oi = 0; oi < 3; oi++)
				for (int exact = 0; exact < 2; exact++) {
					struct run c = { t, n[si], exact, offs[oi] };

					check_case(&r, &c);
				}
	}
}

/* ---- a token's bits do not depend on its batch --------------------------- */

#define BATCH_MAX 13 /* past two full tiles of AVX2 (6) and AVX-512 (8) */

static void expect_same_bits(const struct run *c, enum moe_isa isa,
			     const char *what, size_t nt, size_t t, float got,
			     float want)
{
	if (memcmp(&got, &want, sizeof(got)))
		fail_msg("%s %s on %s n=%zu off=%zu nt=%zu token %zu: %a, "
			 "dot gives %a", tname(c->t), what, moe_isa_name(isa),
			 c->n, c->woff, nt, t, got, want);
}

/* Every token of every batch size gives dot's float, bit for bit, and so
 * does each token alone through dot_multi. */
static void check_batch_bits(const struct run *c, enum moe_isa isa,
			     const uint8_t *row, const float *x, size_t ldx)
{
	const struct moe_kernels *k = moe_kernels_for(c->t, isa);
	float want[BATCH_MAX], out[BATCH_MAX * LDO], one;

	for (size_t t = 0; t < BATCH_MAX; t++) {
		want[t] = k->dot(row, x + t * ldx, c->n);
		k->dot_multi(row, x + t * ldx, ldx, 1, &one, 1, c->n);
		expect_same_bits(c, isa, "dot_multi alone", 1, t, one, want[t]);
	}
	for (size_t nt = 2; nt <= BATCH_MAX; nt++) {
		k->dot_multi(row, x, ldx, nt, out, LDO, c->n);
		for (size_t t = 0; t < nt; t++)
			expect_same_bits(c, isa, "dot_multi", nt, t,
					 out[t * LDO], want[t]);
	}
}

/* Random (inexact) rows, so that any change in the order of a token's sum
 * shows in its bits: sizes that cross the fast kernels' 1024-weight chunks
 * or end inside a 32-weight unit, an odd row address, x one float past an
 * aligned address with an odd stride. */
static void test_batch_independent(void **state)
{
	static const size_t floats[] = { 1, 15, 33, 100, 1037, 2100, 0 };
	static const size_t blocks32[] = { 32, 7 * 32, 40 * 32, 97 * 32, 0 };
	static const size_t blocks256[] = { 256, 3 * 256, 4 * 256, 9 * 256, 0 };
	struct trng r = { 16 };

	for (size_t ti = 0; ti < NTYPES; ti++) {
		uint32_t t = all_types[ti];
		size_t blk = moe_dtype_info(t)->block;
		const size_t *n = blk == 1 ? floats : blk == 32 ? blocks32 : blocks256;

		for (size_t si = 0; n[si]; si++) {
			struct run c = { t, n[si], 0, 3 };
			size_t bytes = moe_row_size(t, c.n), ldx = c.n + 3;
			uint8_t *base = malloc(bytes + c.woff);
			float *xbase = malloc((BATCH_MAX * ldx + 1) * sizeof(float));

			assert_true(base && xbase);
			fill_row(&r, t, base + c.woff, c.n, 0);
			trng_fill(&r, xbase + 1, BATCH_MAX * ldx, -1, 1);
			for (int isa = MOE_ISA_SCALAR; isa <= (int)top_isa; isa++)
				check_batch_bits(&c, isa, base + c.woff, xbase + 1,
						 ldx);
			free(xbase);
			free(base);
		}
	}
}

/* ---- quantisers ---------------------------------------------------------- */

static double amax_of(const float *x, int n)
{
	double m = 0;

	for (int i = 0; i < n; i++)
		m = fmax(m, fabs(x[i]));
	return m;
}

/* Q4_K: half a step of sub-block j's range / 15, plus what rounding the
 * super-block's d and dmin and each scale and min up can add. */
static double q4k_bound(const float *b, int j)
{
	double range_max = 0, min_max = 0, range = 0;

	for (int s = 0; s < 8; s++) {
		double lo = 0, hi = -INFINITY;

		for (int k = 0; k < 32; k++) {
			lo = fmin(lo, b[32 * s + k]);
			hi = fmax(hi, b[32 * s + k]);
		}
		range_max = fmax(range_max, hi - lo);
		min_max = fmax(min_max, -lo);
		if (s == j)
			range = hi - lo;
	}
	return range / 30 + range_max / 900 + min_max / 700 +
	       1e-7 * (range_max + min_max) + 0x1p-24;
}

/* The worst error the quantiser may leave at element i of the block at b;
 * daemon/quant.c says for each type where it comes from. The absolute
 * terms are the fp16 scale's own step when it is subnormal. */
static double err_bound(uint32_t t, const float *b, int i)
{
	switch (t) {
	case MOE_F16: /* half an ulp; subnormals have a fixed one */
		return ldexp(fabs(b[i]), -11) + ldexp(1, -25);
	case MOE_BF16:
		return ldexp(fabs(b[i]), -8);
	case MOE_Q8_0: /* half a step of amax / 127 */
		return amax_of(b, 32) / 254 * 1.002 + 0x1p-25;
	case MOE_Q4_0: /* a whole step of amax / 8 at the clipped extreme */
		return amax_of(b, 32) / 8 * 1.002 + 0x1p-24;
	case MOE_Q4_K:
		return q4k_bound(b, i / 32);
	case MOE_Q6_K: /* half a step of amax / 31, scales rounded up */
		return amax_of(b + i / 16 * 16, 16) / 62 +
		       amax_of(b, 256) / 1500 + 0x1p-25;
	}
	return 0;
}

static void fill_pattern(struct trng *r, float *x, size_t n, int pat)
{
	for (size_t i = 0; i < n; i++) {
		switch (pat) {
		case 0: x[i] = trng_float(r, -1, 1); break;
		case 1: x[i] = trng_float(r, 0.5f, 3); break;      /* all positive */
		case 2: x[i] = trng_float(r, -300, -200); break;   /* all negative */
		case 3: x[i] = trng_float(r, -1, 1) *               /* outliers */
			       (trng_next(r) % 50 ? 0.01f : 20.0f); break;
		case 4: x[i] = 0; break;
		case 5: x[i] = trng_float(r, -1e-4f, 1e-4f); break;
		}
	}
}

/* y is x quantised to t and back: every element within its bound. */
static void expect_round_trip(uint32_t t, const float *x, const float *y,
			      size_t n, int pat)
{
	size_t blk = moe_dtype_info(t)->block;

	for (size_t i = 0; i < n; i++) {
		double bound = err_bound(t, x + i / blk * blk, (int)(i % blk));

		if (!(fabs((double)y[i] - x[i]) <= bound))
			fail_msg("%s pattern %d [%zu]: %.9g -> %.9g, bound %.3g",
				 tname(t), pat, i, x[i], y[i], bound);
		if (pat == 4 && y[i] != 0)
			fail_msg("%s: zero came back as %g", tname(t), y[i]);
	}
}

static void test_quantize_round_trip(void **state)
{
	struct trng r = { 14 };
	static float x[1024], y[1024];
	static uint8_t q[1024 * 4], q2[1024 * 4];

	for (size_t ti = 0; ti < NTYPES; ti++) {
		uint32_t t = all_types[ti];

		for (int pat = 0; pat < 6; pat++) {
			fill_pattern(&r, x, 1024, pat);
			assert_int_equal(moe_quantize_row(t, x, q, 1024), 0);
			assert_int_equal(moe_quantize_row(t, x, q2, 1024), 0);
			assert_memory_equal(q, q2, moe_row_size(t, 1024));
			ref(t)->dequant(q, y, 1024);
			expect_round_trip(t, x, y, 1024, pat);
		}
	}
}

static void test_quantize_errors(void **state)
{
	float x[256] = { 0 };
	uint8_t out[1024];

	assert_int_equal(moe_quantize_row(MOE_Q4_0, x, out, 33), -EINVAL);
	assert_int_equal(moe_quantize_row(MOE_Q4_K, x, out, 32), -EINVAL);
	assert_int_equal(moe_quantize_row(3 /* Q4_1 */, x, out, 32), -EINVAL);
	assert_int_equal(moe_quantize_row(999, x, out, 32), -EINVAL);
	assert_int_equal(moe_quantize_row(MOE_F16, x, out, 3), 0);
}

/* ---- fp16 and bf16 ------------------------------------------------------- */

/* Magnitude of a positive code, with the infinity code standing for the
 * next power of two so that overflow rounds like any other tie. */
static double f16_mag(unsigned int m)
{
	return m == 0x7c00 ? 65536.0 : dh(m);
}

static double bf16_mag(unsigned int m)
{
	return m == 0x7f80 ? ldexp(1, 128) : dbf(m);
}

static void test_f16_all_codes(void **state)
{
	for (unsigned int h = 0; h < 0x10000; h++) {
		float f = moe_f16_to_f32((uint16_t)h);
		double want = dh(h);
		uint16_t back = moe_f32_to_f16(f);

		if (isnan(want)) {
			assert_true(isnan(f) && !!signbit(f) == !!(h & 0x8000));
			assert_int_equal(back, h | 0x200); /* quieted, payload kept */
			continue;
		}
		if (f != want || !!signbit(f) != !!(h & 0x8000))
			fail_msg("f16 %04x -> %.9g, want %.9g", h, f, want);
		if (back != h)
			fail_msg("f16 %04x -> %.9g -> %04x", h, f, back);
	}
}

static void test_bf16_all_codes(void **state)
{
	for (unsigned int h = 0; h < 0x10000; h++) {
		float f = moe_bf16_to_f32((uint16_t)h);
		double want = dbf(h);
		uint16_t back = moe_f32_to_bf16(f);

		if (isnan(want)) {
			assert_true(isnan(f) && isnan(moe_bf16_to_f32(back)));
			assert_int_equal(back & 0x8000, h & 0x8000);
			continue;
		}
		if (f != want || back != h)
			fail_msg("bf16 %04x -> %.9g -> %04x", h, f, back);
	}
}

/* Is code h the nearest (ties to even) to |v| among its neighbours? */
static int nearest_even(double v, unsigned int m, unsigned int inf,
			double (*mag)(unsigned int))
{
	double e = fabs(mag(m) - v);

	if (m > 0 && fabs(mag(m - 1) - v) < e)
		return 0;
	if (m < inf && fabs(mag(m + 1) - v) < e)
		return 0;
	if (m > 0 && fabs(mag(m - 1) - v) == e && (m & 1))
		return 0;
	if (m < inf && fabs(mag(m + 1) - v) == e && (m & 1))
		return 0;
	return 1;
}

static void test_f16_rounding(void **state)
{
	static const struct {
		float f;
		uint16_t h;
	} cases[] = {
		{ 65504.0f, 0x7bff },	   { 65519.99f, 0x7bff },
		{ 65520.0f, 0x7c00 },	   { -65520.0f, 0xfc00 },
		{ 1e30f, 0x7c00 },	   { 0x1p-24f, 0x0001 },
		{ 0x1p-25f, 0x0000 },	   { 0x1.000002p-25f, 0x0001 },
		{ 0x1.8p-24f, 0x0002 },	   { 0x1p-14f, 0x0400 },
		{ 0x1.ffcp-15f, 0x0400 },   { 0x1.ff8p-15f, 0x03ff },
		{ 0x1.ff4p-15f, 0x03fe },
		{ 1.0f + 0x1p-11f, 0x3c00 }, { 1.0f + 0x3p-11f, 0x3c02 },
		{ -0.0f, 0x8000 },	   { 1e-10f, 0x0000 },
		{ -1e-10f, 0x8000 },	   { 0x1p-30f, 0x0000 },
	};
	struct trng r = { 15 };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (moe_f32_to_f16(cases[i].f) != cases[i].h)
			fail_msg("f16(%a) = %04x, want %04x", cases[i].f,
				 moe_f32_to_f16(cases[i].f), cases[i].h);
	assert_int_equal(moe_f32_to_f16(INFINITY), 0x7c00);
	assert_int_equal(moe_f32_to_f16(-INFINITY), 0xfc00);
	assert_true((moe_f32_to_f16(NAN) & 0x7e00) == 0x7e00);
	assert_int_equal(moe_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
	assert_int_equal(moe_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);
	assert_int_equal(moe_f32_to_bf16(0x1.fffffep127f), 0x7f80);
	assert_int_equal(moe_f32_to_bf16(0x1p-130f), 0x0008); /* subnormal */
	assert_int_equal(moe_f32_to_bf16(0x1p-141f), 0x0000);
	assert_true(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));

	/* Random floats around the fp16 and bf16 ranges: the nearest code. */
	for (int i = 0; i < 300000; i++) {
		uint32_t u = (uint32_t)trng_next(&r);
		uint16_t h, b;
		float f;

		u = (u & 0x807fffff) | (uint32_t)(95 + u % 56) << 23;
		memcpy(&f, &u, 4);
		h = moe_f32_to_f16(f);
		b = moe_f32_to_bf16(f);

		if ((h & 0x8000) != (u >> 16 & 0x8000) ||
		    !nearest_even(fabs(f), h & 0x7fff, 0x7c00, f16_mag))
			fail_msg("f16(%a) = %04x is not the nearest", f, h);
		if ((b & 0x8000) != (u >> 16 & 0x8000) ||
		    !nearest_even(fabs(f), b & 0x7fff, 0x7f80, bf16_mag))
			fail_msg("bf16(%a) = %04x is not the nearest", f, b);
	}
}

/* ---- ISA selection -------------------------------------------------------- */

/* What /proc/cpuinfo (whose flags the kernel clears when the OS does not
 * enable a register state) says the best ISA is; -1 if unreadable. */
static int cpuinfo_isa(void)
{
	static const char *avx2[] = { " avx2", " fma", " f16c" };
	static const char *avx512[] = { " avx512f", " avx512bw", " avx512vl",
					" avx512dq" };
	char line[8192];
	FILE *f = fopen("/proc/cpuinfo", "r");
	int isa = -1;

	while (f && fgets(line, sizeof(line), f)) {
		char *nl = strchr(line, '\n');

		if (strncmp(line, "flags", 5))
			continue;
		if (nl)
			*nl = ' ';
		isa = MOE_ISA_AVX512;
		for (int i = 0; i < 4; i++) {
			char word[32];

			snprintf(word, sizeof(word), "%s ", avx512[i]);
			if (!strstr(line, word))
				isa = MOE_ISA_AVX2;
		}
		for (int i = 0; i < 3; i++) {
			char word[32];

			snprintf(word, sizeof(word), "%s ", avx2[i]);
			if (!strstr(line, word))
				isa = MOE_ISA_SCALAR;
		}
		break;
	}
	if (f)
		fclose(f);
	return isa;
}

static void test_isa_select(void **state)
{
	const char *env = getenv("MOE_ISA");
	char *saved = env ? strdup(env) : NULL;
	enum moe_isa hw;
	int want = cpuinfo_isa();

	unsetenv("MOE_ISA");
	hw = moe_isa_best();
	if (want >= 0)
		assert_int_equal(hw, want);
	assert_true(moe_isa_supported(hw));
	assert_true(moe_isa_supported(MOE_ISA_SCALAR));
	assert_false(hw + 1 < MOE_ISA_COUNT && moe_isa_supported(hw + 1));
	assert_false(moe_isa_supported(MOE_ISA_COUNT));

	setenv("MOE_ISA", "scalar", 1);
	assert_int_equal(moe_isa_best(), MOE_ISA_SCALAR);
	assert_ptr_equal(moe_kernels(MOE_Q4_K),
			 moe_kernels_for(MOE_Q4_K, MOE_ISA_SCALAR));
	setenv("MOE_ISA", "AVX2", 1);
	assert_int_equal(moe_isa_best(), hw < MOE_ISA_AVX2 ? hw : MOE_ISA_AVX2);
	setenv("MOE_ISA", "avx512", 1); /* never raised past the CPU */
	assert_int_equal(moe_isa_best(), hw);
	setenv("MOE_ISA", "bogus", 1);
	assert_int_equal(moe_isa_best(), hw);
	assert_ptr_equal(moe_kernels(MOE_Q6_K), moe_kernels_for(MOE_Q6_K, hw));

	if (saved)
		setenv("MOE_ISA", saved, 1);
	else
		unsetenv("MOE_ISA");
	free(saved);
}

static void test_kernel_tables(void **state)
{
	for (int isa = 0; isa < MOE_ISA_COUNT; isa++) {
		for (uint32_t t = 0; t < 64; t++) {
			const struct moe_dtype_info *ti = moe_dtype_info(t);
			const struct moe_kernels *k = moe_kernels_for(t, isa);
			int want = ti && ti->compute && moe_isa_supported(isa);

			assert_int_equal(k != NULL, want);
			if (k)
				assert_true(k->dequant && k->dot && k->dot_multi);
		}
	}
	assert_null(moe_kernels(3));
	assert_string_equal(moe_isa_name(MOE_ISA_SCALAR), "scalar");
	assert_string_equal(moe_isa_name(MOE_ISA_AVX2), "avx2");
	assert_string_equal(moe_isa_name(MOE_ISA_AVX512), "avx512");
}

static void say_isas(void)
{
	int avx2 = moe_isa_supported(MOE_ISA_AVX2);

	top_isa = moe_isa_best();
	printf("kernels tested on:");
	for (int isa = 0; isa <= (int)top_isa; isa++)
		printf(" %s", moe_isa_name(isa));
	printf("\n");
	if (!moe_isa_supported(MOE_ISA_AVX512))
		printf("AVX-512 not supported by this CPU: ran scalar%s only\n",
		       avx2 ? " and AVX2" : "");
	if (!avx2)
		printf("AVX2 not supported by this CPU: ran scalar only\n");
	if (getenv("MOE_ISA") && top_isa < MOE_ISA_AVX512 &&
	    moe_isa_supported(top_isa + 1))
		printf("MOE_ISA=%s: ran up to %s only\n", getenv("MOE_ISA"),
		       moe_isa_name(top_isa));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_f16_all_codes),
		cmocka_unit_test(test_bf16_all_codes),
		cmocka_unit_test(test_f16_rounding),
		cmocka_unit_test(test_isa_select),
		cmocka_unit_test(test_kernel_tables),
		cmocka_unit_test(test_ref_by_hand),
		cmocka_unit_test(test_ref_built_blocks),
		cmocka_unit_test(test_ref_random_rows),
		cmocka_unit_test(test_isa_vs_ref),
		cmocka_unit_test(test_batch_independent),
		cmocka_unit_test(test_quantize_round_trip),
		cmocka_unit_test(test_quantize_errors),
	};

	say_isas();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
