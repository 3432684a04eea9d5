/* ggml tensor types as GGUF files name them: block geometry for every type
 * a file may hold (so the reader can check any tensor's byte size), and
 * which of them moed can compute with. Numbers follow ggml's enum. */
#ifndef MOE_DTYPE_H
#define MOE_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum moe_dtype {
	MOE_F32 = 0,
	MOE_F16 = 1,
	MOE_Q4_0 = 2,
	MOE_Q8_0 = 8,
	MOE_Q4_K = 12,
	MOE_Q6_K = 14,
	MOE_BF16 = 30,
};

#define MOE_QK_K 256 /* elements in a K-quant super-block */

struct moe_dtype_info {
	const char *name;    /* "Q4_K" */
	uint32_t block;      /* elements per block */
	uint32_t block_size; /* bytes per block */
	bool compute;        /* moed has kernels for it */
};

/* Geometry of ggml type t, or NULL when t is not a type ggml defines. */
const struct moe_dtype_info *moe_dtype_info(uint32_t t);

/* Type by name ("q4_k", "Q4_K", "f16"...); -1 if unknown. */
int moe_dtype_by_name(const char *name);

/* Bytes of a row of n elements of type t; 0 when t is unknown or n is not
 * a multiple of the block. */
size_t moe_row_size(uint32_t t, uint64_t n);

#endif
