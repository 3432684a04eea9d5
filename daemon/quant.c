/* Kernel selection and the plain-C parts of the quant module: CPU feature
 * detection and $MOE_ISA, the per-ISA kernel tables, fp16/bf16 conversion
 * and the reference quantisers that moe-gen and the tests use. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "quant_impl.h"

/* ---- CPU features ---------------------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)

#define XCR0_AVX 0x06    /* XMM and YMM state */
#define XCR0_AVX512 0xe0 /* opmask, ZMM_Hi256 and Hi16_ZMM state */

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;

	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (uint64_t)hi << 32 | lo;
}

/* The CPU must have the instructions and the OS must save the registers
 * they use across context switches (XCR0), or the first one faults. */
static enum moe_isa detect_isa(void)
{
	const unsigned int need1 = bit_OSXSAVE | bit_AVX | bit_FMA | bit_F16C;
	const unsigned int need512 = bit_AVX512F | bit_AVX512DQ |
				     bit_AVX512BW | bit_AVX512VL;
	unsigned int a, b, c, d;
	uint64_t xcr0;

	if (!__get_cpuid(1, &a, &b, &c, &d) || (c & need1) != need1)
		return MOE_ISA_SCALAR;
	xcr0 = xgetbv0();
	if ((xcr0 & XCR0_AVX) != XCR0_AVX)
		return MOE_ISA_SCALAR;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX2))
		return MOE_ISA_SCALAR;
	if ((b & need512) != need512 || (xcr0 & XCR0_AVX512) != XCR0_AVX512)
		return MOE_ISA_AVX2;
	return MOE_ISA_AVX512;
}

#else

static enum moe_isa detect_isa(void)
{
	return MOE_ISA_SCALAR;
}

#endif

/* -1 until the first call. Every thread computes the same value, so a
 * race only repeats the work and relaxed order is enough. */
static _Atomic int hw_isa = -1;

static enum moe_isa cpu_isa(void)
{
	int isa = atomic_load_explicit(&hw_isa, memory_order_relaxed);

	if (isa < 0) {
		isa = detect_isa();
		atomic_store_explicit(&hw_isa, isa, memory_order_relaxed);
	}
	return (enum moe_isa)isa;
}

int moe_isa_supported(enum moe_isa isa)
{
	return isa >= MOE_ISA_SCALAR && isa <= cpu_isa();
}

static const char *const isa_names[MOE_ISA_COUNT] = {
	[MOE_ISA_SCALAR] = "scalar",
	[MOE_ISA_AVX2] = "avx2",
	[MOE_ISA_AVX512] = "avx512",
};

const char *moe_isa_name(enum moe_isa isa)
{
	if (isa < MOE_ISA_SCALAR || isa >= MOE_ISA_COUNT)
		return "unknown";
	return isa_names[isa];
}

/* $MOE_ISA is read on every call, not cached, so that a test can change
 * it; callers pick their kernels once, when a model is loaded. */
enum moe_isa moe_isa_best(void)
{
	enum moe_isa best = cpu_isa();
	const char *env = getenv("MOE_ISA");

	if (!env)
		return best;
	for (int i = 0; i < MOE_ISA_COUNT; i++)
		if (strcasecmp(env, isa_names[i]) == 0 && i < (int)best)
			return (enum moe_isa)i;
	return best;
}

/* ---- kernel tables --------------------------------------------------- */

static const struct moe_kernels *const tables[MOE_ISA_COUNT] = {
	[MOE_ISA_SCALAR] = moe_kern_ref,
	[MOE_ISA_AVX2] = moe_kern_avx2,
	[MOE_ISA_AVX512] = moe_kern_avx512,
};

const struct moe_kernels *moe_kernels_for(uint32_t t, enum moe_isa isa)
{
	const struct moe_kernels *k;

	if (t >= MOE_KTAB_SIZE || !moe_isa_supported(isa))
		return NULL;
	k = &tables[isa][t];
	return k->dot ? k : NULL;
}

const struct moe_kernels *moe_kernels(uint32_t t)
{
	return moe_kernels_for(t, moe_isa_best());
}

/* ---- fp16 and bf16 --------------------------------------------------- */

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float moe_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;

	if (exp == 0x1f) /* inf, or NaN keeping its payload */
		return bits_f32(sign | 0x7f800000 | man << 13);
	if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float */
		float v = (float)man * 0x1p-24f;

		return sign ? -v : v;
	}
	return bits_f32(sign | (exp + 112) << 23 | man << 13);
}

/* Drop the low `shift` bits of v, rounding to nearest, ties to even. */
static uint32_t shift_rne(uint32_t v, unsigned int shift)
{
	uint32_t rest = v & ((1u << shift) - 1), half = 1u << (shift - 1);
	uint32_t r = v >> shift;

	if (rest > half || (rest == half && (r & 1)))
		r++;
	return r;
}

