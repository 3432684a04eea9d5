/* Expert store: a bounded cache of routed experts in RAM, filled from the
 * model file by the io engine (io_uring with O_DIRECT into registered
 * slabs; a pread pool or buffered reads where those cannot be had).
 *
 * Experts of one layer share a size, so the cache is slots carved from
 * large slabs. A slot in use is pinned by a reference count and never
 * evicted; concurrent wants of one expert share one read. Thread-safe:
 * several workers may want, wait and release at once.
 *
 * Placement: given a plan, the budget is split into one pool of slots
 * per node as the plan splits it, each pool's slabs allocated on its
 * node; an expert is read into its owner's pool, and a copy the plan
 * made into the copy's node's pool. Without a plan, or with one node,
 * there is one pool of plain memory. */
#ifndef MOE_STORE_H
#define MOE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "engine.h"
#include "model.h"
#include "plan.h"

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
	bool plain_buffers;     /* do not register the slabs as fixed
				 * buffers (as when RLIMIT_MEMLOCK is low) */
	/* Placement (NULL: none). Pools per node, slabs on their node when
	 * the plan is this machine's, the io threads on its io_cpus. It must
	 * be for this model and outlive the store; the store reads it at
	 * open and in moe_store_replan only. */
	const struct moe_plan *plan;
};

struct moe_store_stats {
	uint64_t hits, misses, evictions; /* want found it resident; want
					   * started its read; slot taken */
	uint64_t bytes_read;    /* completed reads, block padding included */
	double read_seconds;    /* time with reads in flight: for GB/s */
	uint64_t prefetch_issued, prefetch_used; /* read; then wanted */
	uint64_t prefetch_wasted; /* evicted or cancelled before a want */
	uint64_t read_errors;
	uint64_t resident_bytes, budget_bytes;
	uint32_t resident_experts;
	const char *io_mode;    /* "io_uring", "io_uring+sqpoll", "pread" */
	bool direct;            /* O_DIRECT in use */
	bool fixed_buffers;     /* slabs registered with io_uring */
	uint64_t joins;         /* wants that joined a read in progress */
	uint64_t prefetch_dropped; /* no slot could be freed for them */
	uint64_t slab_bytes;    /* memory held for slots (<= budget) */
	uint64_t slot_bytes;    /* the largest slot */
	uint32_t slots;         /* slots in all classes */
	uint32_t slot_classes;  /* distinct slot sizes */
	uint32_t slots_busy;    /* referenced, being read, or failed */
	uint32_t pools;         /* 1 without placement */
	uint32_t replicas;      /* resident copies outside the owner's pool */
	uint64_t dropped;       /* slots freed because their node stopped
				 * holding the expert (moe_store_replan) */
	bool io_pinned;         /* io threads on the plan's io_cpus */
	uint32_t reads_pending; /* expert reads queued or in flight */
};

/* One pool of slots. */
struct moe_store_pool {
	uint32_t node;          /* plan node index; MOE_STORE_OWNER when
				 * the pool serves every node */
	int os_node;            /* OS node its slabs were placed on; -1:
				 * plain memory (one node, a plan that is not
				 * this machine's, or no NUMA support) */
	uint64_t share;         /* its part of the budget */
	uint64_t slab_bytes;    /* held for its slots (<= share) */
	uint32_t slots, free_slots, resident;
	uint32_t replicas;      /* resident copies of other pools' experts */
	uint32_t busy;          /* referenced, being read, or failed */
};

struct moe_store;

/* Open a store over m's file (opened again, with O_DIRECT unless told or
 * refused). Slots hold an expert's three ranges block-aligned; layers
 * whose slots differ in size get slot classes, each given its minimum
 * and the rest of the budget by its share of the model's expert bytes.
 * With a plan of several nodes each pool is sized so within its share;
 * when a share cannot hold a pool's minimum, the store falls back to one
 * pool of plain memory and says so in the log. Returns 0 or:
 * -MOE_ENOSPACE when the budget cannot hold the largest layer's top-k
 * experts plus 2 spare slots (the minimum is named); -EINVAL for a plan
 * of another model; -errno from opening the file, mapping slabs or
 * starting io (MOE_IO_URING where io_uring cannot be set up). The model
 * must outlive the store. */
int moe_store_open(struct moe_store **out, const struct moe_model *m,
		   const struct moe_store_opts *o, struct moe_msg *err);
void moe_store_close(struct moe_store *s);

/* Does not wait for the expert's read. If expert e of layer is resident:
 * take a reference, fill p, return 1 (a hit). Else take a reference and
 * return 0: the read was started (a miss) or joined (one read however
 * many want it; a join), and moe_store_wait() gives the result. Counts as
 * a use of a prefetched expert. When every slot is in use or being read,
 * a queued prefetch is cancelled or one in flight waited for; if there is
 * none, -MOE_ENOSPACE. -EINVAL for a layer or expert the model lacks. */
int moe_store_want(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err);

