/* The expert store: which experts are resident and in which slot, who
 * holds them, which one to evict, reads started through the io engine.
 * One mutex guards the index and every slot; a read's completion wakes
 * its slot's condvar. A miss costs a multi-MiB read, so the linear scans
 * over a class's slots (a few thousand at most) are cheap beside it.
 *
 * Slots belong to pools, one per node of the plan, and the index maps
 * (layer, expert, pool) to a slot: the owner's pool holds the expert, a
 * copy's node holds another. Each pool evicts within itself, so a node's
 * copies compete with its own experts for its share of the budget. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <moe/moeclient.h>

#include "io.h"
#include "log.h"
#include "store.h"
#include "topo.h"

#define SLACK 2               /* slots beyond the largest top-k */
#define SLAB_MAX (1ull << 30) /* io_uring's limit for one fixed buffer */
#define NO_SLOT UINT32_MAX
#define NO_POOL UINT32_MAX

enum slot_state { S_FREE, S_PENDING, S_RESIDENT, S_FAILED };

struct slot {
	struct moe_io_req req;   /* its read; done() finds the slot */
	pthread_cond_t cv;       /* the read finished */
	struct moe_store *s;
	uint8_t *mem;
	struct moe_ffn_ptrs ptrs;
	uint64_t last_use;       /* LRU: tick of the last want */
	uint64_t hint;           /* PREDICT: tick of the last prefetch hint */
	uint32_t freq;           /* LFU: wants, halved every age period */
	uint32_t layer, expert;
	uint32_t refs;           /* wants not yet released */
	uint32_t owner_refs;     /* of those, wants for the owner's copy */
	uint32_t cls, pool, slab, next_free;
	uint8_t state;
	bool prefetched;         /* read by a prefetch, not wanted since */
	bool stale;              /* its node no longer holds the expert:
				  * freed once unused and read */
};

/* Slots of one size. Layers whose slots have the same size share one. */
struct slot_class {
	uint64_t bytes;     /* one slot: the three ranges block-aligned */
	uint64_t share;     /* the model's expert bytes in its layers */
	uint32_t min_slots; /* largest top-k of its layers plus SLACK, per
			     * pool */
	uint32_t n_experts; /* more slots than this would stay empty */
};

/* A class's slots in one pool: [first, first + n_slots), of which the
 * first n_live are in use under the budget in force; the others are
 * parked (moe_store_set_budget): never given a read, retired once
 * nobody holds them. */
struct pool_class {
	uint32_t first, n_slots, n_live;
	uint32_t free_head;
};

/* The slots of one node, or of every node. */
struct pool {
	uint32_t node;      /* plan node index; MOE_STORE_OWNER: all */
	int os_node;        /* where its slabs go; -1: plain memory */
	uint64_t share;     /* of the budget */
	uint64_t slab_bytes;
};

struct slab {
	uint8_t *mem;
	uint64_t bytes;
	uint32_t pool;
};

struct moe_store {
	pthread_mutex_t mu;       /* everything below that changes */
	const struct moe_model *m;
	struct moe_store_opts o;  /* o.cache_bytes: the budget in force */
	uint64_t slab_budget;     /* the budget the slabs were made for */
	struct moe_io *io;
	uint32_t blk;
	bool fixed;               /* slot reads use READ_FIXED */
	struct slot_class *cls;
	uint32_t n_cls;
	uint32_t *layer_cls;      /* per layer */
	struct pool *pools;
	uint32_t n_pools;
	struct pool_class *pc;    /* [pool * n_cls + class] */
	uint32_t *pool_of_node;   /* per plan node: its pool or NO_POOL */
	uint32_t n_nodes;         /* the plan's, 0 without one */
	uint32_t *idx_base;       /* per layer: its first expert's number */
	uint32_t n_experts;       /* routed experts of all layers */
	uint32_t *home;           /* per expert: the owner's pool, as wants
				   * for the owner find it */
	uint32_t *next_home;      /* per expert: the plan's owner's pool;
				   * home follows (settle_home) */
	uint32_t *idx;            /* [expert * n_pools + pool]: its slot in
				   * that pool, or NO_SLOT */
	struct slot *slots;
	uint32_t n_slots;
	struct slab *slabs;
	uint32_t n_slabs;
	uint64_t tick, age_count, age_period, horizon;
	uint32_t resident;
	uint64_t resident_bytes;
	struct moe_store_stats st; /* counters; the rest is filled on read */
};

static const char *const part_name[3] = { "gate", "up", "down" };

static const struct moe_mat *part(const struct moe_ffn_mats *f, int i)
{
	return i == 0 ? &f->gate : i == 1 ? &f->up : &f->down;
}

/* ---- layout: slot sizes, classes, slabs ---- */

static uint64_t align_down(uint64_t x, uint32_t b)
{
	return x & ~(uint64_t)(b - 1);
}

static uint64_t align_up(uint64_t x, uint32_t b)
{
	return align_down(x + b - 1, b);
}

/* Bytes of the aligned superset of a range: O_DIRECT reads whole blocks
 * and GGUF data is only 32-byte aligned. */
static uint64_t span(const struct moe_mat *mt, uint32_t b)
{
	return align_up(mt->off + mt->size, b) - align_down(mt->off, b);
}

static uint64_t layer_slot_bytes(const struct moe_layer *L, uint32_t b)
{
	uint64_t most = 0;

	for (uint32_t e = 0; e < L->n_expert; e++) {
		const struct moe_ffn_mats *f = &L->experts[e];
		uint64_t n = span(&f->gate, b) + span(&f->up, b) +
			     span(&f->down, b);

		if (n > most)
			most = n;
	}
	return most;
}

static uint32_t class_of_size(struct moe_store *s, uint64_t bytes)
{
	uint32_t c;

	for (c = 0; c < s->n_cls; c++)
		if (s->cls[c].bytes == bytes)
			return c;
	s->cls[c] = (struct slot_class){ .bytes = bytes };
	s->n_cls++;
	return c;
}

static void plan_classes(struct moe_store *s)
{
	const struct moe_model *m = s->m;

	for (uint32_t l = 0; l < m->n_layer; l++) {
		const struct moe_layer *L = &m->layers[l];
		struct slot_class *k;

		if (!L->moe)
			continue;
		s->layer_cls[l] = class_of_size(s, layer_slot_bytes(L, s->blk));
		k = &s->cls[s->layer_cls[l]];
		k->share += (uint64_t)L->n_expert * L->expert_bytes;
		k->n_experts += L->n_expert;
		if (L->n_used + SLACK > k->min_slots)
			k->min_slots = L->n_used + SLACK;
	}
	for (uint32_t c = 0; c < s->n_cls; c++)
		if (s->cls[c].min_slots > s->cls[c].n_experts)
			s->cls[c].min_slots = s->cls[c].n_experts;
}

