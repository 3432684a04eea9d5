/* Quantised weight kernels: dequantisation, dot products of weight rows
 * with float32 activations, and reference quantisers.
 *
 * Every type has a plain scalar reference; AVX2 and AVX-512 versions are
 * picked at run time from the CPU's features. Activations stay float32:
 * weights are expanded in registers and multiplied by the exact inputs,
 * so the fast paths differ from the reference only by float rounding. */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

enum moe_isa {
	MOE_ISA_SCALAR = 0,
	MOE_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
	MOE_ISA_AVX512 = 2, /* AVX-512 F, BW, VL (+ the AVX2 set) */
	MOE_ISA_COUNT
};

/* One type's kernels on one ISA. n is a multiple of the type's block. */
struct moe_kernels {
	/* dst[0..n) = the values of one row of n elements. */
	void (*dequant)(const void *row, float *dst, size_t n);
	/* sum over i of row[i] * x[i]. */
	float (*dot)(const void *row, const float *x, size_t n);
	/* One pass over a weight row for nt activation vectors:
	 * out[t * ldo] = dot(row, x + t * ldx) for t in [0, nt), bit for
	 * bit: a token's result never depends on nt or its place in the
	 * batch. */
	void (*dot_multi)(const void *row, const float *x, size_t ldx,
			  size_t nt, float *out, size_t ldo, size_t n);
};

/* The ISA this CPU supports best, lowered by $MOE_ISA=scalar|avx2|avx512
 * when set (never raised past what the CPU has; other values are ignored).
 * $MOE_ISA is read at every call: pick kernels once, at load time. */
enum moe_isa moe_isa_best(void);

/* Whether this CPU can run code for isa. */
int moe_isa_supported(enum moe_isa isa);

const char *moe_isa_name(enum moe_isa isa);

/* Kernels for type t on isa, or NULL if moed has none for that pair or
 * this CPU cannot run isa (so a non-NULL table is always safe to call). */
const struct moe_kernels *moe_kernels_for(uint32_t t, enum moe_isa isa);

/* Kernels for type t on moe_isa_best(); NULL if t is not computable. */
const struct moe_kernels *moe_kernels(uint32_t t);

/* Quantise n floats (a multiple of the block) into one row of type t.
 * Deterministic plain C; used by moe-gen and the tests. Returns 0, or
 * -EINVAL for a type moed cannot compute. */
int moe_quantize_row(uint32_t t, const float *src, void *dst, size_t n);

/* IEEE half and bfloat16 conversions (round to nearest even). */
float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);
float moe_bf16_to_f32(uint16_t h);
uint16_t moe_f32_to_bf16(float f);

#endif
