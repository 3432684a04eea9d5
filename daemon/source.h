/* Where experts come from, chosen by name the same way in moed and the
 * tools: the expert store (io_uring or a pread pool, with a budget and a
 * policy) or the model file mapped and left to the page cache. */
#ifndef MOE_SOURCE_H
#define MOE_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "engine.h"
#include "model.h"

struct moe_plan;

struct moe_source_opts {
	const char *io;       /* "auto", "uring", "pread" or "mmap" */
	const char *policy;   /* "lru", "lfu" or "predict" */
	uint64_t cache_bytes; /* the store's budget */
	bool buffered, sqpoll;
	uint32_t queue_depth, chunk_bytes; /* 0: the store's defaults */
	const struct moe_plan *plan; /* the store's placement; may be NULL */
};

struct moe_source;

/* -EINVAL for an unknown io or policy name (named in err), or as
 * moe_store_open and moe_mapsrc_open. */
int moe_source_open(struct moe_source **out, const struct moe_model *m,
		    const struct moe_source_opts *o, struct moe_expert_src *src,
		    struct moe_msg *err);
void moe_source_close(struct moe_source *s);

/* The routed experts' share of a memory budget of `total` bytes: what is
 * left once the routers and shared experts, always resident, are taken
 * out. -MOE_ENOSPACE, naming both, when they alone fill it. */
int moe_source_expert_budget(const struct moe_model *m, uint64_t total,
			     uint64_t *experts, struct moe_msg *err);

/* The store behind the source; NULL for mmap. */
struct moe_store *moe_source_store(const struct moe_source *s);

#endif