static uint64_t min_bytes(const struct moe_store *s)
{
	uint64_t n = 0;

	for (uint32_t c = 0; c < s->n_cls; c++)
		n += s->cls[c].min_slots * s->cls[c].bytes;
	return n;
}

/* Too small a budget to give every class its minimum: one class of the
 * largest size, whose minimum is that of the largest layer alone. */
static void merge_classes(struct moe_store *s)
{
	struct slot_class one = { 0 };

	for (uint32_t c = 0; c < s->n_cls; c++) {
		const struct slot_class *k = &s->cls[c];

		if (k->bytes > one.bytes)
			one.bytes = k->bytes;
		if (k->min_slots > one.min_slots)
			one.min_slots = k->min_slots;
		one.share += k->share;
		one.n_experts += k->n_experts;
	}
	s->cls[0] = one;
	s->n_cls = 1;
	for (uint32_t l = 0; l < s->m->n_layer; l++)
		s->layer_cls[l] = 0;
}

/* ---- pools: one per node the plan gives a share of the budget ---- */

static void one_pool(struct moe_store *s)
{
	s->n_pools = 1;
	s->pools[0] = (struct pool){ .node = MOE_STORE_OWNER, .os_node = -1,
				     .share = s->o.cache_bytes };
	for (uint32_t n = 0; n < s->n_nodes; n++)
		s->pool_of_node[n] = 0;
}

static void say_one_pool(const struct moe_store *s, const struct pool *pl)
{
	moe_log(MOE_LOG_WARNING,
		"cache budget of %" PRIu64 " bytes split over the plan's nodes gives node %u %" PRIu64 " bytes, less than the %" PRIu64 " its slots need (the largest top-k plus %u spare per slot size): one pool of slots for every node, placed on none",
		s->o.cache_bytes, pl->node, pl->share, min_bytes(s), SLACK);
}

/* Each node with workers gets a pool and the plan's share of the budget
 * (scaled to ours; the rounding goes to the first pool, so the shares
 * sum to the budget). Its slabs go on its node when the plan is this
 * machine's and libnuma works (else the topology said why not, once).
 * A share too small for a pool's minimum puts every node in
 * one pool: remote reads beat a node that cannot hold a layer's top-k. */
static void plan_pools(struct moe_store *s)
{
	const struct moe_plan *p = s->o.plan;
	uint64_t given = 0;
	uint32_t k = 0;

	one_pool(s);
	if (!p || p->n_nodes < 2 || !p->budget)
		return;
	for (uint32_t n = 0; n < p->n_nodes; n++) {
		const struct moe_plan_node *nd = &p->nodes[n];

		s->pool_of_node[n] = NO_POOL;
		if (!nd->n_workers)
			continue;
		s->pool_of_node[n] = k;
		s->pools[k] = (struct pool){
			.node = n,
			.os_node = p->numa ? (int)nd->os_index : -1,
			.share = (uint64_t)((unsigned __int128)s->o.cache_bytes *
					    nd->budget / p->budget),
		};
		given += s->pools[k++].share;
	}
	if (k < 2) {
		one_pool(s);
		return;
	}
	s->pools[0].share += s->o.cache_bytes - given;
	s->n_pools = k;
	for (uint32_t q = 0; q < k; q++) {
		if (s->pools[q].share < min_bytes(s)) {
			say_one_pool(s, &s->pools[q]);
			one_pool(s);
			return;
		}
	}
}

static int alloc_pools(struct moe_store *s, struct moe_msg *err)
{
	s->n_nodes = s->o.plan ? s->o.plan->n_nodes : 0;
	s->pools = calloc(s->n_nodes ? s->n_nodes : 1, sizeof(*s->pools));
	s->pool_of_node = calloc(s->n_nodes ? s->n_nodes : 1,
				 sizeof(*s->pool_of_node));
	if (!s->pools || !s->pool_of_node)
		return moe_msgf(err, -ENOMEM, "out of memory");
	plan_pools(s);
	return 0;
}

/* ---- slot classes within each pool ---- */

/* Each class gets its minimum, then the rest of the pool's share in
 * proportion to its share of the model's expert bytes: the steady state
 * when every expert is as likely as any other. A fixed split, simpler
 * than moving slabs between classes; most models have one class anyway. */
static void size_pool(struct moe_store *s, uint32_t q, uint64_t total)
{
	uint64_t left = s->pools[q].share - min_bytes(s);

	for (uint32_t c = 0; c < s->n_cls; c++) {
		const struct slot_class *k = &s->cls[c];
		struct pool_class *pc = &s->pc[q * s->n_cls + c];
		uint64_t extra = (uint64_t)((double)left * (double)k->share /
					    (double)total) / k->bytes;
		uint64_t n = k->min_slots + extra;

		pc->n_slots = n < k->n_experts ? (uint32_t)n : k->n_experts;
		pc->n_live = pc->n_slots;
		pc->first = s->n_slots;
		pc->free_head = NO_SLOT;
		s->n_slots += pc->n_slots;
	}
}

/* A budget too small for every class's minimum merges the classes (one
 * pool then: plan_pools saw to it). */
static int size_classes(struct moe_store *s, struct moe_msg *err)
{
	uint64_t budget = s->o.cache_bytes, need, total = 0;

	if (s->n_cls > 1 && min_bytes(s) > budget)
		merge_classes(s);
	need = min_bytes(s);
	if (need > budget)
		return moe_msgf(err, -MOE_ENOSPACE,
				"cache budget of %" PRIu64 " bytes cannot hold %u slots of %" PRIu64 " bytes (the largest layer's top-k plus %u spare): at least %" PRIu64 " bytes are needed",
				budget, s->cls[0].min_slots, s->cls[0].bytes,
				SLACK, need);
	s->pc = calloc((size_t)s->n_pools * s->n_cls, sizeof(*s->pc));
	if (!s->pc)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t c = 0; c < s->n_cls; c++)
		total += s->cls[c].share;
	for (uint32_t q = 0; q < s->n_pools; q++)
		size_pool(s, q, total);
	return 0;
}

/* ---- slabs ---- */

/* Kernels walk whole experts: huge pages spare the TLB (moe_topo_alloc
 * asks for them). The slab is faulted in now, after its node policy is
 * set, so that its pages are on its node and neither the first reads
 * nor an out-of-memory come later. */
static int map_slab(struct slab *sb, uint64_t bytes, int os_node)
{
	void *p;
	int rc = moe_topo_alloc(&p, bytes, os_node);

	if (rc)
		return rc;
#ifdef MADV_POPULATE_WRITE
	madvise(p, bytes, MADV_POPULATE_WRITE);
#endif
	sb->mem = p;
	sb->bytes = bytes;
	return 0;
}

static uint32_t slots_per_slab(const struct moe_store *s,
			       const struct pool_class *pc, uint32_t c)
{
	uint64_t n = SLAB_MAX / s->cls[c].bytes;

	return n ? (n < pc->n_slots ? (uint32_t)n : pc->n_slots) : 1;
}

