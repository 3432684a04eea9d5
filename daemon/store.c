/* The expert store: which experts are resident and in which slot, who
 * holds them, which one to evict, reads started through the io engine.
 * One mutex guards the index and every slot; a read's completion wakes
 * its slot's condvar. A miss costs a multi-MiB read, so the linear scans
 * over a class's slots (a few thousand at most) are cheap beside it. */
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

#define SLACK 2               /* slots beyond the largest top-k */
#define SLAB_MAX (1ull << 30) /* io_uring's limit for one fixed buffer */
#define NO_SLOT UINT32_MAX

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
	uint32_t cls, slab, next_free;
	uint8_t state;
	bool prefetched;         /* read by a prefetch, not wanted since */
};

/* Slots of one size. Layers whose slots have the same size share one. */
struct slot_class {
	uint64_t bytes;     /* one slot: the three ranges block-aligned */
	uint64_t share;     /* the model's expert bytes in its layers */
	uint32_t min_slots; /* largest top-k of its layers plus SLACK */
	uint32_t n_experts; /* more slots than this would stay empty */
	uint32_t first, n_slots;
	uint32_t free_head;
};

struct slab {
	uint8_t *mem;
	uint64_t bytes;
};

struct moe_store {
	pthread_mutex_t mu;       /* everything below that changes */
	const struct moe_model *m;
	struct moe_store_opts o;
	struct moe_io *io;
	uint32_t blk;
	bool fixed;               /* slot reads use READ_FIXED */
	struct slot_class *cls;
	uint32_t n_cls;
	uint32_t *layer_cls;      /* per layer */
	uint32_t *idx_base;       /* per layer: first entry in idx */
	uint32_t *idx;            /* slot of (layer, expert), or NO_SLOT */
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

/* Each class gets its minimum, then the rest of the budget in proportion
 * to its share of the model's expert bytes: the steady state when every
 * expert is as likely as any other. A fixed split, simpler than moving
 * slabs between classes; most models have one class anyway. */
static int size_classes(struct moe_store *s, struct moe_msg *err)
{
	uint64_t budget = s->o.cache_bytes, need, left, total = 0;

	if (s->n_cls > 1 && min_bytes(s) > budget)
		merge_classes(s);
	need = min_bytes(s);
	if (need > budget)
		return moe_msgf(err, -MOE_ENOSPACE,
				"cache budget of %" PRIu64 " bytes cannot hold %u slots of %" PRIu64 " bytes (the largest layer's top-k plus %u spare): at least %" PRIu64 " bytes are needed",
				budget, s->cls[0].min_slots, s->cls[0].bytes,
				SLACK, need);
	left = budget - need;
	for (uint32_t c = 0; c < s->n_cls; c++)
		total += s->cls[c].share;
	for (uint32_t c = 0; c < s->n_cls; c++) {
		struct slot_class *k = &s->cls[c];
		uint64_t extra = (uint64_t)((double)left * (double)k->share /
					    (double)total) / k->bytes;
		uint64_t n = k->min_slots + extra;

		k->n_slots = n < k->n_experts ? (uint32_t)n : k->n_experts;
		k->first = s->n_slots;
		k->free_head = NO_SLOT;
		s->n_slots += k->n_slots;
	}
	return 0;
}

static int map_slab(struct slab *sb, uint64_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	/* Kernels walk whole experts: huge pages spare the TLB. Fault the
	 * slab in now, on the opening thread's node, so that neither the
	 * first reads nor an out-of-memory come later. Both are hints. */
	madvise(p, bytes, MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
	madvise(p, bytes, MADV_POPULATE_WRITE);
#endif
	sb->mem = p;
	sb->bytes = bytes;
	return 0;
}

static uint32_t slots_per_slab(const struct slot_class *k)
{
	uint64_t n = SLAB_MAX / k->bytes;

	return n ? (n < k->n_slots ? (uint32_t)n : k->n_slots) : 1;
}

static void init_slot(struct moe_store *s, uint32_t i, uint32_t c,
		      uint32_t slab, uint8_t *mem)
{
	struct slot *sl = &s->slots[i];

	pthread_cond_init(&sl->cv, NULL);
	sl->s = s;
	sl->cls = c;
	sl->slab = slab;
	sl->mem = mem;
	sl->state = S_FREE;
	sl->next_free = s->cls[c].free_head;
	s->cls[c].free_head = i;
}

static int alloc_class(struct moe_store *s, uint32_t c)
{
	const struct slot_class *k = &s->cls[c];
	uint32_t per = slots_per_slab(k);

	for (uint32_t i = 0; i < k->n_slots; i += per) {
		uint32_t n = k->n_slots - i < per ? k->n_slots - i : per;
		struct slab *sb = &s->slabs[s->n_slabs];
		int rc = map_slab(sb, n * k->bytes);

		if (rc)
			return rc;
		for (uint32_t j = 0; j < n; j++)
			init_slot(s, k->first + i + j, c, s->n_slabs,
				  sb->mem + j * k->bytes);
		s->st.slab_bytes += sb->bytes;
		s->n_slabs++;
	}
	return 0;
}

static int alloc_slabs(struct moe_store *s, struct moe_msg *err)
{
	uint32_t n = 0;
	int rc;

	for (uint32_t c = 0; c < s->n_cls; c++) {
		uint32_t per = slots_per_slab(&s->cls[c]);

		n += (s->cls[c].n_slots + per - 1) / per;
	}
	s->slabs = calloc(n, sizeof(*s->slabs));
	s->slots = calloc(s->n_slots, sizeof(*s->slots));
	if (!s->slabs || !s->slots)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t c = 0; c < s->n_cls; c++) {
		rc = alloc_class(s, c);
		if (rc)
			return moe_msgf(err, rc,
					"cannot map %" PRIu64 " bytes of slabs: %s",
					s->o.cache_bytes, moe_strerror(rc));
	}
	return 0;
}

static int alloc_index(struct moe_store *s, struct moe_msg *err)
{
	const struct moe_model *m = s->m;
	uint32_t n = 0;

	s->layer_cls = calloc(m->n_layer, sizeof(*s->layer_cls));
	s->idx_base = calloc(m->n_layer, sizeof(*s->idx_base));
	s->cls = calloc(m->n_layer, sizeof(*s->cls));
	if (!s->layer_cls || !s->idx_base || !s->cls)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t l = 0; l < m->n_layer; l++) {
		s->idx_base[l] = n;
		if (m->layers[l].moe)
			n += m->layers[l].n_expert;
	}
	s->idx = malloc((n ? n : 1) * sizeof(*s->idx));
	if (!s->idx)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++)
		s->idx[i] = NO_SLOT;
	return 0;
}

