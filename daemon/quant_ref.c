/* The scalar reference kernels: every type decoded one block at a time,
 * element by element, straight from its layout. They define what the fast
 * kernels must compute, and run on CPUs without AVX2 (or $MOE_ISA=scalar). */
#include <string.h>

#include "quant_impl.h"

/* How to read one type: a block of `block` weights in `bytes` bytes. */
struct ref_type {
	size_t block;
	size_t bytes;
	void (*decode)(const uint8_t *p, float *out);
};

/* Rows may be at any address, so scalars are read with memcpy. */
static uint16_t ld16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void decode_f32(const uint8_t *p, float *out)
{
	memcpy(out, p, sizeof(*out));
}

static void decode_f16(const uint8_t *p, float *out)
{
	*out = moe_f16_to_f32(ld16(p));
}

static void decode_bf16(const uint8_t *p, float *out)
{
	*out = moe_bf16_to_f32(ld16(p));
}

static void decode_q4_0(const uint8_t *p, float *out)
{
	const struct blk_q4_0 *b = (const void *)p;
	float d = moe_f16_to_f32(b->d);

	for (int i = 0; i < 16; i++) {
		out[i] = (float)((b->qs[i] & 0xf) - 8) * d;
		out[i + 16] = (float)((b->qs[i] >> 4) - 8) * d;
	}
}

static void decode_q8_0(const uint8_t *p, float *out)
{
	const struct blk_q8_0 *b = (const void *)p;
	float d = moe_f16_to_f32(b->d);

	for (int i = 0; i < 32; i++)
		out[i] = (float)b->qs[i] * d;
}

static void decode_q4_k(const uint8_t *p, float *out)
{
	const struct blk_q4_k *b = (const void *)p;
	float ds[8], dm[8];

	q4k_unpack(b, moe_f16_to_f32(b->d), moe_f16_to_f32(b->dmin), ds, dm);
	for (int i = 0; i < 256; i++) {
		int j = i / 32;
		uint8_t byte = b->qs[32 * (j / 2) + i % 32];
		int q = (j & 1) ? byte >> 4 : byte & 0xf;

		out[i] = ds[j] * (float)q - dm[j];
	}
}

/* The 6-bit value of element i (0..255) of a Q6_K block. */
static int q6k_value(const struct blk_q6_k *b, int i)
{
	int half = i / 128, k = i % 128 / 32, l = i % 32;
	uint8_t lo = b->ql[64 * half + 32 * (k & 1) + l];
	uint8_t hi = b->qh[32 * half + l];

	lo = (k < 2) ? lo & 0xf : lo >> 4;
	return lo | ((hi >> (2 * k)) & 3) << 4;
}

static void decode_q6_k(const uint8_t *p, float *out)
{
	const struct blk_q6_k *b = (const void *)p;
	float d = moe_f16_to_f32(b->d);

	for (int i = 0; i < 256; i++) {
		int q = q6k_value(b, i) - 32;

		out[i] = d * (float)b->scales[i / 16] * (float)q;
	}
}

static void ref_dequant(const struct ref_type *rt, const void *row,
			float *dst, size_t n)
{
	const uint8_t *p = row;

	for (size_t i = 0; i < n; i += rt->block, p += rt->bytes)
		rt->decode(p, dst + i);
}

static float ref_dot(const struct ref_type *rt, const void *row,
		     const float *x, size_t n)
{
	const uint8_t *p = row;
	float w[MOE_QK_K], sum = 0;

	for (size_t i = 0; i < n; i += rt->block, p += rt->bytes) {
		rt->decode(p, w);
		for (size_t k = 0; k < rt->block; k++)
			sum += w[k] * x[i + k];
	}
	return sum;
}

static void ref_dot_multi(const struct ref_type *rt, const void *row,
			  const float *x, size_t ldx, size_t nt, float *out,
			  size_t ldo, size_t n)
{
	for (size_t t = 0; t < nt; t++)
		out[t * ldo] = ref_dot(rt, row, x + t * ldx, n);
}

#define REF_TYPE(name, blk, sz)						\
	static const struct ref_type rt_##name = { blk, sz, decode_##name }; \
	static void dequant_##name(const void *row, float *dst, size_t n) \
	{								\
		ref_dequant(&rt_##name, row, dst, n);			\
	}								\
	static float dot_##name(const void *row, const float *x, size_t n) \
	{								\
		return ref_dot(&rt_##name, row, x, n);			\
	}								\
	static void dot_multi_##name(const void *row, const float *x,	\
				     size_t ldx, size_t nt, float *out,	\
				     size_t ldo, size_t n)		\
	{								\
		ref_dot_multi(&rt_##name, row, x, ldx, nt, out, ldo, n); \
	}

REF_TYPE(f32, 1, 4)
REF_TYPE(f16, 1, 2)
REF_TYPE(bf16, 1, 2)
REF_TYPE(q4_0, 32, sizeof(struct blk_q4_0))
REF_TYPE(q8_0, 32, sizeof(struct blk_q8_0))
REF_TYPE(q4_k, 256, sizeof(struct blk_q4_k))
REF_TYPE(q6_k, 256, sizeof(struct blk_q6_k))

#define ENTRY(type, name) \
	[type] = { dequant_##name, dot_##name, dot_multi_##name }

const struct moe_kernels moe_kern_ref[MOE_KTAB_SIZE] = {
	ENTRY(MOE_F32, f32),
	ENTRY(MOE_F16, f16),
	ENTRY(MOE_BF16, bf16),
	ENTRY(MOE_Q4_0, q4_0),
	ENTRY(MOE_Q8_0, q8_0),
	ENTRY(MOE_Q4_K, q4_k),
	ENTRY(MOE_Q6_K, q6_k),
};
