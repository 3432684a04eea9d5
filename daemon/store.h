/* Expert store: a bounded cache of routed experts in RAM, filled from the
 * model file by the io engine (io_uring with O_DIRECT into registered
 * slabs; a pread pool or buffered reads where those cannot be had).
 *
 * Experts of one layer share a size, so the cache is slots carved from
 * large slabs. A slot in use is pinned by a reference count and never
 * evicted; concurrent wants of one expert share one read. Thread-safe:
 * several workers may want, wait and release at once. */
#ifndef MOE_STORE_H
#define MOE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "engine.h"
#include "model.h"

enum moe_policy {
	MOE_POLICY_LRU,
	MOE_POLICY_LFU,     /* frequency with ageing */
	MOE_POLICY_PREDICT, /* keeps experts a prefetch or request wants */
};

enum moe_io_mode {
	MOE_IO_AUTO,     /* io_uring if it can be set up, else pread */
	MOE_IO_URING,    /* io_uring or fail */
	MOE_IO_PREAD,    /* the pread thread pool */
};

struct moe_store_opts {
	uint64_t cache_bytes;   /* budget for resident routed experts */
	enum moe_policy policy;
	enum moe_io_mode io;
	bool buffered;          /* no O_DIRECT (also chosen automatically
				 * when the file system refuses it) */
	bool sqpoll;            /* io_uring SQPOLL thread */
	uint32_t queue_depth;   /* 0: 32 */
	uint32_t chunk_bytes;   /* largest single read; 0: 1 MiB */
	uint32_t io_threads;    /* pread pool size; 0: 4 */
};

struct moe_store_stats {
	uint64_t hits, misses, evictions;
	uint64_t bytes_read;
	double read_seconds;    /* time with reads in flight: for GB/s */
	uint64_t prefetch_issued, prefetch_used, prefetch_wasted;
	uint64_t read_errors;
	uint64_t resident_bytes, budget_bytes;
	uint32_t resident_experts;
	const char *io_mode;    /* "io_uring", "io_uring+sqpoll", "pread" */
	bool direct;            /* O_DIRECT in use */
	bool fixed_buffers;     /* slabs registered with io_uring */
};

struct moe_store;

/* -MOE_ENOSPACE when the budget cannot hold the largest layer's k
 * experts (a request could never be served), with the minimum named. */
int moe_store_open(struct moe_store **out, const struct moe_model *m,
		   const struct moe_store_opts *o, struct moe_msg *err);
void moe_store_close(struct moe_store *s);

/* Non-blocking. If expert e of layer is resident: take a reference, fill
 * p, return 1. Else start (or join) its read, take a reference on the
 * pending slot and return 0: call moe_store_wait() later. Negative: the
 * read cannot be started (no slot can be freed: -MOE_ENOSPACE). */
int moe_store_want(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err);

/* Block until a wanted expert is resident (0, p filled) or its read
 * failed (-MOE_EEXPERT_IO or -errno, err naming layer, expert, offset;
 * the reference is dropped, the slot freed, a later want retries). */
int moe_store_wait(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err);

/* Drop a reference taken by want (after a successful wait). */
void moe_store_release(struct moe_store *s, uint32_t layer, uint32_t e);

/* Hint: these experts of layer are likely wanted soon. Read at lower
 * priority than demand reads, never evicting a slot in use or wanted. */
void moe_store_prefetch(struct moe_store *s, uint32_t layer,
			const uint32_t *ids, uint32_t n);

void moe_store_stats(struct moe_store *s, struct moe_store_stats *st);

/* The store as the engine's expert source (acquire = want + wait). */
void moe_store_source(struct moe_store *s, struct moe_expert_src *src);

#endif