/* After want returned 0: block until the expert is resident (0, p
 * filled, the reference kept for release) or its read failed
 * (-MOE_EEXPERT_IO, err naming the file, layer, expert, file offset and
 * matrix; the reference is dropped, the last waiter frees the slot, the
 * expert is not resident, and a later want reads it again). A want that
 * comes while waiters of a failed read have yet to collect it shares that
 * failure. -EINVAL without a want. */
int moe_store_wait(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err);

/* Drop a reference taken by want (after a successful wait). */
void moe_store_release(struct moe_store *s, uint32_t layer, uint32_t e);

/* want, wait and release name the owner's copy. These name the copy in
 * node's pool (a plan node index, or MOE_STORE_OWNER): a node holding a
 * copy of a hot expert computes from its own. A node the plan does not
 * say holds the expert still gets it, until the next replan. A want on
 * a node is matched by a wait and a release on the same node. -EINVAL
 * (besides the above) for a node without slots. */
#define MOE_STORE_OWNER UINT32_MAX
int moe_store_want_on(struct moe_store *s, uint32_t layer, uint32_t e,
		      uint32_t node, struct moe_ffn_ptrs *p,
		      struct moe_msg *err);
int moe_store_wait_on(struct moe_store *s, uint32_t layer, uint32_t e,
		      uint32_t node, struct moe_ffn_ptrs *p,
		      struct moe_msg *err);
void moe_store_release_on(struct moe_store *s, uint32_t layer, uint32_t e,
			  uint32_t node);

/* After moe_plan_rebalance (on the thread that rebalances, which must
 * not change the plan meanwhile): follow the plan's owners and copies.
 * A slot whose node no longer holds its expert (a copy dropped, an owner
 * moved) is freed, at once if unused, else at its last release or when
 * its read lands. Wants for the owner go to the new owner's pool (a read
 * there) once no want for the owner holds the old slot; until then they
 * join it, so that a want, its wait and its release always name one
 * slot. A new copy is read on its first want on its node.
 * Returns the slots freed or marked to be. */
uint32_t moe_store_replan(struct moe_store *s);

/* Hint: these experts of layer are likely wanted soon. Those not
 * resident are read at lower priority than demand reads, in a slot that
 * is neither in use, nor being read, nor itself predicted; if there is no
 * such slot the prefetch is dropped. Resident ones are marked predicted
 * (the PREDICT policy keeps them). Ids out of range are ignored. */
void moe_store_prefetch(struct moe_store *s, uint32_t layer,
			const uint32_t *ids, uint32_t n);

void moe_store_stats(struct moe_store *s, struct moe_store_stats *st);

/* The budget in force, from now on: between the least the slots need
 * and the budget the store was opened with (its slabs were made for that
 * much). Going down, what no longer fits is evicted now, or as soon as
 * nobody holds it, and its memory given back when the slabs are not
 * registered with io_uring; going up again, the slots are used again.
 * 0, or -ERANGE naming the bounds; nothing changes then. */
int moe_store_set_budget(struct moe_store *s, uint64_t bytes,
			 struct moe_msg *err);

/* Evict by policy p from now on. Every policy's bookkeeping (last use,
 * frequency, hints) is kept whatever the policy in force, so a change
 * (moed's SIGHUP) takes effect at the next eviction. */
void moe_store_set_policy(struct moe_store *s, enum moe_policy p);

/* "lru", "lfu" or "predict" to a policy; -EINVAL for any other name. */
int moe_policy_by_name(const char *name);

/* Pool q of stats.pools: its node, placement and slots. -EINVAL past
 * the last. */
int moe_store_pool(struct moe_store *s, uint32_t q, struct moe_store_pool *st);

/* The store as the engine's expert source (acquire = want + wait; with
 * several pools, want_on and the rest name the node). */
void moe_store_source(struct moe_store *s, struct moe_expert_src *src);

/* Test hooks. */
/* Is expert e of layer resident (read, not failed)? */
bool moe_store_resident(struct moe_store *s, uint32_t layer, uint32_t e);
/* The next n reads of expert e's gate matrix complete with err (a
 * negative errno) instead of their result. 0 or -EINVAL. */
int moe_store_inject_fault(struct moe_store *s, uint32_t layer, uint32_t e,
			   uint32_t n, int err);
/* Hold queued reads (paused) or let them go. */
void moe_store_pause_io(struct moe_store *s, bool paused);
/* Order in which a resident expert's read was issued (1 is the store's
 * first read); 0 if it is not resident. */
uint64_t moe_store_read_seq(struct moe_store *s, uint32_t layer, uint32_t e);
/* Is expert e of layer resident in node's pool (a plan node index)? */
bool moe_store_resident_on(struct moe_store *s, uint32_t layer, uint32_t e,
			   uint32_t node);
/* The pool whose slabs hold address p, or -1. */
int moe_store_pool_of(struct moe_store *s, const void *p);
/* The io threads' CPUs as the kernel has them: 0 or -errno. */
int moe_store_io_affinity(struct moe_store *s, cpu_set_t *cpus);

#endif