static void init_slot(struct moe_store *s, uint32_t i, uint32_t q,
		      uint32_t c, uint32_t slab, uint8_t *mem)
{
	struct slot *sl = &s->slots[i];
	struct pool_class *pc = &s->pc[q * s->n_cls + c];

	pthread_cond_init(&sl->cv, NULL);
	sl->s = s;
	sl->pool = q;
	sl->cls = c;
	sl->slab = slab;
	sl->mem = mem;
	sl->state = S_FREE;
	sl->next_free = pc->free_head;
	pc->free_head = i;
}

static int alloc_class(struct moe_store *s, uint32_t q, uint32_t c)
{
	const struct pool_class *pc = &s->pc[q * s->n_cls + c];
	uint64_t bytes = s->cls[c].bytes;
	uint32_t per = slots_per_slab(s, pc, c);

	for (uint32_t i = 0; i < pc->n_slots; i += per) {
		uint32_t n = pc->n_slots - i < per ? pc->n_slots - i : per;
		struct slab *sb = &s->slabs[s->n_slabs];
		int rc = map_slab(sb, n * bytes, s->pools[q].os_node);

		if (rc)
			return rc;
		sb->pool = q;
		for (uint32_t j = 0; j < n; j++)
			init_slot(s, pc->first + i + j, q, c, s->n_slabs,
				  sb->mem + j * bytes);
		s->st.slab_bytes += sb->bytes;
		s->pools[q].slab_bytes += sb->bytes;
		s->n_slabs++;
	}
	return 0;
}

static int alloc_slabs(struct moe_store *s, struct moe_msg *err)
{
	uint32_t n = 0;
	int rc;

	for (uint32_t q = 0; q < s->n_pools; q++) {
		for (uint32_t c = 0; c < s->n_cls; c++) {
			const struct pool_class *pc = &s->pc[q * s->n_cls + c];
			uint32_t per = slots_per_slab(s, pc, c);

			n += (pc->n_slots + per - 1) / per;
		}
	}
	s->slabs = calloc(n ? n : 1, sizeof(*s->slabs));
	s->slots = calloc(s->n_slots ? s->n_slots : 1, sizeof(*s->slots));
	if (!s->slabs || !s->slots)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t q = 0; q < s->n_pools; q++) {
		for (uint32_t c = 0; c < s->n_cls; c++) {
			rc = alloc_class(s, q, c);
			if (rc)
				return moe_msgf(err, rc,
						"cannot map %" PRIu64 " bytes of slabs: %s",
						s->o.cache_bytes, moe_strerror(rc));
		}
	}
	return 0;
}

/* ---- layers and the index ---- */

/* The plan names layers and experts by number: they must be this
 * model's. */
static int check_plan(const struct moe_store *s, struct moe_msg *err)
{
	const struct moe_plan *p = s->o.plan;
	const struct moe_model *m = s->m;

	if (!p)
		return 0;
	if (p->n_layer != m->n_layer)
		return moe_msgf(err, -EINVAL,
				"placement plan is for a model of %u layers, %s has %u",
				p->n_layer, gguf_path(m->gguf), m->n_layer);
	for (uint32_t l = 0; l < m->n_layer; l++) {
		uint32_t n = m->layers[l].moe ? m->layers[l].n_expert : 0;

		if (p->layers[l].n_expert != n)
			return moe_msgf(err, -EINVAL,
					"placement plan gives layer %u %u experts, %s has %u",
					l, p->layers[l].n_expert,
					gguf_path(m->gguf), n);
	}
	return 0;
}

static int alloc_layers(struct moe_store *s, struct moe_msg *err)
{
	const struct moe_model *m = s->m;

	s->layer_cls = calloc(m->n_layer, sizeof(*s->layer_cls));
	s->idx_base = calloc(m->n_layer, sizeof(*s->idx_base));
	s->cls = calloc(m->n_layer, sizeof(*s->cls));
	if (!s->layer_cls || !s->idx_base || !s->cls)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t l = 0; l < m->n_layer; l++) {
		s->idx_base[l] = s->n_experts;
		if (m->layers[l].moe)
			s->n_experts += m->layers[l].n_expert;
	}
	return 0;
}

/* Every expert's owner's pool, as the plan has it now. */
static void follow_owners(struct moe_store *s)
{
	const struct moe_plan *p = s->o.plan;

	for (uint32_t l = 0; p && s->n_pools > 1 && l < s->m->n_layer; l++)
		for (uint32_t e = 0; e < p->layers[l].n_expert; e++)
			s->next_home[s->idx_base[l] + e] =
				s->pool_of_node[p->layers[l].owner[e]];
}

static int alloc_index(struct moe_store *s, struct moe_msg *err)
{
	size_t n = (size_t)s->n_experts * s->n_pools;
	size_t ne = s->n_experts ? s->n_experts : 1;

	s->idx = malloc((n ? n : 1) * sizeof(*s->idx));
	s->home = calloc(ne, sizeof(*s->home));
	s->next_home = calloc(ne, sizeof(*s->next_home));
	if (!s->idx || !s->home || !s->next_home)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		s->idx[i] = NO_SLOT;
	follow_owners(s);
	memcpy(s->home, s->next_home, ne * sizeof(*s->home));
	return 0;
}

/* ---- open and close ---- */

static int open_io(struct moe_store *s, struct moe_msg *err)
{
	const struct moe_plan *p = s->o.plan;
	struct moe_io_opts io = {
		.force_pread = s->o.io == MOE_IO_PREAD,
		.require_uring = s->o.io == MOE_IO_URING,
		.buffered = s->o.buffered,
		.sqpoll = s->o.sqpoll,
		.queue_depth = s->o.queue_depth,
		.chunk_bytes = s->o.chunk_bytes,
		.threads = s->o.io_threads,
		/* A synthetic plan's CPUs are not this machine's. */
		.cpus = p && p->bind ? &p->io_cpus : NULL,
	};
	int rc = moe_io_open(&s->io, gguf_path(s->m->gguf), &io, err);

	if (!rc)
		s->blk = moe_io_block(s->io);
	return rc;
}

static int start_io(struct moe_store *s, struct moe_msg *err)
{
	struct iovec *iov = NULL;
	uint32_t n = 0;
	struct moe_io_stats st;
	int rc;

	if (s->o.plain_buffers) {
		moe_log(MOE_LOG_NOTICE,
			"%s: slabs not registered as fixed buffers (by option)",
			gguf_path(s->m->gguf));
	} else {
		iov = calloc(s->n_slabs, sizeof(*iov));
		if (!iov)
			return moe_msgf(err, -ENOMEM, "out of memory");
		for (; n < s->n_slabs; n++)
			iov[n] = (struct iovec){ s->slabs[n].mem,
						 s->slabs[n].bytes };
	}
	rc = moe_io_start(s->io, iov, n, err);
	free(iov);
	moe_io_stats(s->io, &st);
	s->fixed = st.fixed_buffers;
	return rc;
}

