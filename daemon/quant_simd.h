/* The body of the SIMD kernels, written once for any vector width and
 * included by quant_avx2.c and quant_avx512.c after they define the
 * vector types and operations (vec, ivec, VW, TOK, vload, vfma, vfmsub,
 * widen_u8, lo4, cvt, hsum, ...) and KTAB, the table's name. Private: no
 * other file includes it. */
#ifndef KTAB
#error "quant_simd.h is included only by a quant_<isa>.c that defines KTAB"
#endif

/* ---- the order of a sum ------------------------------------------------ */

/* A token's four FMA chains, enough to hide the FMA latency in dot. Unit
 * u of 32 weights (counted from the row's start) feeds set u % 2, and its
 * vector k chain k % 2 of that set; each set takes its units in row order.
 * dot runs all four in registers as it walks the row; dot_multi keeps
 * them here between chunks. Either way each chain sees the same products
 * in the same order, and fold ends both the same way, so a token's bits do
 * not depend on its batch. (Both read the row front to back: walking it
 * in two places at once, to let tiles hold fewer chains, defeats the
 * hardware prefetcher and costs a third of dot's speed on rows in DRAM.) */
struct chains {
	vec c[2][2]; /* [unit parity][vector parity] */
};

/* The token's sum: its chains, then the products of the weights past the
 * last unit (float rows; else tail is 0). */
INLINE float fold(const struct chains *a, float tail)
{
	vec sum = vzero();

	UNROLL
	for (int k = 0; k < 4; k++)
		sum = vadd(sum, a->c[k / 2][k % 2]);
	return hsum(sum) + tail;
}

/* One product past the last unit. A single expression used by dot and
 * dot_multi alike, so the compiler contracts it (or not) the same way. */
INLINE float tail_add(float tail, float w, float x)
{
	return tail + w * x;
}

/* ---- walking a row ----------------------------------------------------- */

/* Where a walker sends each unit of 32 weights: with dot set it multiplies
 * them into the chains against x; otherwise it stores them to dst. Walkers
 * pass the unit's parity as its set (constant at each call site) and may
 * visit units out of row order only where the units of one set stay in
 * order, as struct chains requires. */
struct sink {
	const float *x;
	float *dst;
	struct chains acc;
	float tail; /* products of the weights past the last unit */
};

INLINE void take(struct sink *s, int dot, const vec w[VPU], size_t off,
		 int set)
{
	vec *acc = s->acc.c[set];

	UNROLL
	for (int k = 0; k < VPU; k++) {
		if (dot)
			acc[k % 2] = vfma(w[k], vload(s->x + off + VW * k),
					  acc[k % 2]);
		else
			vstore(s->dst + off + VW * k, w[k]);
	}
}

/* Float rows have no block, so n may end inside a unit: the last n % 32
 * weights go one at a time. */
INLINE void take_one(struct sink *s, int dot, float w, size_t i)
{
	if (dot)
		s->tail = tail_add(s->tail, w, s->x[i]);
	else
		s->dst[i] = w;
}

/* Rows whose every unit stands alone, unit_bytes apart: float rows, Q4_0
 * and Q8_0. Units go in pairs, even then odd; returns the weights taken
 * (n rounded down to a unit). */
typedef void unit_fn(const uint8_t *p, vec w[VPU]);

INLINE size_t walk_units(const uint8_t *p, size_t n, size_t unit_bytes,
			 unit_fn *unit, struct sink *s, int dot)
{
	size_t i = 0;
	vec w[VPU];

	for (; i + 64 <= n; i += 64, p += 2 * unit_bytes) {
		unit(p, w);
		take(s, dot, w, i, 0);
		unit(p + unit_bytes, w);
		take(s, dot, w, i + 32, 1);
	}
	if (i + 32 <= n) {
		unit(p, w);
		take(s, dot, w, i, 0);
		i += 32;
	}
	return i;
}

INLINE void unit_f32(const uint8_t *p, vec w[VPU])
{
	UNROLL
	for (int k = 0; k < VPU; k++)
		w[k] = vload(p + 4 * VW * k);
}

INLINE void unit_f16(const uint8_t *p, vec w[VPU])
{
	UNROLL
	for (int k = 0; k < VPU; k++)
		w[k] = vload_f16(p + 2 * VW * k);
}

