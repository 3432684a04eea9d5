/* Model index: from a parsed GGUF, the MoE shape of every layer and the
 * byte ranges of every expert's gate, up and down matrices, for the
 * architectures moed serves (llama/Mixtral, qwen2moe, qwen3moe, olmoe,
 * deepseek2). Nothing here reads tensor data. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "gguf.h"

enum moe_arch {
	MOE_ARCH_LLAMA,
	MOE_ARCH_QWEN2MOE,
	MOE_ARCH_QWEN3MOE,
	MOE_ARCH_OLMOE,
	MOE_ARCH_DEEPSEEK2,
	MOE_ARCH_COUNT
};

/* Values as GGUF's expert_gating_func key stores them. */
enum moe_gating {
	MOE_GATING_SOFTMAX = 1,
	MOE_GATING_SIGMOID = 2,
};

#define MOE_MAX_EXPERTS 1024
#define MOE_MAX_K 64

/* A 2-D weight matrix in the file: rows of cols elements, row-major. */
struct moe_kernels;

struct moe_mat {
	const struct moe_kernels *kern; /* chosen once, at load; NULL for a
					 * type moed does not compute with */
	uint64_t off;      /* absolute file offset */
	uint64_t size;     /* bytes: rows * row_size */
	uint64_t row_size; /* bytes of one row */
	uint32_t type;     /* enum moe_dtype */
	uint32_t rows;
	uint32_t cols;
};

/* gate and up: n_ff rows of n_embd; down: n_embd rows of n_ff. */
struct moe_ffn_mats {
	struct moe_mat gate, up, down;
};

struct moe_layer {
	uint32_t index;
	bool moe; /* false: a dense FFN layer, which moed leaves to the client */
	uint32_t n_expert;
	uint32_t n_used;
	uint32_t n_ff;        /* of one routed expert */
	uint32_t n_shared;    /* shared experts (fused into one FFN) */
	uint32_t n_ff_shared; /* rows of the fused shared FFN; 0 if none */
	uint32_t n_group, n_group_used; /* group-limited routing; 1, 1 if off */
	enum moe_gating gating;
	bool norm_w;    /* renormalise the selected weights to sum 1 */
	float w_scale;  /* multiply the selected weights by this */
	struct moe_mat router;      /* n_expert rows of n_embd */
	bool has_bias;
	struct moe_mat bias;        /* selection bias: 1 row of n_expert F32 */
	bool has_shared;
	struct moe_ffn_mats shared;
	bool has_shared_gate;
	struct moe_mat shared_gate; /* 1 row of n_embd: sigmoid gate */
	struct moe_ffn_mats *experts; /* n_expert entries */
	uint64_t expert_bytes;        /* gate + up + down of one expert */
};

struct moe_model {
	struct gguf_file *gguf;
	enum moe_arch arch;
	uint32_t n_layer;
	uint32_t n_embd;
	uint32_t n_moe_layers;
	uint32_t first_moe_layer;
	uint32_t max_expert;  /* largest n_expert over MoE layers */
	uint32_t max_ff;      /* largest n_ff / n_ff_shared */
	struct moe_layer *layers; /* n_layer entries */
};

/* Open path, parse it and index it. 0, or a negative code with err set:
 * -MOE_EARCH (architecture not served), -MOE_EMISSING (lists every missing
 * tensor or key), -MOE_EFORMAT (shape or value wrong), -MOE_ETYPE (a
 * tensor type moed cannot compute), -errno. */
int moe_model_open(struct moe_model **out, const char *path,
		   struct moe_msg *err);

/* Index an already parsed file; on success the model owns g. */
int moe_model_index(struct moe_model **out, struct gguf_file *g,
		    struct moe_msg *err);

void moe_model_close(struct moe_model *m);

const char *moe_arch_name(enum moe_arch a);
int moe_arch_by_name(const char *name); /* -1 if unknown */

/* Sum of expert_bytes over all MoE layers' routed experts. */
uint64_t moe_model_expert_bytes(const struct moe_model *m);

/* What the engine keeps resident whatever the cache holds: layer L's
 * router, selection bias and shared experts (each piece padded to 64
 * bytes), and the sum over all MoE layers. */
uint64_t moe_layer_pinned_bytes(const struct moe_layer *L);
uint64_t moe_model_pinned_bytes(const struct moe_model *m);

#endif
