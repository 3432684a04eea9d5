/* AVX-512 (F, BW, VL, DQ) kernels, built with those flags plus the AVX2
 * set and only called when the CPU and the OS support them. This is
 * quant_avx2.c with 16-wide vectors and twice the registers: the same
 * walkers over the same units of 32 weights, rounding in the same order,
 * and the same order of a token's sum in dot and dot_multi (struct
 * chains): the kernels are quant_simd.h, shared with AVX2. */
#include <immintrin.h>
#include <string.h>

#include "quant_impl.h"

#define INLINE static inline __attribute__((always_inline))
/* Loops over the vectors of a unit or the tokens of a tile: unrolled so
 * that their arrays of vectors live in registers. */
#define UNROLL _Pragma("GCC unroll 16")

typedef __m512 vec;
typedef __m512i ivec;

#define VW 16             /* floats per vector */
#define VPU (32 / VW)     /* vectors per unit of 32 weights */
#define TOK 7             /* tokens per tile: 4 chains each + a weight
			   * vector fit the 32 registers */
#define CHUNK 1024        /* weights decoded at a time by dot_multi */
#define GROUP 32          /* tokens whose chains dot_multi keeps at once,
			   * 256 bytes each on the stack; moed's batches
			   * per expert stay below it unless sgemm is off */

static_assert(CHUNK % 64 == 0, "a chunk holds an even number of units");

/* ---- vector helpers -------------------------------------------------- */

INLINE vec vzero(void)
{
	return _mm512_setzero_ps();
}

INLINE vec vset(float f)
{
	return _mm512_set1_ps(f);
}

INLINE vec vload(const void *p)
{
	return _mm512_loadu_ps(p);
}

INLINE vec vfma(vec a, vec b, vec c)
{
	return _mm512_fmadd_ps(a, b, c);
}

INLINE vec vadd(vec a, vec b)
{
	return _mm512_add_ps(a, b);
}

/* Sixteen fp16 or bf16 values at p (any alignment) as floats. */
INLINE vec vload_f16(const uint8_t *p)
{
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

INLINE vec vload_bf16(const uint8_t *p)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));

	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

/* Sixteen unsigned (or signed) bytes at p widened to int32 lanes. */
INLINE __m512i widen_u8(const uint8_t *p)
{
	return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

INLINE __m512i widen_i8(const int8_t *p)
{
	return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* The low and high nibbles of widened bytes, and int32 lanes as floats. */
INLINE __m512i lo4(__m512i v)
{
	return _mm512_and_si512(v, _mm512_set1_epi32(0xf));
}

INLINE __m512i hi4(__m512i v)
{
	return _mm512_srli_epi32(v, 4);
}

INLINE vec cvt(__m512i v)
{
	return _mm512_cvtepi32_ps(v);
}

INLINE float hsum(vec v)
{
	return _mm512_reduce_add_ps(v);
}

INLINE float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/* The operations quant_simd.h needs beyond those above. */
#define vstore _mm512_storeu_ps
#define vfmsub _mm512_fmsub_ps
#define vmul _mm512_mul_ps
#define iset1 _mm512_set1_epi32
#define iand _mm512_and_si512
#define ior _mm512_or_si512
#define islli _mm512_slli_epi32
#define isrli _mm512_srli_epi32

#define KTAB moe_kern_avx512
#include "quant_simd.h"