int moe_store_open(struct moe_store **out, const struct moe_model *m,
		   const struct moe_store_opts *o, struct moe_msg *err)
{
	struct moe_store *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return moe_msgf(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&s->mu, NULL);
	s->m = m;
	s->o = *o;
	s->slab_budget = o->cache_bytes;
	rc = check_plan(s, err);
	if (!rc)
		rc = open_io(s, err);
	if (!rc)
		rc = alloc_layers(s, err);
	if (!rc) {
		plan_classes(s);
		rc = alloc_pools(s, err);
	}
	if (!rc)
		rc = size_classes(s, err);
	if (!rc)
		rc = alloc_index(s, err);
	if (!rc)
		rc = alloc_slabs(s, err);
	if (!rc)
		rc = start_io(s, err);
	if (rc)
		goto err;
	/* LFU: an expert keeps its rank only if wanted again within a few
	 * turnovers of the cache. PREDICT: a hint not followed by a want
	 * within two turnovers was wrong. */
	s->age_period = 4ull * s->n_slots;
	s->horizon = 2ull * s->n_slots;
	*out = s;
	return 0;
err:
	moe_store_close(s);
	return rc;
}

void moe_store_close(struct moe_store *s)
{
	if (!s)
		return;
	/* Cancelled reads call back into the store: close io first. */
	moe_io_close(s->io);
	for (uint32_t i = 0; s->slots && i < s->n_slots; i++)
		if (s->slots[i].s)
			pthread_cond_destroy(&s->slots[i].cv);
	for (uint32_t i = 0; i < s->n_slabs; i++)
		moe_topo_free(s->slabs[i].mem, s->slabs[i].bytes);
	free(s->slabs);
	free(s->slots);
	free(s->idx);
	free(s->home);
	free(s->next_home);
	free(s->idx_base);
	free(s->pc);
	free(s->pools);
	free(s->pool_of_node);
	free(s->cls);
	free(s->layer_cls);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* ---- the index and eviction (s->mu held) ---- */

static uint32_t expert_no(const struct moe_store *s, uint32_t layer,
			  uint32_t e)
{
	return s->idx_base[layer] + e;
}

static uint32_t *idx_of(struct moe_store *s, uint32_t layer, uint32_t e,
			uint32_t q)
{
	return &s->idx[(size_t)expert_no(s, layer, e) * s->n_pools + q];
}

static struct slot *lookup(struct moe_store *s, uint32_t layer, uint32_t e,
			   uint32_t q)
{
	uint32_t i = *idx_of(s, layer, e, q);

	return i == NO_SLOT ? NULL : &s->slots[i];
}

static uint32_t home_of(const struct moe_store *s, uint32_t layer,
			uint32_t e)
{
	return s->home[expert_no(s, layer, e)];
}

/* Wants for the owner go to the plan's owner's pool once no want for
 * the owner holds the old slot. Until then they join it: a want, its
 * wait and its release name the same slot however many replans come
 * between (they could not tell which slot a caller holds otherwise). */
static void settle_home(struct moe_store *s, uint32_t layer, uint32_t e)
{
	uint32_t x = expert_no(s, layer, e);
	struct slot *sl;

	if (s->home[x] == s->next_home[x])
		return;
	sl = lookup(s, layer, e, s->home[x]);
	if (!sl || !sl->owner_refs)
		s->home[x] = s->next_home[x];
}

static void age(struct moe_store *s)
{
	for (uint32_t i = 0; i < s->n_slots; i++)
		s->slots[i].freq >>= 1;
	s->age_count = 0;
}

static void touch(struct moe_store *s, struct slot *sl)
{
	sl->last_use = ++s->tick;
	sl->freq++;
	if (++s->age_count >= s->age_period)
		age(s);
}

/* Wanted soon, as far as anyone said: a prefetch not yet used, or a hint
 * newer than the last want and not too old. */
static bool predicted(const struct moe_store *s, const struct slot *sl)
{
	return sl->prefetched ||
	       (sl->hint > sl->last_use && s->tick - sl->hint <= s->horizon);
}

/* Should a be evicted before b? */
static bool before(const struct moe_store *s, const struct slot *a,
		   const struct slot *b)
{
	bool pa, pb;

	switch (s->o.policy) {
	case MOE_POLICY_LFU:
		if (a->freq != b->freq)
			return a->freq < b->freq;
		break;
	case MOE_POLICY_PREDICT:
		pa = predicted(s, a);
		pb = predicted(s, b);
		if (pa != pb)
			return pb;
		break;
	default:
		break;
	}
	return a->last_use < b->last_use;
}

/* Never a slot in use or being read. A prefetch also spares what another
 * prefetch or hint asked for: it would only trade one guess for another. */
static bool evictable(const struct moe_store *s, const struct slot *sl,
		      bool prefetch)
{
	return sl->state == S_RESIDENT && !sl->refs &&
	       !(prefetch && predicted(s, sl));
}

static struct pool_class *pool_class(struct moe_store *s, uint32_t q,
				     uint32_t c)
{
	return &s->pc[q * s->n_cls + c];
}

static struct slot *victim(struct moe_store *s, uint32_t q, uint32_t c,
			   bool prefetch)
{
	const struct pool_class *pc = pool_class(s, q, c);
	struct slot *best = NULL;

	for (uint32_t i = pc->first; i < pc->first + pc->n_live; i++) {
		struct slot *sl = &s->slots[i];

		if (evictable(s, sl, prefetch) && (!best || before(s, sl, best)))
			best = sl;
	}
	return best;
}

/* A resident slot stops being counted; its index entry goes. */
static void unresident(struct moe_store *s, struct slot *sl)
{
	*idx_of(s, sl->layer, sl->expert, sl->pool) = NO_SLOT;
	if (sl->prefetched)
		s->st.prefetch_wasted++;
	s->resident--;
	s->resident_bytes -= s->cls[sl->cls].bytes;
	sl->state = S_FREE;
}

static void evict(struct moe_store *s, struct slot *sl)
{
	s->st.evictions++;
	unresident(s, sl);
}

static bool parked(const struct moe_store *s, const struct slot *sl)
{
	const struct pool_class *pc = &s->pc[sl->pool * s->n_cls + sl->cls];

	return (uint32_t)(sl - s->slots) >= pc->first + pc->n_live;
}

/* A parked slot's memory goes back to the system, unless the slabs are
 * registered with io_uring: the kernel keeps those pages pinned, and a
 * fresh page mapped in their place would never see a read. */
static void release_memory(const struct moe_store *s, const struct slot *sl)
{
	if (!s->fixed)
		madvise(sl->mem, s->cls[sl->cls].bytes, MADV_DONTNEED);
}

/* A parked slot is left off the free list: nothing reads into it. */
static void free_slot(struct moe_store *s, struct slot *sl)
{
	struct pool_class *pc = pool_class(s, sl->pool, sl->cls);

	*idx_of(s, sl->layer, sl->expert, sl->pool) = NO_SLOT;
	sl->state = S_FREE;
	sl->prefetched = false;
	sl->stale = false;
	if (parked(s, sl)) {
		release_memory(s, sl);
		return;
	}
	sl->next_free = pc->free_head;
	pc->free_head = (uint32_t)(sl - s->slots);
}

/* A stale slot nobody uses any more goes back to its pool. */
static void drop_stale(struct moe_store *s, struct slot *sl)
{
	s->st.dropped++;
	if (sl->state == S_RESIDENT)
		unresident(s, sl);
	free_slot(s, sl);
}

/* Stale or parked, and nobody holds it: it goes now. */
static bool leaving(const struct moe_store *s, const struct slot *sl)
{
	return sl->stale || parked(s, sl);
}

static void retire(struct moe_store *s, struct slot *sl)
{
	if (sl->stale) {
		drop_stale(s, sl);
		return;
	}
	if (sl->state == S_RESIDENT)
		evict(s, sl);
	free_slot(s, sl);
}

/* A queued prefetch taken back: its slot is free again (a stale one's
 * counted as dropped). False once its read has started. */
static bool cancel_prefetch(struct moe_store *s, struct slot *sl)
{
	if (!moe_io_cancel(s->io, &sl->req))
		return false;
	s->st.prefetch_wasted++;
	s->st.dropped += sl->stale;
	free_slot(s, sl);
	return true;
}

/* sl is leaving (stale or parked). Unused and read, it goes now; a
 * queued prefetch is taken back; else it goes at its last release or
 * when its read lands (drop_ref, read_done). */
static void let_go(struct moe_store *s, struct slot *sl)
{
	if (sl->refs)
		return;
	if (sl->state == S_RESIDENT)
		retire(s, sl);
	else if (sl->state == S_PENDING)
		cancel_prefetch(s, sl);
}

static struct slot *take_slot(struct moe_store *s, uint32_t q, uint32_t c,
			      bool prefetch)
{
	struct pool_class *pc = pool_class(s, q, c);
	struct slot *sl;

	if (pc->free_head != NO_SLOT) {
		sl = &s->slots[pc->free_head];
		pc->free_head = sl->next_free;
		return sl;
	}
	sl = victim(s, q, c, prefetch);
	if (sl)
		evict(s, sl);
	return sl;
}

/* ---- reads ---- */

static void fill_seg(struct moe_io_seg *g, const struct moe_mat *mt,
		     uint8_t *buf, uint32_t b, const void **ptr)
{
	g->off = align_down(mt->off, b);
	g->len = span(mt, b);
	g->need = mt->off + mt->size - g->off;
	g->buf = buf;
	*ptr = buf + (mt->off - g->off);
}

static void read_done(struct moe_io_req *r);

static void fill_req(struct moe_store *s, struct slot *sl)
{
	const struct moe_ffn_mats *f =
		&s->m->layers[sl->layer].experts[sl->expert];
	struct moe_io_req *r = &sl->req;
	const void **ptr[3] = { &sl->ptrs.gate, &sl->ptrs.up, &sl->ptrs.down };
	uint8_t *at = sl->mem;

	for (int i = 0; i < 3; i++) {
		fill_seg(&r->seg[i], part(f, i), at, s->blk, ptr[i]);
		at += r->seg[i].len;
	}
	r->n_seg = 3;
	r->buf_index = s->fixed ? sl->slab : MOE_IO_NOBUF;
	r->done = read_done;
}

/* Give sl to expert e of layer and start its read. A demand read holds
 * the wanter's reference; a prefetch holds none. */
static void claim(struct moe_store *s, struct slot *sl, uint32_t layer,
		  uint32_t e, bool prefetch)
{
	sl->layer = layer;
	sl->expert = e;
	sl->state = S_PENDING;
	sl->refs = !prefetch;
	sl->owner_refs = 0;
	sl->prefetched = prefetch;
	sl->stale = false;
	sl->freq = 0;
	sl->hint = 0;
	touch(s, sl);
	*idx_of(s, layer, e, sl->pool) = (uint32_t)(sl - s->slots);
	fill_req(s, sl);
	moe_io_submit(s->io, &sl->req, prefetch);
}

/* One line naming layer, expert, the file offset and the matrix. */
static int describe_failure(const struct moe_store *s, const struct slot *sl,
			    struct moe_msg *err)
{
	const struct moe_io_req *r = &sl->req;
	const struct moe_ffn_mats *f =
		&s->m->layers[sl->layer].experts[sl->expert];
	const struct moe_mat *mt;
	uint64_t off = r->err_off;
	int i = 0;

	while (i < 2 && !(off >= r->seg[i].off &&
			  off < r->seg[i].off + r->seg[i].len))
		i++;
	/* A failed read may have begun in the block padding before the
	 * matrix: name the first of its bytes that could not be read. */
	mt = part(f, i);
	if (off < mt->off)
		off = mt->off;
	return moe_msgf(err, -MOE_EEXPERT_IO,
			"%s: layer %u expert %u: %s at file offset %" PRIu64 " in its %s matrix (bytes %" PRIu64 "..%" PRIu64 "): %s",
			gguf_path(s->m->gguf), sl->layer, sl->expert,
			r->err_short ? "short read" : "read failed", off,
			part_name[i], mt->off, mt->off + mt->size,
			r->err_short ? "the file ends there" :
				       moe_strerror(r->rc));
}

static void read_failed(struct moe_store *s, struct slot *sl)
{
	struct moe_msg m;

	if (sl->req.rc != -ECANCELED) {
		s->st.read_errors++;
		describe_failure(s, sl, &m);
		moe_log(MOE_LOG_WARNING, "%s", m.text);
	}
	/* Waiters collect the failure; the last one frees the slot. */
	if (sl->refs)
		sl->state = S_FAILED;
	else
		free_slot(s, sl);
}

/* From an io thread, with no io lock held. */
static void read_done(struct moe_io_req *r)
{
	struct slot *sl = (struct slot *)((char *)r - offsetof(struct slot, req));
	struct moe_store *s = sl->s;

	pthread_mutex_lock(&s->mu);
	s->st.bytes_read += r->bytes;
	if (!r->rc) {
		sl->state = S_RESIDENT;
		s->resident++;
		s->resident_bytes += s->cls[sl->cls].bytes;
		/* A prefetch its node stopped holding, or the budget
		 * parked, while it was read. */
		if (leaving(s, sl) && !sl->refs)
			retire(s, sl);
	} else {
		read_failed(s, sl);
	}
	/* Waiters test the state under s->mu after waking: the mutex orders
	 * this thread's (and the kernel's) writes to the slot before their
	 * reads of it. */
	pthread_cond_broadcast(&sl->cv);
	pthread_mutex_unlock(&s->mu);
}

/* ---- the interface ---- */

static int check_id(const struct moe_store *s, uint32_t layer, uint32_t e,
		    struct moe_msg *err)
{
	const struct moe_model *m = s->m;

	if (layer >= m->n_layer || !m->layers[layer].moe)
		return moe_msgf(err, -EINVAL, "layer %u is not a MoE layer",
				layer);
	if (e >= m->layers[layer].n_expert)
		return moe_msgf(err, -EINVAL, "layer %u has %u experts: no expert %u",
				layer, m->layers[layer].n_expert, e);
	return 0;
}

static int join(struct moe_store *s, struct slot *sl, bool owner,
		struct moe_ffn_ptrs *p)
{
	sl->refs++;
	sl->owner_refs += owner;
	touch(s, sl);
	if (sl->prefetched) {
		sl->prefetched = false;
		s->st.prefetch_used++;
		if (sl->state == S_PENDING)
			moe_io_promote(s->io, &sl->req);
	}
	if (sl->state == S_RESIDENT) {
		s->st.hits++;
		*p = sl->ptrs;
		return 1;
	}
	/* Pending, or failed with waiters still to collect it: the wait
	 * reports that failure, the next want retries. */
	s->st.joins++;
	return 0;
}

static struct slot *pending_prefetch(struct moe_store *s, uint32_t q,
				     uint32_t c)
{
	const struct pool_class *pc = pool_class(s, q, c);

	for (uint32_t i = pc->first; i < pc->first + pc->n_live; i++) {
		struct slot *sl = &s->slots[i];

		if (sl->state == S_PENDING && sl->prefetched && !sl->refs)
			return sl;
	}
	return NULL;
}

/* No slot to evict for a demand read: take one back from a prefetch. A
 * queued one is cancelled; else wait for one in flight, a bounded wait
 * since only its read holds it. False if no prefetch holds a slot. */
static bool reclaim_prefetch(struct moe_store *s, uint32_t q, uint32_t c)
{
	struct slot *sl = pending_prefetch(s, q, c);

	if (!sl)
		return false;
	if (cancel_prefetch(s, sl))
		return true;
	/* Its remaining chunks must not wait behind other demand reads. */
	moe_io_promote(s->io, &sl->req);
	/* Pairs with the broadcast in read_done(). */
	while (sl->state == S_PENDING && !sl->refs)
		pthread_cond_wait(&sl->cv, &s->mu);
	return true;
}

/* s->mu held. The lookup is redone after any wait: another thread may
 * have started the same expert's read meanwhile. */
static int want_locked(struct moe_store *s, uint32_t layer, uint32_t e,
		       uint32_t q, bool owner, struct moe_ffn_ptrs *p,
		       struct moe_msg *err)
{
	uint32_t c = s->layer_cls[layer];

	for (;;) {
		struct slot *sl = lookup(s, layer, e, q);

		if (sl)
			return join(s, sl, owner, p);
		sl = take_slot(s, q, c, false);
		if (sl) {
			s->st.misses++;
			claim(s, sl, layer, e, false);
			sl->owner_refs = owner;
			return 0;
		}
		if (!reclaim_prefetch(s, q, c))
			return moe_msgf(err, -MOE_ENOSPACE,
					"layer %u expert %u: all %u slots of %" PRIu64 " bytes%s are in use or being read",
					layer, e, pool_class(s, q, c)->n_slots,
					s->cls[c].bytes,
					s->n_pools > 1 ? " of its node" : "");
	}
}

/* The pool a caller's node names (s->mu held, for the owner's). */
static int pool_of(const struct moe_store *s, uint32_t layer, uint32_t e,
		   uint32_t node, uint32_t *q, struct moe_msg *err)
{
	if (node == MOE_STORE_OWNER) {
		*q = home_of(s, layer, e);
		return 0;
	}
	if (node < s->n_nodes && s->pool_of_node[node] != NO_POOL) {
		*q = s->pool_of_node[node];
		return 0;
	}
	if (!s->n_nodes && node == 0) { /* no plan: node 0 is all there is */
		*q = 0;
		return 0;
	}
	return moe_msgf(err, -EINVAL,
			"layer %u expert %u: node %u has no slots in the store",
			layer, e, node);
}

int moe_store_want_on(struct moe_store *s, uint32_t layer, uint32_t e,
		      uint32_t node, struct moe_ffn_ptrs *p,
		      struct moe_msg *err)
{
	uint32_t q;
	int rc = check_id(s, layer, e, err);

	if (rc)
		return rc;
	pthread_mutex_lock(&s->mu);
	rc = pool_of(s, layer, e, node, &q, err);
	if (!rc)
		rc = want_locked(s, layer, e, q, node == MOE_STORE_OWNER, p,
				 err);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int moe_store_want(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_want_on(s, layer, e, MOE_STORE_OWNER, p, err);
}

/* The slot a want on node referenced (s->mu held): for the owner's, the
 * owner's pool does not move while a want for it holds one (settle_home). */
static struct slot *held(struct moe_store *s, uint32_t layer, uint32_t e,
			 uint32_t node)
{
	uint32_t q;

	if (pool_of(s, layer, e, node, &q, NULL))
		return NULL;
	return lookup(s, layer, e, q);
}

static void drop_ref(struct moe_store *s, struct slot *sl, bool owner)
{
	uint32_t layer = sl->layer, e = sl->expert;

	if (owner && sl->owner_refs)
		sl->owner_refs--;
	if (--sl->refs) {
		settle_home(s, layer, e);
		return;
	}
	if (sl->state == S_FAILED)
		free_slot(s, sl);
	else if (leaving(s, sl) && sl->state == S_RESIDENT)
		retire(s, sl);
	settle_home(s, layer, e);
}

int moe_store_wait_on(struct moe_store *s, uint32_t layer, uint32_t e,
		      uint32_t node, struct moe_ffn_ptrs *p,
		      struct moe_msg *err)
{
	struct slot *sl;
	int rc = check_id(s, layer, e, err);

	if (rc)
		return rc;
	pthread_mutex_lock(&s->mu);
	sl = held(s, layer, e, node);
	if (!sl || !sl->refs) {
		pthread_mutex_unlock(&s->mu);
		return moe_msgf(err, -EINVAL,
				"layer %u expert %u: wait without a want",
				layer, e);
	}
	/* Pairs with the broadcast in read_done(). */
	while (sl->state == S_PENDING)
		pthread_cond_wait(&sl->cv, &s->mu);
	if (sl->state == S_RESIDENT) {
		*p = sl->ptrs;
	} else {
		rc = describe_failure(s, sl, err);
		drop_ref(s, sl, node == MOE_STORE_OWNER);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int moe_store_wait(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_wait_on(s, layer, e, MOE_STORE_OWNER, p, err);
}

void moe_store_release_on(struct moe_store *s, uint32_t layer, uint32_t e,
			  uint32_t node)
{
	struct slot *sl;

	if (check_id(s, layer, e, NULL))
		return;
	pthread_mutex_lock(&s->mu);
	sl = held(s, layer, e, node);
	if (sl && sl->refs)
		drop_ref(s, sl, node == MOE_STORE_OWNER);
	pthread_mutex_unlock(&s->mu);
}

void moe_store_release(struct moe_store *s, uint32_t layer, uint32_t e)
{
	moe_store_release_on(s, layer, e, MOE_STORE_OWNER);
}

/* Into the owner's pool: copies are made for load, not for guesses. */
static void prefetch_one(struct moe_store *s, uint32_t layer, uint32_t e)
{
	uint32_t q = home_of(s, layer, e);
	struct slot *sl = lookup(s, layer, e, q);

	if (sl) {
		sl->hint = ++s->tick;
		return;
	}
	sl = take_slot(s, q, s->layer_cls[layer], true);
	if (!sl) {
		s->st.prefetch_dropped++;
		return;
	}
	s->st.prefetch_issued++;
	claim(s, sl, layer, e, true);
}

void moe_store_prefetch(struct moe_store *s, uint32_t layer,
			const uint32_t *ids, uint32_t n)
{
	if (check_id(s, layer, 0, NULL))
		return;
	pthread_mutex_lock(&s->mu);
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] < s->m->layers[layer].n_expert)
			prefetch_one(s, layer, ids[i]);
	pthread_mutex_unlock(&s->mu);
}

/* ---- following the plan ---- */

/* Slot sl of pool q no longer belongs there: it goes as let_go says. */
static uint32_t unplace(struct moe_store *s, struct slot *sl)
{
	if (sl->stale)
		return 0;
	sl->stale = true;
	let_go(s, sl);
	return 1;
}

static uint32_t replan_expert(struct moe_store *s, uint32_t layer,
			      uint32_t e)
{
	uint32_t n = 0;

	for (uint32_t q = 0; q < s->n_pools; q++) {
		struct slot *sl = lookup(s, layer, e, q);

		if (!sl)
			continue;
		if (moe_plan_holds(s->o.plan, layer, e, s->pools[q].node))
			sl->stale = false; /* held here again: kept */
		else
			n += unplace(s, sl);
	}
	settle_home(s, layer, e);
	return n;
}

uint32_t moe_store_replan(struct moe_store *s)
{
	uint32_t n = 0;

	if (s->n_pools < 2)
		return 0;
	pthread_mutex_lock(&s->mu);
	follow_owners(s);
	for (uint32_t l = 0; l < s->m->n_layer; l++)
		for (uint32_t e = 0; e < s->o.plan->layers[l].n_expert; e++)
			n += replan_expert(s, l, e);
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* ---- counters ---- */

/* Busy: referenced, being read, or failed with waiters to tell. */
static bool busy(const struct slot *sl)
{
	return sl->state != S_FREE && (sl->refs || sl->state != S_RESIDENT);
}

/* A resident copy outside the owner's pool, not on its way out. */
static bool replica(const struct moe_store *s, const struct slot *sl)
{
	return sl->state == S_RESIDENT && !sl->stale &&
	       sl->pool != home_of(s, sl->layer, sl->expert);
}

void moe_store_stats(struct moe_store *s, struct moe_store_stats *st)
{
	struct moe_io_stats io;
	uint32_t n_busy = 0, n_rep = 0, n_pending = 0;

	moe_io_stats(s->io, &io);
	pthread_mutex_lock(&s->mu);
	*st = s->st;
	for (uint32_t i = 0; i < s->n_slots; i++) {
		n_busy += busy(&s->slots[i]);
		n_pending += s->slots[i].state == S_PENDING;
		n_rep += replica(s, &s->slots[i]);
	}
	st->resident_bytes = s->resident_bytes;
	st->resident_experts = s->resident;
	st->budget_bytes = s->o.cache_bytes;
	for (uint32_t i = 0; i < s->n_pools * s->n_cls; i++)
		st->slots += s->pc[i].n_live;
	pthread_mutex_unlock(&s->mu);
	st->slots_busy = n_busy;
	st->reads_pending = n_pending;
	st->replicas = n_rep;
	st->pools = s->n_pools;
	st->slot_classes = s->n_cls;
	for (uint32_t c = 0; c < s->n_cls; c++)
		if (s->cls[c].bytes > st->slot_bytes)
			st->slot_bytes = s->cls[c].bytes;
	st->read_seconds = io.busy_seconds;
	st->io_mode = io.mode;
	st->direct = io.direct;
	st->fixed_buffers = io.fixed_buffers;
	st->io_pinned = io.pinned;
}

/* ---- the budget, live ---- */

/* Pool class i keeps its share of the slabs at a budget of `bytes`, at
 * least its minimum. */
static uint32_t live_slots(const struct moe_store *s, uint32_t i,
			   uint64_t bytes)
{
	const struct pool_class *pc = &s->pc[i];
	uint32_t least = s->cls[i % s->n_cls].min_slots;
	uint64_t n = (uint64_t)((unsigned __int128)pc->n_slots * bytes /
				s->slab_budget);

	if (n < least)
		n = least < pc->n_slots ? least : pc->n_slots;
	return (uint32_t)n;
}

/* A budget the slabs hold, that the slots left in use still fit. */
static int check_budget(const struct moe_store *s, uint64_t bytes,
			struct moe_msg *err)
{
	uint64_t sum = 0;

	if (bytes > s->slab_budget)
		return moe_msgf(err, -ERANGE,
				"cache budget of %.1f MiB is more than the %.1f MiB the cache's slabs were made for at start: a restart can grow it",
				bytes / 1048576.0, s->slab_budget / 1048576.0);
	for (uint32_t i = 0; i < s->n_pools * s->n_cls; i++)
		sum += live_slots(s, i, bytes) * s->cls[i % s->n_cls].bytes;
	if (sum > bytes)
		return moe_msgf(err, -ERANGE,
				"cache budget of %.1f MiB is less than the %.1f MiB its slots need at the least (the largest top-k plus %u spare, per slot size and node)",
				bytes / 1048576.0, sum / 1048576.0, SLACK);
	return 0;
}

/* s->mu held. The free list again, of the live free slots; the newly
 * parked ones are let go. */
static void repark(struct moe_store *s, struct pool_class *pc)
{
	pc->free_head = NO_SLOT;
	for (uint32_t i = pc->first + pc->n_slots; i-- > pc->first;) {
		struct slot *sl = &s->slots[i];

		if (parked(s, sl)) {
			let_go(s, sl);
		} else if (sl->state == S_FREE) {
			sl->next_free = pc->free_head;
			pc->free_head = i;
		}
	}
}

int moe_store_set_budget(struct moe_store *s, uint64_t bytes,
			 struct moe_msg *err)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = check_budget(s, bytes, err);
	for (uint32_t i = 0; !rc && i < s->n_pools * s->n_cls; i++) {
		s->pc[i].n_live = live_slots(s, i, bytes);
		repark(s, &s->pc[i]);
	}
	if (!rc)
		s->o.cache_bytes = bytes;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void moe_store_set_policy(struct moe_store *s, enum moe_policy p)
{
	pthread_mutex_lock(&s->mu);
	s->o.policy = p;
	pthread_mutex_unlock(&s->mu);
}

int moe_policy_by_name(const char *name)
{
	static const char *const names[] = { "lru", "lfu", "predict" };
	static const enum moe_policy p[] = { MOE_POLICY_LRU, MOE_POLICY_LFU,
					     MOE_POLICY_PREDICT };

	for (int i = 0; i < 3; i++)
		if (strcmp(name, names[i]) == 0)
			return (int)p[i];
	return -EINVAL;
}

static void count_pool(struct moe_store *s, uint32_t q, uint32_t c,
		       struct moe_store_pool *st)
{
	const struct pool_class *pc = pool_class(s, q, c);

	st->slots += pc->n_live;
	for (uint32_t i = pc->first; i < pc->first + pc->n_slots; i++) {
		const struct slot *sl = &s->slots[i];

		st->free_slots += sl->state == S_FREE;
		st->resident += sl->state == S_RESIDENT;
		st->replicas += replica(s, sl);
		st->busy += busy(sl);
	}
}

int moe_store_pool(struct moe_store *s, uint32_t q, struct moe_store_pool *st)
{
	const struct pool *pl;

	if (q >= s->n_pools)
		return -EINVAL;
	pl = &s->pools[q];
	*st = (struct moe_store_pool){ .node = pl->node, .os_node = pl->os_node,
				       .share = pl->share,
				       .slab_bytes = pl->slab_bytes };
	pthread_mutex_lock(&s->mu);
	for (uint32_t c = 0; c < s->n_cls; c++)
		count_pool(s, q, c, st);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

/* ---- the engine's source ---- */

static int src_acquire(void *ctx, uint32_t layer, uint32_t e,
		       struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	int rc = moe_store_want(ctx, layer, e, p, err);

	if (rc == 0)
		rc = moe_store_wait(ctx, layer, e, p, err);
	else if (rc > 0)
		return 1; /* resident: a hit */
	return rc; /* 0: read on demand, a miss */
}

static int src_want(void *ctx, uint32_t layer, uint32_t e,
		    struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_want(ctx, layer, e, p, err);
}

static int src_wait(void *ctx, uint32_t layer, uint32_t e,
		    struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_wait(ctx, layer, e, p, err);
}

static void src_release(void *ctx, uint32_t layer, uint32_t e)
{
	moe_store_release(ctx, layer, e);
}

static int src_want_on(void *ctx, uint32_t layer, uint32_t e, uint32_t node,
		       struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_want_on(ctx, layer, e, node, p, err);
}

static int src_wait_on(void *ctx, uint32_t layer, uint32_t e, uint32_t node,
		       struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	return moe_store_wait_on(ctx, layer, e, node, p, err);
}

static void src_release_on(void *ctx, uint32_t layer, uint32_t e,
			   uint32_t node)
{
	moe_store_release_on(ctx, layer, e, node);
}

static void src_prefetch(void *ctx, uint32_t layer, const uint32_t *ids,
			 uint32_t n)
{
	moe_store_prefetch(ctx, layer, ids, n);
}

/* Node-aware only with pools per node: with one pool every node would
 * take a second reference on the one slot. */
void moe_store_source(struct moe_store *s, struct moe_expert_src *src)
{
	bool placed = s->n_pools > 1;

	*src = (struct moe_expert_src){
		.acquire = src_acquire,
		.want = src_want,
		.wait = src_wait,
		.release = src_release,
		.want_on = placed ? src_want_on : NULL,
		.wait_on = placed ? src_wait_on : NULL,
		.release_on = placed ? src_release_on : NULL,
		.prefetch = src_prefetch,
		.ctx = s,
	};
}

/* ---- test hooks ---- */

static bool resident_in(struct moe_store *s, uint32_t layer, uint32_t e,
			uint32_t node)
{
	struct slot *sl = NULL;
	uint32_t q;
	bool yes;

	if (check_id(s, layer, e, NULL))
		return false;
	pthread_mutex_lock(&s->mu);
	if (pool_of(s, layer, e, node, &q, NULL) == 0)
		sl = lookup(s, layer, e, q);
	yes = sl && sl->state == S_RESIDENT;
	pthread_mutex_unlock(&s->mu);
	return yes;
}

bool moe_store_resident(struct moe_store *s, uint32_t layer, uint32_t e)
{
	return resident_in(s, layer, e, MOE_STORE_OWNER);
}

bool moe_store_resident_on(struct moe_store *s, uint32_t layer, uint32_t e,
			   uint32_t node)
{
	return resident_in(s, layer, e, node);
}

/* The middle byte of the gate matrix: no neighbour's aligned read can
 * reach it while a matrix spans more than two blocks. */
int moe_store_inject_fault(struct moe_store *s, uint32_t layer, uint32_t e,
			   uint32_t n, int err)
{
	const struct moe_mat *g;

	if (check_id(s, layer, e, NULL))
		return -EINVAL;
	g = &s->m->layers[layer].experts[e].gate;
	moe_io_inject(s->io, g->off + g->size / 2, 1, n, err);
	return 0;
}

void moe_store_pause_io(struct moe_store *s, bool paused)
{
	moe_io_pause(s->io, paused);
}

uint64_t moe_store_read_seq(struct moe_store *s, uint32_t layer, uint32_t e)
{
	struct slot *sl;
	uint64_t seq = 0;

	if (check_id(s, layer, e, NULL))
		return 0;
	pthread_mutex_lock(&s->mu);
	sl = lookup(s, layer, e, home_of(s, layer, e));
	if (sl && sl->state == S_RESIDENT)
		seq = sl->req.seq;
	pthread_mutex_unlock(&s->mu);
	return seq;
}

/* Slabs never change after open: no lock needed. */
int moe_store_pool_of(struct moe_store *s, const void *p)
{
	const uint8_t *b = p;

	for (uint32_t i = 0; i < s->n_slabs; i++) {
		const struct slab *sb = &s->slabs[i];

		if (b >= sb->mem && b < sb->mem + sb->bytes)
			return (int)sb->pool;
	}
	return -1;
}

int moe_store_io_affinity(struct moe_store *s, cpu_set_t *cpus)
{
	return moe_io_affinity(s->io, cpus);
}
