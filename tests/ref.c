/* Double-precision reference of dequantisation, routing and the expert
 * FFN, written from the format and model definitions alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "ref.h"

static double half(const uint8_t *p)
{
	unsigned h = p[0] | (unsigned)p[1] << 8;
	int e = (h >> 10) & 31;
	double m = h & 1023, v;

	if (e == 31)
		v = m ? NAN : INFINITY;
	else if (e == 0)
		v = ldexp(m, -24);
	else
		v = ldexp(1024 + m, e - 25);
	return h & 0x8000 ? -v : v;
}

static void q4k_scale(const uint8_t *s, int j, int *sc, int *mn)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*mn = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
		*mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

static void deq_q4k(const uint8_t *b, double *y)
{
	double d = half(b), dmin = half(b + 2);
	const uint8_t *sc = b + 4, *qs = b + 16;

	for (int j = 0; j < 8; j++) {
		const uint8_t *q = qs + 32 * (j / 2);
		int s, mn;

		q4k_scale(sc, j, &s, &mn);
		for (int l = 0; l < 32; l++) {
			int v = j % 2 ? q[l] >> 4 : q[l] & 15;

			y[32 * j + l] = d * s * v - dmin * mn;
		}
	}
}

static void deq_q6k(const uint8_t *b, double *y)
{
	const uint8_t *ql = b, *qh = b + 128;
	const int8_t *sc = (const int8_t *)(b + 192);
	double d = half(b + 208);

	for (int i = 0; i < 256; i++) {
		int half128 = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
		uint8_t lo = ql[64 * half128 + l + (quarter & 1) * 32];
		int low4 = quarter >= 2 ? lo >> 4 : lo & 15;
		int hi2 = (qh[32 * half128 + l] >> (2 * quarter)) & 3;
		int q = (low4 | hi2 << 4) - 32;

		y[i] = d * sc[8 * half128 + l / 16 + 2 * quarter] * q;
	}
}

int ref_dequant(uint32_t type, const void *src, double *dst, size_t n)
{
	const uint8_t *p = src;

	for (size_t i = 0; i < n;) {
		switch (type) {
		case MOE_F32: {
			float f;

			memcpy(&f, p + 4 * i, 4);
			dst[i++] = f;
			break;
		}
		case MOE_F16:
			dst[i] = half(p + 2 * i);
			i++;
			break;
		case MOE_BF16: {
			uint32_t u = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
			float f;

			memcpy(&f, &u, 4);
			dst[i++] = f;
			break;
		}
		case MOE_Q8_0: {
			const uint8_t *b = p + 34 * (i / 32);

			for (int l = 0; l < 32; l++)
				dst[i + l] = half(b) * (int8_t)b[2 + l];
			i += 32;
			break;
		}
		case MOE_Q4_0: {
			const uint8_t *b = p + 18 * (i / 32);

			for (int l = 0; l < 16; l++) {
				dst[i + l] = half(b) * ((b[2 + l] & 15) - 8);
				dst[i + l + 16] = half(b) * ((b[2 + l] >> 4) - 8);
			}
			i += 32;
			break;
		}
		case MOE_Q4_K:
			deq_q4k(p + 144 * (i / 256), dst + i);
			i += 256;
			break;
		case MOE_Q6_K:
			deq_q6k(p + 210 * (i / 256), dst + i);
			i += 256;
			break;
		default:
			return -1;
		}
	}
	return 0;
}

double *ref_load_mat(int fd, const struct moe_mat *m)
{
	uint8_t *raw = malloc(m->size);
	double *out = malloc((size_t)m->rows * m->cols * sizeof(double));

	if (!raw || !out || pread(fd, raw, m->size, (off_t)m->off) != (ssize_t)m->size) {
		fprintf(stderr, "ref: cannot read %llu bytes at %llu\n",
			(unsigned long long)m->size, (unsigned long long)m->off);
		abort();
	}
	for (uint32_t r = 0; r < m->rows; r++)
		if (ref_dequant(m->type, raw + r * m->row_size,
				out + (size_t)r * m->cols, m->cols))
			abort();
	free(raw);
	return out;
}

struct ref_ffn {
	double *gate, *up, *down;
	uint32_t n_ff;
};

struct ref_layer {
	const struct moe_layer *L;
	uint32_t n_embd;
	double *router, *bias, *shgate;
	struct ref_ffn *experts;
	struct ref_ffn shared;
};

static void load_ffn(int fd, const struct moe_ffn_mats *f, uint32_t n_ff,
		     struct ref_ffn *r)
{
	r->gate = ref_load_mat(fd, &f->gate);
	r->up = ref_load_mat(fd, &f->up);
	r->down = ref_load_mat(fd, &f->down);
	r->n_ff = n_ff;
}

struct ref_layer *ref_layer_load(const struct moe_model *m, int fd,
				 uint32_t layer)
{
	const struct moe_layer *L = &m->layers[layer];
	struct ref_layer *r = calloc(1, sizeof(*r));

	r->L = L;
	r->n_embd = m->n_embd;
	r->router = ref_load_mat(fd, &L->router);
	if (L->has_bias)
		r->bias = ref_load_mat(fd, &L->bias);
	if (L->has_shared_gate)
		r->shgate = ref_load_mat(fd, &L->shared_gate);
	r->experts = calloc(L->n_expert, sizeof(*r->experts));
	for (uint32_t e = 0; e < L->n_expert; e++)
		load_ffn(fd, &L->experts[e], L->n_ff, &r->experts[e]);
	if (L->has_shared)
		load_ffn(fd, &L->shared, L->n_ff_shared, &r->shared);
	return r;
}

static void free_ffn(struct ref_ffn *f)
{
	free(f->gate);
	free(f->up);
	free(f->down);
}

void ref_layer_free(struct ref_layer *r)
{
	if (!r)
		return;
	for (uint32_t e = 0; e < r->L->n_expert; e++)
		free_ffn(&r->experts[e]);
	free_ffn(&r->shared);
	free(r->experts);
	free(r->router);
	free(r->bias);
	free(r->shgate);
	free(r);
}

static double dotd(const double *a, const double *b, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

void ref_route(const struct ref_layer *r, const double *x,
	       const struct moe_route_opts *o, struct moe_route *out,
	       double *margin)
{
	const struct moe_layer *L = r->L;
	uint32_t n = L->n_expert, gsize = n / L->n_group, k = L->n_used;
	double p[MOE_MAX_EXPERTS], sel[MOE_MAX_EXPERTS], mx = -INFINITY, sum = 0;
	int taken[MOE_MAX_EXPERTS] = { 0 }, allowed[MOE_MAX_EXPERTS];

	for (uint32_t e = 0; e < n; e++) {
		p[e] = dotd(r->router + (size_t)e * r->n_embd, x, r->n_embd);
		mx = fmax(mx, p[e]);
	}
	for (uint32_t e = 0; e < n; e++) {
		if (L->gating == MOE_GATING_SIGMOID) {
			p[e] = 1 / (1 + exp(-p[e]));
		} else {
			p[e] = exp(p[e] - mx);
			sum += p[e];
		}
	}
	for (uint32_t e = 0; e < n; e++) {
		if (L->gating != MOE_GATING_SIGMOID)
			p[e] /= sum;
		sel[e] = p[e] + (r->bias ? r->bias[e] : 0);
		allowed[e] = 1;
	}
	/* groups: keep the n_group_used groups with the best top-2 sums */
	if (L->n_group > 1) {
		double gs[MOE_MAX_EXPERTS];

		for (uint32_t g = 0; g < L->n_group; g++) {
			double a = -INFINITY, b = -INFINITY;

			for (uint32_t i = g * gsize; i < (g + 1) * gsize; i++) {
				if (sel[i] > a) { b = a; a = sel[i]; }
				else if (sel[i] > b) b = sel[i];
			}
			gs[g] = gsize > 1 ? a + b : a;
		}
		for (uint32_t g = 0; g < L->n_group; g++) {
			uint32_t better = 0;

			for (uint32_t h = 0; h < L->n_group; h++)
				better += gs[h] > gs[g] || (gs[h] == gs[g] && h < g);
			for (uint32_t i = g * gsize; i < (g + 1) * gsize; i++)
				allowed[i] = better < L->n_group_used;
		}
	}
	if (o && o->top_p > 0 && o->max_k)
		k = o->max_k;
	out->k = 0;
	for (uint32_t i = 0; i < k; i++) {
		int best = -1;

		for (uint32_t e = 0; e < n; e++)
			if (allowed[e] && !taken[e] && (best < 0 || sel[e] > sel[best]))
				best = (int)e;
		if (best < 0)
			break;
		taken[best] = 1;
		out->id[out->k++] = (uint32_t)best;
	}
	*margin = INFINITY;
	for (uint32_t e = 0; e < n; e++)
		if (allowed[e] && !taken[e])
			*margin = fmin(*margin, sel[out->id[out->k - 1]] - sel[e]);
	if (o && o->top_p > 0) {
		double total = 0, cum = 0;
		uint32_t min_k = o->min_k ? o->min_k : 1, kk = 0;

		for (uint32_t e = 0; e < n; e++)
			total += allowed[e] ? p[e] : 0;
		while (kk < out->k && (kk < min_k || cum < o->top_p * total))
			cum += p[out->id[kk++]];
		out->k = kk;
	}
	sum = 0;
	for (uint32_t i = 0; i < out->k; i++)
		sum += p[out->id[i]];
	if (sum < 6.103515625e-5)
		sum = 6.103515625e-5;
	for (uint32_t i = 0; i < out->k; i++) {
		double w = p[out->id[i]];

		out->w[i] = (float)((L->norm_w ? w / sum : w) * L->w_scale);
	}
}

static void ffn(const struct ref_ffn *f, const double *x, uint32_t n_embd,
		double scale, double *y)
{
	double *h = malloc(f->n_ff * sizeof(double));

	for (uint32_t r = 0; r < f->n_ff; r++) {
		double g = dotd(f->gate + (size_t)r * n_embd, x, n_embd);
		double u = dotd(f->up + (size_t)r * n_embd, x, n_embd);

		h[r] = g / (1 + exp(-g)) * u;
	}
	for (uint32_t d = 0; d < n_embd; d++)
		y[d] += scale * dotd(f->down + (size_t)d * f->n_ff, h, f->n_ff);
	free(h);
}

void ref_apply(const struct ref_layer *r, const double *x,
	       const struct moe_route *route, double *y)
{
	memset(y, 0, r->n_embd * sizeof(double));
	for (uint32_t i = 0; i < route->k; i++)
		ffn(&r->experts[route->id[i]], x, r->n_embd, route->w[i], y);
	if (r->L->has_shared) {
		double g = 1;

		if (r->shgate)
			g = 1 / (1 + exp(-dotd(r->shgate, x, r->n_embd)));
		ffn(&r->shared, x, r->n_embd, g, y);
	}
}