/* ---- open and close ---- */

static int open_io(struct moe_store *s, struct moe_msg *err)
{
	struct moe_io_opts io = {
		.force_pread = s->o.io == MOE_IO_PREAD,
		.require_uring = s->o.io == MOE_IO_URING,
		.buffered = s->o.buffered,
		.sqpoll = s->o.sqpoll,
		.queue_depth = s->o.queue_depth,
		.chunk_bytes = s->o.chunk_bytes,
		.threads = s->o.io_threads,
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
	rc = open_io(s, err);
	if (!rc)
		rc = alloc_index(s, err);
	if (!rc) {
		plan_classes(s);
		rc = size_classes(s, err);
	}
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
		munmap(s->slabs[i].mem, s->slabs[i].bytes);
	free(s->slabs);
	free(s->slots);
	free(s->idx);
	free(s->idx_base);
	free(s->cls);
	free(s->layer_cls);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* ---- the index and eviction (s->mu held) ---- */

static uint32_t *idx_of(struct moe_store *s, uint32_t layer, uint32_t e)
{
	return &s->idx[s->idx_base[layer] + e];
}

static struct slot *lookup(struct moe_store *s, uint32_t layer, uint32_t e)
{
	uint32_t i = *idx_of(s, layer, e);

	return i == NO_SLOT ? NULL : &s->slots[i];
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

static struct slot *victim(struct moe_store *s, uint32_t c, bool prefetch)
{
	const struct slot_class *k = &s->cls[c];
	struct slot *best = NULL;

	for (uint32_t i = k->first; i < k->first + k->n_slots; i++) {
		struct slot *sl = &s->slots[i];

		if (evictable(s, sl, prefetch) && (!best || before(s, sl, best)))
			best = sl;
	}
	return best;
}

static void evict(struct moe_store *s, struct slot *sl)
{
	*idx_of(s, sl->layer, sl->expert) = NO_SLOT;
	s->st.evictions++;
	if (sl->prefetched)
		s->st.prefetch_wasted++;
	s->resident--;
	s->resident_bytes -= s->cls[sl->cls].bytes;
	sl->state = S_FREE;
}

static void free_slot(struct moe_store *s, struct slot *sl)
{
	struct slot_class *k = &s->cls[sl->cls];

	*idx_of(s, sl->layer, sl->expert) = NO_SLOT;
	sl->state = S_FREE;
	sl->prefetched = false;
	sl->next_free = k->free_head;
	k->free_head = (uint32_t)(sl - s->slots);
}

static struct slot *take_slot(struct moe_store *s, uint32_t c, bool prefetch)
{
	struct slot_class *k = &s->cls[c];
	struct slot *sl;

	if (k->free_head != NO_SLOT) {
		sl = &s->slots[k->free_head];
		k->free_head = sl->next_free;
		return sl;
	}
	sl = victim(s, c, prefetch);
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
	sl->prefetched = prefetch;
	sl->freq = 0;
	sl->hint = 0;
	touch(s, sl);
	*idx_of(s, layer, e) = (uint32_t)(sl - s->slots);
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

static int join(struct moe_store *s, struct slot *sl, struct moe_ffn_ptrs *p)
{
	sl->refs++;
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

static struct slot *pending_prefetch(struct moe_store *s, uint32_t c)
{
	const struct slot_class *k = &s->cls[c];

	for (uint32_t i = k->first; i < k->first + k->n_slots; i++) {
		struct slot *sl = &s->slots[i];

		if (sl->state == S_PENDING && sl->prefetched && !sl->refs)
			return sl;
	}
	return NULL;
}

/* No slot to evict for a demand read: take one back from a prefetch. A
 * queued one is cancelled; else wait for one in flight, a bounded wait
 * since only its read holds it. False if no prefetch holds a slot. */
static bool reclaim_prefetch(struct moe_store *s, uint32_t c)
{
	struct slot *sl = pending_prefetch(s, c);

	if (!sl)
		return false;
	if (moe_io_cancel(s->io, &sl->req)) {
		s->st.prefetch_wasted++;
		free_slot(s, sl);
		return true;
	}
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
		       struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	uint32_t c = s->layer_cls[layer];

	for (;;) {
		struct slot *sl = lookup(s, layer, e);

		if (sl)
			return join(s, sl, p);
		sl = take_slot(s, c, false);
		if (sl) {
			s->st.misses++;
			claim(s, sl, layer, e, false);
			return 0;
		}
		if (!reclaim_prefetch(s, c))
			return moe_msgf(err, -MOE_ENOSPACE,
					"layer %u expert %u: all %u slots of %" PRIu64 " bytes are in use or being read",
					layer, e, s->cls[c].n_slots,
					s->cls[c].bytes);
	}
}

int moe_store_want(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	int rc = check_id(s, layer, e, err);

	if (rc)
		return rc;
	pthread_mutex_lock(&s->mu);
	rc = want_locked(s, layer, e, p, err);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static void drop_ref(struct moe_store *s, struct slot *sl)
{
	if (--sl->refs == 0 && sl->state == S_FAILED)
		free_slot(s, sl);
}

int moe_store_wait(struct moe_store *s, uint32_t layer, uint32_t e,
		   struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	struct slot *sl;
	int rc = check_id(s, layer, e, err);

	if (rc)
		return rc;
	pthread_mutex_lock(&s->mu);
	sl = lookup(s, layer, e);
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
		drop_ref(s, sl);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void moe_store_release(struct moe_store *s, uint32_t layer, uint32_t e)
{
	struct slot *sl;

	if (check_id(s, layer, e, NULL))
		return;
	pthread_mutex_lock(&s->mu);
	sl = lookup(s, layer, e);
	if (sl && sl->refs)
		drop_ref(s, sl);
	pthread_mutex_unlock(&s->mu);
}

static void prefetch_one(struct moe_store *s, uint32_t layer, uint32_t e)
{
	struct slot *sl = lookup(s, layer, e);

	if (sl) {
		sl->hint = ++s->tick;
		return;
	}
	sl = take_slot(s, s->layer_cls[layer], true);
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

void moe_store_stats(struct moe_store *s, struct moe_store_stats *st)
{
	struct moe_io_stats io;
	uint32_t busy = 0;

	moe_io_stats(s->io, &io);
	pthread_mutex_lock(&s->mu);
	*st = s->st;
	for (uint32_t i = 0; i < s->n_slots; i++)
		busy += s->slots[i].state != S_FREE &&
			(s->slots[i].refs || s->slots[i].state != S_RESIDENT);
	st->resident_bytes = s->resident_bytes;
	st->resident_experts = s->resident;
	pthread_mutex_unlock(&s->mu);
	st->slots_busy = busy;
	st->budget_bytes = s->o.cache_bytes;
	st->slots = s->n_slots;
	st->slot_classes = s->n_cls;
	for (uint32_t c = 0; c < s->n_cls; c++)
		if (s->cls[c].bytes > st->slot_bytes)
			st->slot_bytes = s->cls[c].bytes;
	st->read_seconds = io.busy_seconds;
	st->io_mode = io.mode;
	st->direct = io.direct;
	st->fixed_buffers = io.fixed_buffers;
}

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

static void src_prefetch(void *ctx, uint32_t layer, const uint32_t *ids,
			 uint32_t n)
{
	moe_store_prefetch(ctx, layer, ids, n);
}

void moe_store_source(struct moe_store *s, struct moe_expert_src *src)
{
	*src = (struct moe_expert_src){
		.acquire = src_acquire,
		.want = src_want,
		.wait = src_wait,
		.release = src_release,
		.prefetch = src_prefetch,
		.ctx = s,
	};
}

/* ---- test hooks ---- */

bool moe_store_resident(struct moe_store *s, uint32_t layer, uint32_t e)
{
	struct slot *sl;
	bool yes;

	if (check_id(s, layer, e, NULL))
		return false;
	pthread_mutex_lock(&s->mu);
	sl = lookup(s, layer, e);
	yes = sl && sl->state == S_RESIDENT;
	pthread_mutex_unlock(&s->mu);
	return yes;
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
	sl = lookup(s, layer, e);
	if (sl && sl->state == S_RESIDENT)
		seq = sl->req.seq;
	pthread_mutex_unlock(&s->mu);
	return seq;
}