uint16_t moe_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (u >> 16) & 0x8000;
	uint32_t a = u & 0x7fffffff, exp = a >> 23;

	if (a > 0x7f800000) /* NaN: keep the top payload bits, set quiet */
		return sign | 0x7e00 | ((a >> 13) & 0x3ff);
	if (a >= 0x477ff000) /* 65520 and up round to infinity */
		return sign | 0x7c00;
	if (a >= 0x38800000) /* normal: rebias; a carry may bump the exponent */
		return sign | shift_rne(a - (112u << 23), 13);
	if (a < 0x33000000) /* at most 2^-25, which ties to zero */
		return sign;
	/* Subnormal: the whole significand times 2^(exp - 150), in 2^-24 units */
	return sign | shift_rne((a & 0x7fffff) | 0x800000, 126 - exp);
}

float moe_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t moe_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffff) > 0x7f800000) /* NaN: truncating could make inf */
		return (u >> 16) | 0x40;
	return shift_rne(u, 16); /* overflow carries into inf, as it should */
}

/* ---- reference quantisers -------------------------------------------- */

/* Round v to an int in [lo, hi]; NaN gives lo. */
static int round_clamp(float v, int lo, int hi)
{
	if (!(v >= (float)lo))
		return lo;
	if (v >= (float)hi)
		return hi;
	return (int)roundf(v);
}

/* Smallest int >= v in [0, hi]; what a scale needs to cover its range. */
static int ceil_clamp(float v, int hi)
{
	if (!(v > 0))
		return 0;
	if (v >= (float)hi)
		return hi;
	return (int)ceilf(v);
}

/* A block scale as fp16, kept finite and rounded away from zero: values
 * are quantised against the stored scale, which then always covers them,
 * even where fp16 is subnormal and its steps are coarse. */
static uint16_t f16_scale(float v)
{
	uint16_t h = moe_f32_to_f16(fmaxf(fminf(v, 65504.0f), -65504.0f));

	if (fabsf(moe_f16_to_f32(h)) < fabsf(v) && (h & 0x7fff) < 0x7bff)
		h++; /* sign and magnitude: the next code out, same sign */
	return h;
}

static float absmax(const float *x, int n)
{
	float m = 0;

	for (int i = 0; i < n; i++)
		m = fmaxf(m, fabsf(x[i]));
	return m;
}

static void quant_q8_0(const float *x, void *dst)
{
	struct blk_q8_0 *b = dst;
	float d;

	/* Quantise against the scale as stored, not as computed. */
	b->d = f16_scale(absmax(x, 32) / 127);
	d = moe_f16_to_f32(b->d);
	for (int i = 0; i < 32; i++)
		b->qs[i] = d ? round_clamp(x[i] / d, -127, 127) : 0;
}

/* The value of largest magnitude maps to -8 exactly, using all 16 levels
 * (as ggml does); the opposite extreme may clip by one step. */
static void quant_q4_0(const float *x, void *dst)
{
	struct blk_q4_0 *b = dst;
	float max = 0, d;

	for (int i = 0; i < 32; i++)
		if (fabsf(x[i]) > fabsf(max))
			max = x[i];
	b->d = f16_scale(max / -8);
	d = moe_f16_to_f32(b->d);
	for (int i = 0; i < 16; i++) {
		int lo = d ? round_clamp(x[i] / d, -8, 7) + 8 : 8;
		int hi = d ? round_clamp(x[i + 16] / d, -8, 7) + 8 : 8;

		b->qs[i] = (uint8_t)(lo | hi << 4);
	}
}

static void q4k_put_scale_min(uint8_t *s, int j, int sc, int m)
{
	if (j < 4) {
		s[j] = (s[j] & 0xc0) | sc;
		s[j + 4] = (s[j + 4] & 0xc0) | m;
	} else {
		s[j + 4] = (uint8_t)((sc & 0xf) | (m & 0xf) << 4);
		s[j - 4] = (s[j - 4] & 0x3f) | (sc >> 4) << 6;
		s[j] = (s[j] & 0x3f) | (m >> 4) << 6;
	}
}

/* Sub-block mins as multiples of dmin, rounded up so that each sub-block's
 * lowest value (or 0, since a min cannot be negative) is reachable. */
static void q4k_mins(const float *x, struct blk_q4_k *b, int m[8])
{
	float mins[8], maxmin = 0, dmin;

	for (int j = 0; j < 8; j++) {
		float lo = 0;

		for (int i = 0; i < 32; i++)
			lo = fminf(lo, x[32 * j + i]);
		mins[j] = -lo;
		maxmin = fmaxf(maxmin, mins[j]);
	}
	b->dmin = f16_scale(maxmin / 63);
	dmin = moe_f16_to_f32(b->dmin);
	for (int j = 0; j < 8; j++)
		m[j] = dmin ? ceil_clamp(mins[j] / dmin, 63) : 0;
}

/* Sub-block scales as multiples of d, rounded up so that 15 steps from
 * -dmin * m reach the sub-block's highest value. */
