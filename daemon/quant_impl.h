/* Private to daemon/quant*.c: ggml's block layouts, the kernel table each
 * ISA file exports, and the few helpers the reference, the fast kernels and
 * the quantisers must agree on. Nothing outside daemon/quant*.c includes it. */
#ifndef MOE_QUANT_IMPL_H
#define MOE_QUANT_IMPL_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"

/* The blocks are packed so that they may sit at any address: GGUF tensor
 * data is only 32-byte aligned, a row starts wherever the previous one
 * ended, and the tests use odd addresses on purpose. */

/* 32 weights: ((nibble) - 8) * d; low nibbles are elements 0..15, high
 * nibbles 16..31. */
struct blk_q4_0 {
	uint16_t d; /* fp16 */
	uint8_t qs[16];
} __attribute__((packed));

/* 32 weights: qs[i] * d. */
struct blk_q8_0 {
	uint16_t d; /* fp16 */
	int8_t qs[32];
} __attribute__((packed));

/* 256 weights in 8 sub-blocks of 32: d * sc[j] * q - dmin * m[j], with
 * 6-bit sc and m packed into scales[] (see q4k_scale_min). qs holds four
 * groups of 32 bytes; group g's low nibbles are sub-block 2g, its high
 * nibbles sub-block 2g + 1. */
struct blk_q4_k {
	uint16_t d;    /* fp16 */
	uint16_t dmin; /* fp16 */
	uint8_t scales[12];
	uint8_t qs[128];
} __attribute__((packed));

/* 256 weights: d * scales[i / 16] * (q - 32) with a 6-bit q. Each half of
 * 128 uses ql[64] and qh[32]: element 32k + l (k < 4, l < 32) of the half
 * has its low 4 bits in ql[32 * (k & 1) + l] (low nibble for k < 2, high
 * for k >= 2) and its top 2 bits at bit 2k of qh[l]. */
struct blk_q6_k {
	uint8_t ql[128];
	uint8_t qh[64];
	int8_t scales[16];
	uint16_t d; /* fp16 */
} __attribute__((packed));

static_assert(sizeof(struct blk_q4_0) == 18, "Q4_0 block is 18 bytes");
static_assert(sizeof(struct blk_q8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(struct blk_q4_k) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(struct blk_q6_k) == 210, "Q6_K block is 210 bytes");
static_assert(MOE_QK_K == 256, "K-quant blocks hold 256 weights");

/* Kernel tables indexed by type; a type moed cannot compute has NULL
 * entries. Plain data, so quant.c may look at the AVX tables on any CPU. */
#define MOE_KTAB_SIZE (MOE_BF16 + 1)

extern const struct moe_kernels moe_kern_ref[MOE_KTAB_SIZE];
extern const struct moe_kernels moe_kern_avx2[MOE_KTAB_SIZE];
extern const struct moe_kernels moe_kern_avx512[MOE_KTAB_SIZE];

/* Sub-block j's 6-bit scale and min: j < 4 keep theirs in the low 6 bits
 * of bytes j and j + 4; j >= 4 keep their low 4 bits in byte j + 4 (scale
 * low nibble, min high nibble) and their top 2 bits in the top bits of
 * bytes j - 4 (scale) and j (min). */
static inline void q4k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*m = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
		*m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/* A Q4_K block's per-sub-block multipliers: weight = ds[j] * q - dm[j]. */
static inline void q4k_unpack(const struct blk_q4_k *b, float d, float dmin,
			      float ds[8], float dm[8])
{
	for (int j = 0; j < 8; j++) {
		int sc, m;

		q4k_scale_min(b->scales, j, &sc, &m);
		ds[j] = d * (float)sc;
		dm[j] = dmin * (float)m;
	}
}

/* q4k_scale_min for all eight sub-blocks at once, four bytes per word:
 * scales 0-3 and mins 0-3 are the low 6 bits of words 0 and 1; scales and
 * mins 4-7 take their low 4 bits from word 2's low and high nibbles and
 * their top 2 bits from the top bits of words 0 and 1. Little-endian, as
 * the x86 kernels that use it are. */
static inline void q4k_scale_min8(const uint8_t *s, uint8_t sc[8], uint8_t m[8])
{
	uint32_t w0, w1, w2, v;

	memcpy(&w0, s, 4);
	memcpy(&w1, s + 4, 4);
	memcpy(&w2, s + 8, 4);
	v = w0 & 0x3f3f3f3f;
	memcpy(sc, &v, 4);
	v = (w2 & 0x0f0f0f0f) | ((w0 >> 6) & 0x03030303) << 4;
	memcpy(sc + 4, &v, 4);
	v = w1 & 0x3f3f3f3f;
	memcpy(m, &v, 4);
	v = ((w2 >> 4) & 0x0f0f0f0f) | ((w1 >> 6) & 0x03030303) << 4;
	memcpy(m + 4, &v, 4);
}

#ifdef __AVX2__
#include <immintrin.h>

/* Per-block multipliers for the AVX2 and AVX-512 kernels, eight at a
 * time; each product is the reference's d * (float)sc, rounded the same. */

/* Q4_K: weight = ds[j] * q - dm[j] for sub-block j. */
static inline void q4k_unpack_avx2(const struct blk_q4_k *b, float ds[8],
				   float dm[8])
{
	uint8_t sc[8], m[8];
	__m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
	__m256 dmin = _mm256_set1_ps(_cvtsh_ss(b->dmin));
	__m256i vs, vm;

	q4k_scale_min8(b->scales, sc, m);
	vs = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sc));
	vm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m));
	_mm256_storeu_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(vs)));
	_mm256_storeu_ps(dm, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(vm)));
}

/* Q6_K: weight = ds[i / 16] * (q - 32). */
static inline void q6k_unpack_avx2(const struct blk_q6_k *b, float ds[16])
{
	__m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));

	for (int h = 0; h < 2; h++) {
		const int8_t *sc = b->scales + 8 * h;
		__m128i s = _mm_loadl_epi64((const __m128i *)sc);
		__m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s));

		_mm256_storeu_ps(ds + 8 * h, _mm256_mul_ps(d, v));
	}
}
#endif

#endif
