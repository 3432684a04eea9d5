/* An independent double-precision reference for the engine's math, for
 * the tests: dequantisation straight from the block layouts, routing as
 * each architecture defines it, the SwiGLU FFN and the weighted sum.
 * Deliberately plain: no shared code with the engine's kernels. */
#ifndef MOE_TEST_REF_H
#define MOE_TEST_REF_H

#include <stdint.h>
#include <stddef.h>

#include "model.h"
#include "router.h"

/* Dequantise n elements of type t from src into double; -1 if t unknown. */
int ref_dequant(uint32_t type, const void *src, double *dst, size_t n);

/* A whole matrix read from the model file at m->off, as doubles
 * (rows * cols, row-major). Aborts on a read error. */
double *ref_load_mat(int fd, const struct moe_mat *m);

struct ref_layer; /* one MoE layer's weights, dequantised */

struct ref_layer *ref_layer_load(const struct moe_model *m, int fd,
				 uint32_t layer);
void ref_layer_free(struct ref_layer *r);

/* Route one token (n_embd doubles) as the architecture says. margin gets
 * the gap between the last chosen and the first rejected selection
 * score (INFINITY if none was rejected): a small margin means float and
 * double may fairly disagree. */
void ref_route(const struct ref_layer *r, const double *x,
	       const struct moe_route_opts *o, struct moe_route *out,
	       double *margin);

/* y = sum of route's experts' FFN outputs times weights, plus shared. */
void ref_apply(const struct ref_layer *r, const double *x,
	       const struct moe_route *route, double *y);

#endif