INLINE void unit_bf16(const uint8_t *p, vec w[VPU])
{
	UNROLL
	for (int k = 0; k < VPU; k++)
		w[k] = vload_bf16(p + 2 * VW * k);
}

INLINE void walk_f32(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	for (size_t i = walk_units(p, n, 128, unit_f32, s, dot); i < n; i++) {
		float f;

		memcpy(&f, p + 4 * i, sizeof(f));
		take_one(s, dot, f, i);
	}
}

INLINE void walk_f16(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	for (size_t i = walk_units(p, n, 64, unit_f16, s, dot); i < n; i++) {
		uint16_t h;

		memcpy(&h, p + 2 * i, sizeof(h));
		take_one(s, dot, f16(h), i);
	}
}

INLINE void walk_bf16(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	for (size_t i = walk_units(p, n, 64, unit_bf16, s, dot); i < n; i++) {
		uint16_t h;

		memcpy(&h, p + 2 * i, sizeof(h));
		take_one(s, dot, moe_bf16_to_f32(h), i);
	}
}

/* (q - 8) * d, computed as q * d - 8d: one rounding, as in the reference.
 * The block's first 16 values are the low nibbles of qs[0..16), the last
 * 16 the high ones: vector k of a unit takes its half's nibbles. */
INLINE void unit_q4_0(const uint8_t *p, vec w[VPU])
{
	const struct blk_q4_0 *b = (const void *)p;
	vec d = vset(f16(b->d)), d8 = vset(8 * f16(b->d));

	UNROLL
	for (int k = 0; k < VPU; k++) {
		ivec q = widen_u8(b->qs + VW * (k % (VPU / 2)));

		w[k] = vfmsub(cvt(k < VPU / 2 ? lo4(q) : hi4(q)), d, d8);
	}
}

INLINE void unit_q8_0(const uint8_t *p, vec w[VPU])
{
	const struct blk_q8_0 *b = (const void *)p;
	vec d = vset(f16(b->d));

	UNROLL
	for (int k = 0; k < VPU; k++)
		w[k] = vmul(cvt(widen_i8(b->qs + VW * k)), d);
}

INLINE void walk_q4_0(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	walk_units(p, n, sizeof(struct blk_q4_0), unit_q4_0, s, dot);
}

INLINE void walk_q8_0(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	walk_units(p, n, sizeof(struct blk_q8_0), unit_q8_0, s, dot);
}

/* One sub-block from a group's 32 widened bytes: their low nibbles for
 * the even sub-block, their high nibbles for the odd one. */
INLINE void q4k_unit(const ivec q[VPU], int high, float ds, float dm,
		     vec w[VPU])
{
	vec vd = vset(ds), vm = vset(dm);

	UNROLL
	for (int k = 0; k < VPU; k++)
		w[k] = vfmsub(cvt(high ? hi4(q[k]) : lo4(q[k])), vd,
				       vm);
}

INLINE void walk_q4_k(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	const struct blk_q4_k *b = (const void *)p;

	for (size_t i = 0; i < n; i += 256, b++) {
		float ds[8], dm[8];

		q4k_unpack_avx2(b, ds, dm);
		for (int g = 0; g < 4; g++) {
			ivec q[VPU];
			vec w[VPU];

			UNROLL
			for (int k = 0; k < VPU; k++)
				q[k] = widen_u8(b->qs + 32 * g + VW * k);
			q4k_unit(q, 0, ds[2 * g], dm[2 * g], w);
			take(s, dot, w, i + 64 * g, 0);
			q4k_unit(q, 1, ds[2 * g + 1], dm[2 * g + 1], w);
			take(s, dot, w, i + 64 * g + 32, 1);
		}
	}
}

/* Bits 2k and 2k + 1 of each widened qh byte moved to bits 4 and 5, where
 * they sit in a 6-bit q. */
INLINE ivec q6k_top(ivec qh, int k)
{
	const ivec m = iset1(0x30);

	if (k < 2)
		return iand(islli(qh, 4 - 2 * k), m);
	if (k == 2)
		return iand(qh, m);
	return iand(isrli(qh, 2), m);
}

