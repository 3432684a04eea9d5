/* Expert FFN over row ranges. The dot_multi path reads each weight row
 * once per batch; the sgemm path dequantises MOE_FFN_TILE_ROWS rows at a
 * time so its scratch stays small whatever the expert's size. */
#include <math.h>

#include <cblas.h>

#include "ffn.h"
#include "quant.h"

#define TR MOE_FFN_TILE_ROWS

static inline float silu(float v)
{
	return v / (1.0f + expf(-v));
}

/* dst[t * ldd + (r - r0)] = row r . x_t for rows [r0, r1), r1 - r0 <= TR;
 * through a dequantised tile and sgemm when tile is not NULL. */
static void rows(const struct moe_mat *m, const void *w, const float *x,
		 size_t ldx, uint32_t nt, float *dst, size_t ldd, uint32_t r0,
		 uint32_t r1, float *tile)
{
	const struct moe_kernels *k = m->kern;
	const uint8_t *row = (const uint8_t *)w + (size_t)r0 * m->row_size;

	if (!tile) {
		for (uint32_t r = r0; r < r1; r++, row += m->row_size)
			k->dot_multi(row, x, ldx, nt, dst + (r - r0), ldd,
				     m->cols);
		return;
	}
	for (uint32_t r = r0; r < r1; r++, row += m->row_size)
		k->dequant(row, tile + (size_t)(r - r0) * m->cols, m->cols);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nt,
		    (int)(r1 - r0), (int)m->cols, 1.0f, x, (int)ldx, tile,
		    (int)m->cols, 0.0f, dst, (int)ldd);
}

size_t moe_ffn_scratch(uint32_t cols, uint32_t nt)
{
	return (size_t)TR * cols + (size_t)TR * nt;
}

void moe_ffn_gate_up(const struct moe_ffn_mats *m,
		     const struct moe_ffn_ptrs *w, struct moe_ffn_batch *b,
		     uint32_t r0, uint32_t r1, float *scratch)
{
	float *u = scratch; /* nt x TR: up's rows of this tile */
	float *tile = b->use_blas ? scratch + (size_t)TR * b->nt : NULL;

	for (uint32_t c0 = r0; c0 < r1; c0 += TR) {
		uint32_t c1 = c0 + TR < r1 ? c0 + TR : r1;
		float *h = b->h + c0;

		if (tile) {
			rows(&m->gate, w->gate, b->x, b->ldx, b->nt, h, b->ldh,
			     c0, c1, tile);
			rows(&m->up, w->up, b->x, b->ldx, b->nt, u, TR, c0, c1,
			     tile);
		} else {
			/* gate then up of one row, while x is in cache */
			for (uint32_t r = c0; r < c1; r++) {
				rows(&m->gate, w->gate, b->x, b->ldx, b->nt,
				     h + (r - c0), b->ldh, r, r + 1, NULL);
				rows(&m->up, w->up, b->x, b->ldx, b->nt,
				     u + (r - c0), TR, r, r + 1, NULL);
			}
		}
		for (uint32_t t = 0; t < b->nt; t++)
			for (uint32_t r = 0; r < c1 - c0; r++)
				h[t * b->ldh + r] = silu(h[t * b->ldh + r]) *
						    u[t * TR + r];
	}
}

void moe_ffn_down(const struct moe_ffn_mats *m, const struct moe_ffn_ptrs *w,
		  struct moe_ffn_batch *b, uint32_t r0, uint32_t r1,
		  float *scratch)
{
	float *tile = b->use_blas ? scratch + (size_t)TR * b->nt : NULL;

	for (uint32_t c0 = r0; c0 < r1; c0 += TR) {
		uint32_t c1 = c0 + TR < r1 ? c0 + TR : r1;

		rows(&m->down, w->down, b->h, b->ldh, b->nt, b->out + c0,
		     b->ldo, c0, c1, tile);
	}
}
