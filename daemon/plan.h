/* Placement plan: which node owns every routed expert, which nodes hold
 * copies of hot ones, how the cache budget is split across nodes, which
 * cores run workers and where the io thread goes. A plan is plain data
 * computed from (topology, model, options): it binds nothing, so any
 * topology, synthetic ones included, can be planned and tested here.
 *
 * Ownership: nodes with workers own experts in proportion to their
 * workers (each node computes what it owns). Every layer is split by
 * quota (floor or ceiling of its share), the ceilings going to the nodes
 * furthest below their share so far, so each node's bytes stay within one
 * expert of its share, in every layer and in total. Once serving, fed
 * token counts move load: swaps of equal-size experts between the
 * busiest and an idle node (bytes unchanged), then copies of hot experts
 * while the budget's replica share allows; a copy is dropped when its
 * expert cools (hysteresis: hot and cool thresholds differ). */
#ifndef MOE_PLAN_H
#define MOE_PLAN_H

#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "diag.h"
#include "model.h"
#include "pool.h"
#include "topo.h"

enum moe_budget_split {
	/* In proportion to the bytes each node owns, so every node caches
	 * the same fraction of its experts (the default). */
	MOE_SPLIT_OWNED,
	MOE_SPLIT_MEMORY, /* in proportion to node memory */
	MOE_SPLIT_EQUAL,
};

struct moe_plan_opts {
	uint64_t cache_bytes;   /* the store's budget; 0: the whole model is
				 * resident (a mapped file) */
	uint32_t reserve_cores; /* cores given no worker (io thread, client):
				 * the io node's last cores first */
	enum moe_budget_split split;
	bool inject_device;     /* take device_node instead of the
				 * topology's (tests, a known layout) */
	int device_node;        /* node index, -1: unknown */
	/* Load balancing; 0 picks the value in brackets. */
	double imbalance;    /* act when a node's load per worker exceeds
			      * the mean by this factor [1.25] */
	double hot;          /* copy experts with at least this many times
			      * the layer's mean expert load [2] */
	double cool;         /* drop the copies below this [1] */
	double decay;        /* weight of past load at each rebalance [0.5] */
	double replica_frac; /* share of a node's budget copies may use [0.1] */
	uint32_t max_swaps;  /* per layer per rebalance [8] */
};

struct moe_plan_layer {
	uint32_t n_expert;     /* 0: a dense layer, not planned */
	uint64_t expert_bytes;
	uint8_t *owner;        /* per expert: node index */
	uint64_t *copies;      /* per expert: bit n set when node n holds a
				* copy (never the owner's bit) */
	double *load;          /* per expert: decayed tokens */
	uint64_t *fed;         /* per expert: tokens since last rebalance */
};

struct moe_plan_node {
	uint32_t os_index;
	uint64_t memory;
	uint32_t first_worker, n_workers;
	uint32_t n_experts;     /* owned, over all layers */
	uint64_t owned_bytes;
	uint64_t replica_bytes; /* copies of other nodes' experts held */
	uint64_t budget;        /* its share of the cache budget */
	uint64_t replica_cap;   /* replica_bytes never exceeds this */
};

struct moe_plan_worker {
	uint32_t node; /* index */
	uint32_t core; /* the core's OS number */
	cpu_set_t cpus;
};

struct moe_plan_change {
	uint32_t swaps, copies_added, copies_dropped;
};

/* Read-only outside plan.c. */
struct moe_plan {
	struct moe_plan_opts o;   /* defaults filled in */
	uint32_t n_nodes, n_workers, n_layer;
	struct moe_plan_node *nodes;     /* as the topology's nodes */
	struct moe_plan_worker *workers; /* grouped by node; 0 is the caller */
	struct moe_plan_layer *layers;   /* one per model layer */
	uint32_t n_reserved;
	cpu_set_t reserved;
	int device_node;     /* node index or -1 */
	uint32_t io_node;    /* the device's node, or the first with cores */
	cpu_set_t io_cpus;   /* a reserved core there, else its cores */
	bool io_reserved;    /* io_cpus is a reserved core */
	uint64_t total_bytes; /* all routed experts */
	uint64_t budget;     /* cache_bytes, or total_bytes when 0 */
	bool bind;           /* the topology is this machine's */
	bool numa;           /* and libnuma works: memory can be placed */
	struct moe_plan_change total; /* since the plan was made */
	uint32_t rebalances;
};

/* 0, or -EINVAL with err set (no cores, reserving every core, a device
 * node out of range), -ENOMEM. o may be NULL. */
int moe_plan_new(struct moe_plan **out, const struct moe_topo *t,
		 const struct moe_model *m, const struct moe_plan_opts *o,
		 struct moe_msg *err);
void moe_plan_free(struct moe_plan *p);

/* Add tokens routed to each of a layer's experts (n_expert counts).
 * Not thread-safe: the dispatcher feeds and rebalances. */
void moe_plan_feed(struct moe_plan *p, uint32_t layer,
		   const uint32_t *counts);

/* Fold fed counts into each expert's load and move load as described
 * above; what changed is added to c (may be NULL). The store learns
 * from owner/copies which experts now belong elsewhere. */
void moe_plan_rebalance(struct moe_plan *p, struct moe_plan_change *c);

/* Busiest node's load per worker over the mean, for one layer (1.0 when
 * nothing was fed). */
double moe_plan_imbalance(const struct moe_plan *p, uint32_t layer);

/* Does node hold expert e of layer (as owner or copy)? */
bool moe_plan_holds(const struct moe_plan *p, uint32_t layer, uint32_t e,
		    uint32_t node);

/* The node computing the rows of expert e that start at row0 (of rows):
 * an expert with copies has its rows split evenly among its holders,
 * owner first, so each reads only its part. For a pool's node_of_task:
 * task boundaries stay the caller's. */
uint32_t moe_plan_node_of_rows(const struct moe_plan *p, uint32_t layer,
			       uint32_t e, uint32_t row0, uint32_t rows);

/* Fill n_workers pins for moe_pool_new_pinned: every worker's node, and
 * its core's CPUs when the plan is for this machine (else unpinned). */
void moe_plan_pins(const struct moe_plan *p, struct moe_pool_pin *pins);

/* Topology and plan, for people: nodes, cores, caches, device, budget
 * split, experts and bytes per node (consecutive identical layers on one
 * line), copies, pinning, io thread. */
void moe_plan_print(FILE *f, const struct moe_plan *p,
		    const struct moe_topo *t);

/* Discover (topology: NULL, a synthetic description or an XML path),
 * plan for model m at model_path with the store's budget cache_bytes (0:
 * the whole model resident) and print. 0 or an error with err. */
int moe_plan_report(FILE *f, const struct moe_model *m,
		    const char *model_path, const char *topology,
		    uint32_t reserve_cores, uint64_t cache_bytes,
		    struct moe_msg *err);

#endif