/* Unit k (0..3) of a half block from its widened ql (the half's bytes
 * 32 * (k & 1) on) and qh; ds[0] scales its first 16 weights, ds[1] the
 * rest. (q - 32) * ds as q * ds - 32ds: one rounding, as in the reference. */
INLINE void q6k_unit(const ivec ql[VPU], const ivec qh[VPU], int k,
		     const float *ds, vec w[VPU])
{
	UNROLL
	for (int v = 0; v < VPU; v++) {
		ivec lo = k < 2 ? lo4(ql[v]) : hi4(ql[v]);
		float sc = ds[v * VW / 16];

		ivec q = ior(lo, q6k_top(qh[v], k));

		w[v] = vfmsub(cvt(q), vset(sc), vset(32 * sc));
	}
}

/* Each half's qh serves all four units and each run of 32 ql bytes two of
 * them, so each is widened once: units go in the order 0, 2, 1, 3, which
 * keeps each parity's units in row order. */
INLINE void q6k_half(const struct blk_q6_k *b, int h, const float *ds,
		     struct sink *s, int dot, size_t off)
{
	ivec qh[VPU];

	UNROLL
	for (int v = 0; v < VPU; v++)
		qh[v] = widen_u8(b->qh + 32 * h + VW * v);
	UNROLL
	for (int p = 0; p < 2; p++) {
		ivec ql[VPU];
		vec w[VPU];

		UNROLL
		for (int v = 0; v < VPU; v++)
			ql[v] = widen_u8(b->ql + 64 * h + 32 * p + VW * v);
		q6k_unit(ql, qh, p, ds + 2 * p, w);
		take(s, dot, w, off + 32 * p, p);
		q6k_unit(ql, qh, p + 2, ds + 2 * (p + 2), w);
		take(s, dot, w, off + 32 * (p + 2), p);
	}
}

INLINE void walk_q6_k(const uint8_t *p, size_t n, struct sink *s, int dot)
{
	const struct blk_q6_k *b = (const void *)p;

	for (size_t i = 0; i < n; i += 256, b++) {
		float ds[16];

		q6k_unpack_avx2(b, ds);
		q6k_half(b, 0, ds, s, dot, i);
		q6k_half(b, 1, ds + 8, s, dot, i + 128);
	}
}

/* ---- many tokens ------------------------------------------------------- */

/* All four chains of T tokens over a decoded chunk of `units` units at w
 * (x at the chunk's start), in row order, so that each token's x streams
 * in once; each weight vector is loaded once for all T. CHUNK is an even
 * number of units, so a unit's parity in its chunk is its parity in the
 * row. On the row's first chunk the chains start at 0, as dot's do. */
INLINE void tile(const float *w, size_t units, const float *x, size_t ldx,
		 int T, struct chains *a, int first)
{
	vec acc[TOK][2][2];

	UNROLL
	for (int t = 0; t < T; t++)
		UNROLL
		for (int k = 0; k < 4; k++)
			acc[t][k / 2][k % 2] = first ? vzero()
						     : a[t].c[k / 2][k % 2];
	for (size_t u = 0; u < units; u += 2) { /* an even unit and an odd */
		UNROLL
		for (int j = 0; j < 2 * VPU; j++) {
			size_t i = 32 * u + VW * (size_t)j;
			vec wj;

			if (j == VPU && u + 1 == units)
				break; /* the chunk ends on an even unit */
			wj = vload(w + i);
			UNROLL
			for (int t = 0; t < T; t++) {
				vec *c = &acc[t][j / VPU][j % 2];

				*c = vfma(wj, vload(x + t * ldx + i), *c);
			}
		}
	}
	UNROLL
	for (int t = 0; t < T; t++)
		UNROLL
		for (int k = 0; k < 4; k++)
			a[t].c[k / 2][k % 2] = acc[t][k / 2][k % 2];
}

/* Tokens TOK at a time, then one tile for the rest; each T is its own
 * copy of tile so its accumulators stay in registers. */
