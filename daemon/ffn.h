/* Expert FFN: y = down . (silu(gate . x) * (up . x)) over a batch of
 * tokens, split by row ranges so several workers can share one expert.
 * Small batches stream each weight row once for all tokens (dot_multi);
 * batches of blas_min tokens or more dequantise row tiles and use sgemm. */
#ifndef MOE_FFN_H
#define MOE_FFN_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Rows per tile on the sgemm path; tile scratch is TILE_ROWS * cols. */
#define MOE_FFN_TILE_ROWS 64

/* One expert's weights in memory, laid out as the matrices in m say. */
struct moe_ffn_ptrs {
	const void *gate, *up, *down;
};

/* Tokens [0, nt) of one batch: x rows of n_embd at stride ldx. */
struct moe_ffn_batch {
	const float *x;
	size_t ldx;
	uint32_t nt;
	float *h;   /* nt rows of n_ff at stride ldh: the hidden activations */
	size_t ldh;
	float *out; /* nt rows of n_embd at stride ldo */
	size_t ldo;
	int use_blas; /* choose the sgemm path */
};

/* Scratch floats one worker needs for batches of up to nt tokens over
 * matrices of at most cols columns. */
size_t moe_ffn_scratch(uint32_t cols, uint32_t nt);

/* h[:, r0..r1) = silu(gate rows r0..r1 . x) * (up rows . x). gate and up
 * of a row are computed together while x is hot in cache. */
void moe_ffn_gate_up(const struct moe_ffn_mats *m,
		     const struct moe_ffn_ptrs *w, struct moe_ffn_batch *b,
		     uint32_t r0, uint32_t r1, float *scratch);

/* out[:, r0..r1) = down rows r0..r1 . h. */
void moe_ffn_down(const struct moe_ffn_mats *m, const struct moe_ffn_ptrs *w,
		  struct moe_ffn_batch *b, uint32_t r0, uint32_t r1,
		  float *scratch);

#endif