static void q4k_scales(const float *x, struct blk_q4_k *b, const int m[8],
		       int sc[8])
{
	float dmin = moe_f16_to_f32(b->dmin), spans[8], maxspan = 0, d;

	for (int j = 0; j < 8; j++) {
		float hi = x[32 * j];

		for (int i = 1; i < 32; i++)
			hi = fmaxf(hi, x[32 * j + i]);
		spans[j] = fmaxf(hi + dmin * (float)m[j], 0);
		maxspan = fmaxf(maxspan, spans[j]);
	}
	b->d = f16_scale(maxspan / (15 * 63));
	d = moe_f16_to_f32(b->d);
	for (int j = 0; j < 8; j++)
		sc[j] = d ? ceil_clamp(spans[j] / (15 * d), 63) : 0;
}

/* Both roundings go up, so nothing clips: the only loss is rounding each
 * weight to the nearest of its sub-block's 16 levels. */
static void quant_q4_k(const float *x, void *dst)
{
	struct blk_q4_k *b = dst;
	float d, dmin;
	int sc[8], m[8];

	q4k_mins(x, b, m);
	q4k_scales(x, b, m, sc);
	d = moe_f16_to_f32(b->d);
	dmin = moe_f16_to_f32(b->dmin);
	memset(b->scales, 0, sizeof(b->scales));
	for (int j = 0; j < 8; j++)
		q4k_put_scale_min(b->scales, j, sc[j], m[j]);
	for (int i = 0; i < 256; i++) {
		int j = i / 32, g = 32 * (j / 2) + i % 32;
		float ds = d * (float)sc[j], dm = dmin * (float)m[j];
		int q = ds ? round_clamp((x[i] + dm) / ds, 0, 15) : 0;

		if (j % 2 == 0) /* low nibble, written first */
			b->qs[g] = (uint8_t)q;
		else
			b->qs[g] |= (uint8_t)(q << 4);
	}
}

static void q6k_put(struct blk_q6_k *b, int i, int q)
{
	int half = i / 128, k = i % 128 / 32, l = i % 32;
	uint8_t *lo = &b->ql[64 * half + 32 * (k & 1) + l];
	uint8_t *hi = &b->qh[32 * half + l];

	if (k < 2)
		*lo = (*lo & 0xf0) | (q & 0xf);
	else
		*lo = (*lo & 0x0f) | (q & 0xf) << 4;
	*hi = (*hi & ~(3 << (2 * k))) | (q >> 4) << (2 * k);
}

/* Symmetric: each group of 16 uses q - 32 in [-31, 31] with a scale
 * rounded up, so nothing clips and the error is at most half a step. */
static void quant_q6_k(const float *x, void *dst)
{
	struct blk_q6_k *b = dst;
	float s[16], smax = 0, d;

	for (int j = 0; j < 16; j++) {
		s[j] = absmax(x + 16 * j, 16) / 31;
		smax = fmaxf(smax, s[j]);
	}
	b->d = f16_scale(smax / 127);
	d = moe_f16_to_f32(b->d);
	memset(b->ql, 0, sizeof(b->ql));
	memset(b->qh, 0, sizeof(b->qh));
	for (int j = 0; j < 16; j++)
		b->scales[j] = (int8_t)(d ? ceil_clamp(s[j] / d, 127) : 0);
	for (int i = 0; i < 256; i++) {
		float e = d * (float)b->scales[i / 16];
		int q = e ? round_clamp(x[i] / e, -32, 31) : 0;

		q6k_put(b, i, q + 32);
	}
}

static void quant_f32(const float *x, void *b)
{
	memcpy(b, x, sizeof(*x));
}

static void quant_f16(const float *x, void *b)
{
	uint16_t h = moe_f32_to_f16(*x);

	memcpy(b, &h, sizeof(h));
}

static void quant_bf16(const float *x, void *b)
{
	uint16_t h = moe_f32_to_bf16(*x);

	memcpy(b, &h, sizeof(h));
}

typedef void (*quant_fn)(const float *x, void *b);

/* Quantises one block of type t; NULL for a type moed cannot compute. */
static quant_fn block_quantiser(uint32_t t)
{
	switch (t) {
	case MOE_F32:
		return quant_f32;
	case MOE_F16:
		return quant_f16;
	case MOE_BF16:
		return quant_bf16;
	case MOE_Q4_0:
		return quant_q4_0;
	case MOE_Q8_0:
		return quant_q8_0;
	case MOE_Q4_K:
		return quant_q4_k;
	case MOE_Q6_K:
		return quant_q6_k;
	}
	return NULL;
}

int moe_quantize_row(uint32_t t, const float *src, void *dst, size_t n)
{
	const struct moe_dtype_info *ti = moe_dtype_info(t);
	quant_fn q = block_quantiser(t);
	uint8_t *p = dst;

	if (!ti || !q || n % ti->block)
		return -EINVAL;
	for (size_t i = 0; i < n; i += ti->block, p += ti->block_size)
		q(src + i, p);
	return 0;
}