static void chunk_multi(const float *w, size_t units, const float *x,
			size_t ldx, size_t nt, struct chains *a, int first)
{
	size_t t = 0;

	for (; t + TOK <= nt; t += TOK)
		tile(w, units, x + t * ldx, ldx, TOK, a + t, first);
	x += t * ldx;
	a += t;
	switch (nt - t) {
#if TOK > 6
	case 6: tile(w, units, x, ldx, 6, a, first); break;
#endif
#if TOK > 5
	case 5: tile(w, units, x, ldx, 5, a, first); break;
#endif
#if TOK > 4
	case 4: tile(w, units, x, ldx, 4, a, first); break;
#endif
#if TOK > 3
	case 3: tile(w, units, x, ldx, 3, a, first); break;
#endif
	case 2: tile(w, units, x, ldx, 2, a, first); break;
	case 1: tile(w, units, x, ldx, 1, a, first); break;
	}
}

typedef void dequant_fn(const void *row, float *dst, size_t n);

/* dot_multi for nt <= GROUP tokens: the row a chunk at a time, blocks of
 * blk weights in sz bytes, every token's chains carried across chunks. */
static void multi_group(dequant_fn *dequant, size_t blk, size_t sz,
			const uint8_t *row, const float *x, size_t ldx,
			size_t nt, float *out, size_t ldo, size_t n)
{
	float buf[CHUNK] __attribute__((aligned(64)));
	struct chains a[GROUP];
	size_t i = 0, len;

	do { /* at least once, so that n == 0 starts the chains too */
		len = n - i < CHUNK ? n - i : CHUNK;
		dequant(row + i / blk * sz, buf, len);
		chunk_multi(buf, len / 32, x + i, ldx, nt, a, i == 0);
		i += len;
	} while (i < n);
	/* buf still holds the last chunk, which ends at the row's tail */
	x += n - len;
	for (size_t t = 0; t < nt; t++) {
		float tail = 0;

		for (size_t j = len / 32 * 32; j < len; j++)
			tail = tail_add(tail, buf[j], x[t * ldx + j]);
		out[t * ldo] = fold(&a[t], tail);
	}
}

/* ---- the kernels ------------------------------------------------------- */

#define KERNELS(name, blk, sz)						\
	static void dequant_##name(const void *row, float *dst, size_t n) \
	{								\
		struct sink s = { .dst = dst };				\
									\
		walk_##name(row, n, &s, 0);				\
	}								\
	static float dot_##name(const void *row, const float *x, size_t n) \
	{								\
		struct sink s = { .x = x, .tail = 0 };			\
									\
		UNROLL							\
		for (int k = 0; k < 4; k++)				\
			s.acc.c[k / 2][k % 2] = vzero();		\
		walk_##name(row, n, &s, 1);				\
		return fold(&s.acc, s.tail);				\
	}								\
	/* A lone token goes to dot: the same sums without the buffer. */ \
	static void dot_multi_##name(const void *row, const float *x,	\
				     size_t ldx, size_t nt, float *out,	\
				     size_t ldo, size_t n)		\
	{								\
		for (size_t t = 0; t < nt; t += GROUP) {		\
			size_t g = nt - t < GROUP ? nt - t : GROUP;	\
									\
			if (g == 1)					\
				out[t * ldo] = dot_##name(row, x + t * ldx, n); \
			else						\
				multi_group(dequant_##name, blk, sz, row, \
					    x + t * ldx, ldx, g,	\
					    out + t * ldo, ldo, n);	\
		}							\
	}

KERNELS(f32, 1, 4)
KERNELS(f16, 1, 2)
KERNELS(bf16, 1, 2)
KERNELS(q4_0, 32, sizeof(struct blk_q4_0))
KERNELS(q8_0, 32, sizeof(struct blk_q8_0))
KERNELS(q4_k, 256, sizeof(struct blk_q4_k))
KERNELS(q6_k, 256, sizeof(struct blk_q6_k))

#define ENTRY(type, name) \
	[type] = { dequant_##name, dot_##name, dot_multi_##name }

const struct moe_kernels KTAB[MOE_KTAB_SIZE] = {
	ENTRY(MOE_F32, f32),
	ENTRY(MOE_F16, f16),
	ENTRY(MOE_BF16, bf16),
	ENTRY(MOE_Q4_0, q4_0),
	ENTRY(MOE_Q8_0, q8_0),
	ENTRY(MOE_Q4_K, q4_k),
	ENTRY(MOE_Q6_K, q6_k),
};
