/* AVX2 + FMA + F16C kernels, built with those flags and only called when
 * the CPU has them. dot expands each unit of 32 weights into registers and
 * multiplies it straight into x; dot_multi decodes a chunk of the row once
 * into L1 and runs all tokens over it, several at a time in registers.
 * Both add a token's products in one order (struct chains), so a token
 * gets the same bits whatever batch it comes in.
 * The kernels themselves are in quant_simd.h, shared with AVX-512. */
#include <immintrin.h>
#include <string.h>

#include "quant_impl.h"

#define INLINE static inline __attribute__((always_inline))
/* Loops over the vectors of a unit or the tokens of a tile: unrolled so
 * that their arrays of vectors live in registers. */
#define UNROLL _Pragma("GCC unroll 16")

typedef __m256 vec;
typedef __m256i ivec;

#define VW 8              /* floats per vector */
#define VPU (32 / VW)     /* vectors per unit of 32 weights */
#define TOK 3             /* tokens per tile: 4 chains each + a weight
			   * vector fit the 16 registers */
#define CHUNK 1024        /* weights decoded at a time by dot_multi */
#define GROUP 32          /* tokens whose chains dot_multi keeps at once,
			   * 128 bytes each on the stack; moed's batches
			   * per expert stay below it unless sgemm is off */

static_assert(CHUNK % 64 == 0, "a chunk holds an even number of units");

/* ---- vector helpers -------------------------------------------------- */

INLINE vec vzero(void)
{
	return _mm256_setzero_ps();
}

INLINE vec vset(float f)
{
	return _mm256_set1_ps(f);
}

INLINE vec vload(const void *p)
{
	return _mm256_loadu_ps(p);
}

INLINE vec vfma(vec a, vec b, vec c)
{
	return _mm256_fmadd_ps(a, b, c);
}

INLINE vec vadd(vec a, vec b)
{
	return _mm256_add_ps(a, b);
}

/* Eight fp16 or bf16 values at p (any alignment) as floats. */
INLINE vec vload_f16(const uint8_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

INLINE vec vload_bf16(const uint8_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));

	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* Eight unsigned (or signed) bytes at p widened to int32 lanes. */
INLINE __m256i widen_u8(const uint8_t *p)
{
	return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

INLINE __m256i widen_i8(const int8_t *p)
{
	return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

/* The low and high nibbles of widened bytes, and int32 lanes as floats. */
INLINE __m256i lo4(__m256i v)
{
	return _mm256_and_si256(v, _mm256_set1_epi32(0xf));
}

INLINE __m256i hi4(__m256i v)
{
	return _mm256_srli_epi32(v, 4);
}

INLINE vec cvt(__m256i v)
{
	return _mm256_cvtepi32_ps(v);
}

INLINE float hsum(vec v)
{
	__m128 h = _mm_add_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	return _mm_cvtss_f32(h);
}

INLINE float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/* The operations quant_simd.h needs beyond those above. */
#define vstore _mm256_storeu_ps
#define vfmsub _mm256_fmsub_ps
#define vmul _mm256_mul_ps
#define iset1 _mm256_set1_epi32
#define iand _mm256_and_si256
#define ior _mm256_or_si256
#define islli _mm256_slli_epi32
#define isrli _mm256_srli_epi32

#define KTAB moe_kern_avx2
#include "quant_simd.h"
