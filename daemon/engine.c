/* The MoE layer engine. A pass over a batch: count tokens per expert,
 * gather each expert's inputs, run gate/up then down as row-range tasks
 * on the pool, then sum every token's experts in ascending expert order.
 * Task boundaries are fixed by the shapes, never by the thread count. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include <moe/moeclient.h>

#include "engine.h"
#include "plan.h"
#include "pool.h"
#include "quant.h"
#include "topo.h"

#define TASK_ROWS 128  /* rows of one matrix per task */
#define ROUTE_TASK 16  /* tokens per routing or reduction task */
#define NO_COPY UINT32_MAX

struct pinned_layer {
	const void *router;
	const float *bias;
	struct moe_ffn_ptrs shared;
	const void *shared_gate;
};

/* One expert's share of a pass: its tokens and where their rows live. */
struct unit {
	const struct moe_ffn_mats *mats;
	struct moe_ffn_ptrs w;
	struct moe_ffn_batch b;
	uint32_t expert; /* UINT32_MAX: the shared experts */
	uint32_t node;   /* the owner's, named to a placing source; else
			  * MOE_POOL_ANY */
	uint32_t first_copy, n_copies; /* in pass.copies */
	bool acquired;   /* ours to release */
	bool pending;    /* wanted, its read not yet waited for */
};

/* A copy of a unit's expert in another node's memory: that node's
 * workers compute their rows from it. */
struct copy {
	struct moe_ffn_ptrs w;
	uint32_t node;
	bool acquired, pending;
};

struct task {
	uint32_t unit;
	uint32_t r0, r1;
	uint32_t copy; /* the rows come from this copy; NO_COPY: the unit's */
};

/* The rows of a pass that one node's workers compute: the gathered
 * inputs, hidden activations and outputs of the experts the node owns,
 * in memory of that node (its jemalloc arena), grown on demand. */
struct node_rows {
	float *xg, *h, *out;
	size_t cap_xg, cap_h, cap_out;
	uint32_t rows;  /* this pass's */
	int os_node;    /* where the buffers live; -1: anywhere */
};

/* Buffers of one pass, kept between calls. An expert's rows sit in its
 * owner node's buffers (one buffer set without a plan), grouped by
 * expert in ascending id and by token within an expert; the shared
 * experts' nt rows follow the routed ones of the first set. */
struct pass {
	uint32_t *count;  /* tokens per expert */
	uint32_t *base;   /* first row of each expert, in its set */
	uint32_t *set_of; /* the row set of each expert */
	uint32_t *row_of; /* [t * MOE_MAX_K + i]: row of token t's i-th pick */
	struct node_rows *sets;
	uint32_t n_sets;
	struct unit *units;
	struct copy *copies;
	struct task *tasks;
	uint32_t *task_node; /* node whose workers run each task */
	float *sgate;
	size_t n_tasks, n_copies;
	size_t cap_count, cap_base, cap_set_of, cap_row_of, cap_units;
	size_t cap_tasks, cap_node, cap_copies, cap_sgate;
};

struct moe_engine {
	const struct moe_model *m;
	struct moe_expert_src src;
	struct moe_engine_opts o;
	uint8_t missed[MOE_MAX_EXPERTS]; /* of the last apply */
	uint32_t *predicted;             /* prefetch_next's ids */
	bool prefetch;                   /* apply hints the next layer */
	struct moe_pool *pool;
	struct pinned_layer *pl;
	uint8_t *pinned;
	uint64_t pinned_bytes;
	float **scratch;       /* per worker: FFN tiles */
	float **route_scratch; /* per worker: router logits */
	struct pass ps;
};

static int pread_all(int fd, void *buf, uint64_t len, uint64_t off,
		     const char *path, struct moe_msg *err)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = pread(fd, p, len, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return moe_msgf(err, -errno, "%s: read at byte %" PRIu64 ": %s",
					path, off, moe_strerror(-errno));
		if (r == 0)
			return moe_msgf(err, -MOE_EFORMAT,
					"%s: file ends before byte %" PRIu64,
					path, off + len);
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
	return 0;
}

static int pin_mat(struct moe_engine *e, const struct moe_mat *m,
		   uint64_t *at, const void **out, struct moe_msg *err)
{
	const struct gguf_file *g = e->m->gguf;
	int rc;

	rc = pread_all(gguf_fd(g), e->pinned + *at, m->size, m->off,
		       gguf_path(g), err);
	*out = e->pinned + *at;
	*at += (m->size + 63) & ~63ull;
	return rc;
}

static int pin_layer(struct moe_engine *e, const struct moe_layer *L,
		     struct pinned_layer *p, uint64_t *at, struct moe_msg *err)
{
	const void *bias = NULL;
	int rc;

	rc = pin_mat(e, &L->router, at, &p->router, err);
	if (!rc && L->has_bias)
		rc = pin_mat(e, &L->bias, at, &bias, err);
	p->bias = bias;
	if (!rc && L->has_shared)
		rc = pin_mat(e, &L->shared.gate, at, &p->shared.gate, err);
	if (!rc && L->has_shared)
		rc = pin_mat(e, &L->shared.up, at, &p->shared.up, err);
	if (!rc && L->has_shared)
		rc = pin_mat(e, &L->shared.down, at, &p->shared.down, err);
	if (!rc && L->has_shared_gate)
		rc = pin_mat(e, &L->shared_gate, at, &p->shared_gate, err);
	return rc;
}

static int pin_all(struct moe_engine *e, struct moe_msg *err)
{
	const struct moe_model *m = e->m;
	uint64_t at = 0;
	int rc;

	e->pinned_bytes = moe_model_pinned_bytes(m);
	e->pl = calloc(m->n_layer, sizeof(*e->pl));
	e->pinned = aligned_alloc(64, e->pinned_bytes ? e->pinned_bytes : 64);
	if (!e->pl || !e->pinned)
		return moe_msgf(err, -ENOMEM,
				"out of memory pinning %" PRIu64 " bytes of routers and shared experts",
				e->pinned_bytes);
	for (uint32_t i = 0; i < m->n_layer; i++) {
		if (!m->layers[i].moe)
			continue;
		rc = pin_layer(e, &m->layers[i], &e->pl[i], &at, err);
		if (rc)
			return rc;
	}
	/* Weights are scaled ahead of use: a bias that is not finite would
	 * poison every token's selection. */
	for (uint32_t i = 0; i < m->n_layer; i++)
		for (uint32_t x = 0; e->pl[i].bias && x < m->layers[i].n_expert;
		     x++)
			if (!isfinite(e->pl[i].bias[x]))
				return moe_msgf(err, -MOE_EFORMAT,
						"%s: blk.%u.exp_probs_b.bias[%u] is not finite",
						gguf_path(m->gguf), i, x);
	return 0;
}

/* The OS node whose memory worker w's scratch should live on; -1 when
 * there is no plan or it is not for this machine. */
static int worker_os_node(const struct moe_engine *e, uint32_t w)
{
	const struct moe_plan *p = e->o.plan;

	if (!p || !p->bind)
		return -1;
	return (int)p->nodes[p->workers[w].node].os_index;
}

static int start_pool(struct moe_engine *e, struct moe_msg *err)
{
	struct moe_pool_pin *pins;
	int rc;

	if (!e->o.plan) {
		rc = moe_pool_new(&e->pool, e->o.threads);
		goto out;
	}
	e->o.threads = e->o.plan->n_workers;
	pins = calloc(e->o.threads, sizeof(*pins));
	if (!pins)
		return moe_msgf(err, -ENOMEM, "out of memory");
	moe_plan_pins(e->o.plan, pins);
	rc = moe_pool_new_pinned(&e->pool, e->o.threads, pins);
	free(pins);
out:
	if (rc)
		moe_msgf(err, rc, "cannot start %u workers: %s", e->o.threads,
			 moe_strerror(rc));
	return rc;
}

static int alloc_workers(struct moe_engine *e, struct moe_msg *err)
{
	const struct moe_model *m = e->m;
	uint32_t w = moe_pool_workers(e->pool);
	uint32_t cols = m->n_embd > m->max_ff ? m->n_embd : m->max_ff;
	size_t ffn = moe_ffn_scratch(cols, e->o.max_batch);
	size_t route = (size_t)ROUTE_TASK * m->max_expert + 2 * m->max_expert;

	e->scratch = calloc(w, sizeof(*e->scratch));
	e->route_scratch = calloc(w, sizeof(*e->route_scratch));
	if (!e->scratch || !e->route_scratch)
		goto oom;
	for (uint32_t i = 0; i < w; i++) {
		int node = worker_os_node(e, i);

		if (moe_topo_scratch_alloc((void **)&e->scratch[i],
					   ffn * sizeof(float), node) ||
		    moe_topo_scratch_alloc((void **)&e->route_scratch[i],
					   route * sizeof(float), node))
			goto oom;
	}
	return 0;
oom:
	return moe_msgf(err, -ENOMEM, "out of memory for worker scratch");
}

/* One row set per plan node, placed on that node when the plan is this
 * machine's. */
static int alloc_row_sets(struct moe_engine *e, struct moe_msg *err)
{
	const struct moe_plan *p = e->o.plan;
	struct pass *ps = &e->ps;

	ps->n_sets = p ? p->n_nodes : 1;
	ps->sets = calloc(ps->n_sets, sizeof(*ps->sets));
	if (!ps->sets)
		return moe_msgf(err, -ENOMEM, "out of memory");
	for (uint32_t n = 0; n < ps->n_sets; n++)
		ps->sets[n].os_node = p && p->bind ? (int)p->nodes[n].os_index :
						     -1;
	return 0;
}

int moe_engine_new(struct moe_engine **out, const struct moe_model *m,
		   const struct moe_expert_src *src,
		   const struct moe_engine_opts *o, struct moe_msg *err)
{
	struct moe_engine *e;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int rc;

	e = calloc(1, sizeof(*e));
	if (!e)
		return moe_msgf(err, -ENOMEM, "out of memory");
	e->m = m;
	e->src = *src;
	if (o)
		e->o = *o;
	if (!e->o.threads)
		e->o.threads = ncpu > 0 ? (uint32_t)ncpu : 1;
	if (!e->o.blas_min)
		e->o.blas_min = 32;
	if (!e->o.max_batch)
		e->o.max_batch = 256;
	/* The pool supplies the parallelism; OpenBLAS threads would fight
	 * it and make results depend on their count. */
	openblas_set_num_threads(1);
	rc = start_pool(e, err);
	if (!rc)
		rc = pin_all(e, err);
	if (!rc)
		rc = alloc_workers(e, err);
	if (!rc)
		rc = alloc_row_sets(e, err);
	if (rc)
		goto err;
	*out = e;
	return 0;
err:
	moe_engine_free(e);
	return rc;
}

static void free_pass(struct pass *ps)
{
	free(ps->count);
	free(ps->base);
	free(ps->set_of);
	free(ps->row_of);
	for (uint32_t n = 0; ps->sets && n < ps->n_sets; n++) {
		moe_topo_scratch_free(ps->sets[n].xg);
		moe_topo_scratch_free(ps->sets[n].h);
		moe_topo_scratch_free(ps->sets[n].out);
	}
	free(ps->sets);
	free(ps->units);
	free(ps->copies);
	free(ps->tasks);
	free(ps->task_node);
	free(ps->sgate);
}

void moe_engine_free(struct moe_engine *e)
{
	uint32_t w;

	if (!e)
		return;
	w = e->pool ? moe_pool_workers(e->pool) : 0;
	for (uint32_t i = 0; i < w; i++) {
		if (e->scratch)
			moe_topo_scratch_free(e->scratch[i]);
		if (e->route_scratch)
			moe_topo_scratch_free(e->route_scratch[i]);
	}
	free(e->scratch);
	free(e->route_scratch);
	moe_pool_free(e->pool);
	free_pass(&e->ps);
	free(e->pl);
	free(e->pinned);
	free(e->predicted);
	free(e);
}

uint64_t moe_engine_pinned_bytes(const struct moe_engine *e)
{
	return e->pinned_bytes;
}

uint32_t moe_engine_threads(const struct moe_engine *e)
{
	return moe_pool_workers(e->pool);
}

static int check_layer(const struct moe_engine *e, uint32_t layer,
		       struct moe_msg *err)
{
	if (layer >= e->m->n_layer)
		return moe_msgf(err, -EINVAL, "layer %u: model has %u layers",
				layer, e->m->n_layer);
	if (!e->m->layers[layer].moe)
		return moe_msgf(err, -EINVAL,
				"layer %u is a dense layer, not a MoE layer",
				layer);
	return 0;
}

static int check_input(const struct moe_engine *e, const float *x,
		       uint32_t nt, struct moe_msg *err)
{
	size_t n = (size_t)nt * e->m->n_embd;

	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return moe_msgf(err, -MOE_EINVAL_INPUT,
					"input token %zu, element %zu is not finite",
					i / e->m->n_embd, i % e->m->n_embd);
	return 0;
}

struct route_job {
	struct moe_engine *e;
	const struct moe_layer *L;
	const float *x;
	uint32_t nt;
	const struct moe_route_opts *o;
	struct moe_route *routes;
};

static void route_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct route_job *j = ctx;
	uint32_t t0 = task * ROUTE_TASK;
	uint32_t n = j->nt - t0 < ROUTE_TASK ? j->nt - t0 : ROUTE_TASK;
	const struct pinned_layer *p = &j->e->pl[j->L->index];

	moe_route_batch(j->L, p->router, p->bias,
			j->x + (size_t)t0 * j->e->m->n_embd, j->e->m->n_embd,
			n, j->o, j->routes + t0, j->e->route_scratch[worker]);
}

int moe_engine_route(struct moe_engine *e, uint32_t layer, const float *x,
		     uint32_t nt, const struct moe_route_opts *o,
		     struct moe_route *routes, struct moe_msg *err)
{
	struct route_job j = { e, NULL, x, nt, o, routes };
	int rc;

	rc = check_layer(e, layer, err);
	if (!rc && o)
		rc = moe_route_opts_check(&e->m->layers[layer], o, err);
	if (!rc)
		rc = check_input(e, x, nt, err);
	if (rc)
		return rc;
	j.L = &e->m->layers[layer];
	moe_pool_run(e->pool, (nt + ROUTE_TASK - 1) / ROUTE_TASK, route_task,
		     &j);
	return 0;
}

#define GROW(ptr, cap, need) \
	((need) <= (cap) ? 0 : grow((void **)&(ptr), &(cap), (need), sizeof(*(ptr))))

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	void *n = realloc(*p, need * elem);

	if (!n)
		return -ENOMEM;
	*p = n;
	*cap = need;
	return 0;
}

/* Size the pass's indexes for nt tokens of layer L. */
static int pass_reserve(struct pass *ps, const struct moe_layer *L,
			uint32_t nt)
{
	if (GROW(ps->count, ps->cap_count, L->n_expert) ||
	    GROW(ps->base, ps->cap_base, L->n_expert) ||
	    GROW(ps->set_of, ps->cap_set_of, L->n_expert) ||
	    GROW(ps->row_of, ps->cap_row_of, (size_t)nt * MOE_MAX_K) ||
	    GROW(ps->units, ps->cap_units, L->n_expert + 1) ||
	    GROW(ps->sgate, ps->cap_sgate, nt))
		return -ENOMEM;
	memset(ps->count, 0, L->n_expert * sizeof(*ps->count));
	for (uint32_t n = 0; n < ps->n_sets; n++)
		ps->sets[n].rows = 0;
	ps->n_tasks = 0;
	ps->n_copies = 0;
	return 0;
}

/* Contents need not survive: every row is written before it is read. */
static int grow_rows(float **p, size_t *cap, size_t need, int os_node)
{
	if (need <= *cap)
		return 0;
	moe_topo_scratch_free(*p);
	*p = NULL;
	*cap = 0;
	if (moe_topo_scratch_alloc((void **)p, need * sizeof(float), os_node))
		return -ENOMEM;
	*cap = need;
	return 0;
}

/* The copy node's rows are computed from: NO_COPY for the owner's. */
static uint32_t copy_on(const struct pass *ps, const struct unit *u,
			uint32_t node)
{
	for (uint32_t i = u->first_copy; i < u->first_copy + u->n_copies; i++)
		if (ps->copies[i].node == node && ps->copies[i].acquired)
			return i;
	return NO_COPY;
}

/* Tasks of TASK_ROWS rows; each runs on the node holding those rows,
 * from that node's copy where it has one. */
static int add_row_tasks(struct moe_engine *e, uint32_t layer, uint32_t unit,
			 uint32_t rows)
{
	struct pass *ps = &e->ps;
	uint32_t expert = ps->units[unit].expert;

	for (uint32_t r = 0; r < rows; r += TASK_ROWS) {
		uint32_t node = MOE_POOL_ANY;

		if (GROW(ps->tasks, ps->cap_tasks, ps->n_tasks + 1) ||
		    GROW(ps->task_node, ps->cap_node, ps->n_tasks + 1))
			return -ENOMEM;
		if (e->o.plan && expert != UINT32_MAX)
			node = moe_plan_node_of_rows(e->o.plan, layer, expert,
						     r, rows);
		ps->task_node[ps->n_tasks] = node;
		ps->tasks[ps->n_tasks++] = (struct task){
			unit, r, r + TASK_ROWS < rows ? r + TASK_ROWS : rows,
			copy_on(ps, &ps->units[unit], node)
		};
	}
	return 0;
}

struct apply_job {
	struct moe_engine *e;
	const struct moe_layer *L;
	const float *x;
	uint32_t nt;
	const struct moe_route *routes;
	float *y;
	uint32_t n_units;  /* the routed experts' first, then the shared */
	uint32_t n_routed;
	/* The whole call's input, for the next layer's prediction; NULL but
	 * in the call's last pass, or with prefetch off. */
	const float *hint_x;
	uint32_t hint_nt;
};

static const struct moe_ffn_ptrs *task_ptrs(const struct pass *ps,
					    const struct task *t)
{
	return t->copy == NO_COPY ? &ps->units[t->unit].w :
				    &ps->copies[t->copy].w;
}

static void gate_up_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct apply_job *j = ctx;
	const struct task *t = &j->e->ps.tasks[task];
	struct unit *u = &j->e->ps.units[t->unit];

	moe_ffn_gate_up(u->mats, task_ptrs(&j->e->ps, t), &u->b, t->r0, t->r1,
			j->e->scratch[worker]);
}

static void down_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct apply_job *j = ctx;
	const struct task *t = &j->e->ps.tasks[task];
	struct unit *u = &j->e->ps.units[t->unit];

	moe_ffn_down(u->mats, task_ptrs(&j->e->ps, t), &u->b, t->r0, t->r1,
		     j->e->scratch[worker]);
}

static void axpy(float *y, float a, const float *x, uint32_t n)
{
	for (uint32_t d = 0; d < n; d++)
		y[d] += a * x[d];
}

/* y_t = the sum over t's experts, in ascending expert id, of w * out;
 * then the shared experts' output times their gate. */
static void reduce_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct apply_job *j = ctx;
	const struct pass *ps = &j->e->ps;
	uint32_t n_embd = j->e->m->n_embd;
	uint32_t t0 = task * ROUTE_TASK;
	uint32_t t1 = j->nt - t0 < ROUTE_TASK ? j->nt : t0 + ROUTE_TASK;

	for (uint32_t t = t0; t < t1; t++) {
		const struct moe_route *r = &j->routes[t];
		const uint32_t *rows = ps->row_of + (size_t)t * MOE_MAX_K;
		float *y = j->y + (size_t)t * n_embd;
		uint32_t ord[MOE_MAX_K];

		for (uint32_t i = 0; i < r->k; i++) {
			uint32_t p = i;

			while (p > 0 && r->id[ord[p - 1]] > r->id[i]) {
				ord[p] = ord[p - 1];
				p--;
			}
			ord[p] = i;
		}
		memset(y, 0, n_embd * sizeof(*y));
		for (uint32_t i = 0; i < r->k; i++) {
			const struct node_rows *set =
				&ps->sets[ps->set_of[r->id[ord[i]]]];

			axpy(y, r->w[ord[i]],
			     set->out + (size_t)rows[ord[i]] * n_embd, n_embd);
		}
		if (j->L->has_shared)
			axpy(y, ps->sgate[t],
			     ps->sets[0].out +
				     ((size_t)ps->sets[0].rows + t) * n_embd,
			     n_embd);
	}
	(void)worker;
}

/* Each set's buffers for its rows; the first set's hidden and output
 * rows also for the shared experts' nt tokens. */
static int reserve_sets(struct apply_job *j)
{
	struct pass *ps = &j->e->ps;
	const struct moe_layer *L = j->L;
	size_t ff = L->n_ff > L->n_ff_shared ? L->n_ff : L->n_ff_shared;
	size_t n_embd = j->e->m->n_embd;

	for (uint32_t n = 0; n < ps->n_sets; n++) {
		struct node_rows *r = &ps->sets[n];
		size_t rows = r->rows + (n == 0 && L->has_shared ? j->nt : 0);

		if (r->rows && grow_rows(&r->xg, &r->cap_xg, r->rows * n_embd,
					 r->os_node))
			return -ENOMEM;
		if (rows && (grow_rows(&r->h, &r->cap_h, rows * ff, r->os_node) ||
			     grow_rows(&r->out, &r->cap_out, rows * n_embd,
				       r->os_node)))
			return -ENOMEM;
	}
	return 0;
}

/* Assign every (token, pick) a row, grouped by expert in the set of its
 * owner node, and gather x there. */
static int plan_rows(struct apply_job *j)
{
	struct pass *ps = &j->e->ps;
	const struct moe_plan *p = j->e->o.plan;
	uint32_t n_embd = j->e->m->n_embd;

	for (uint32_t t = 0; t < j->nt; t++)
		for (uint32_t i = 0; i < j->routes[t].k; i++)
			ps->count[j->routes[t].id[i]]++;
	for (uint32_t x = 0; x < j->L->n_expert; x++) {
		uint32_t set = p ? p->layers[j->L->index].owner[x] : 0;

		ps->set_of[x] = set;
		ps->base[x] = ps->sets[set].rows;
		ps->sets[set].rows += ps->count[x];
		ps->count[x] = 0; /* reused below as the fill level */
	}
	if (reserve_sets(j))
		return -ENOMEM;
	for (uint32_t t = 0; t < j->nt; t++) {
		for (uint32_t i = 0; i < j->routes[t].k; i++) {
			uint32_t x = j->routes[t].id[i];
			uint32_t row = ps->base[x] + ps->count[x]++;

			ps->row_of[(size_t)t * MOE_MAX_K + i] = row;
			memcpy(ps->sets[ps->set_of[x]].xg + (size_t)row * n_embd,
			       j->x + (size_t)t * n_embd,
			       n_embd * sizeof(float));
		}
	}
	return 0;
}

static void unit_batch(struct apply_job *j, struct unit *u, const float *x,
		       const struct node_rows *set, size_t row0, uint32_t nt,
		       uint32_t n_ff)
{
	uint32_t n_embd = j->e->m->n_embd;

	u->b.x = x;
	u->b.ldx = n_embd;
	u->b.nt = nt;
	u->b.h = set->h + row0 * n_ff;
	u->b.ldh = n_ff;
	u->b.out = set->out + row0 * n_embd;
	u->b.ldo = n_embd;
	u->b.use_blas = nt >= j->e->o.blas_min;
}

/* Experts in each node's memory: the source can name nodes and there
 * is a plan to say which. */
static bool placed(const struct moe_engine *e)
{
	return e->o.plan && e->src.want_on && e->src.wait_on &&
	       e->src.release_on;
}

/* Start acquiring: with a source that can, without waiting for reads.
 * node: MOE_POOL_ANY, or the node whose copy (placed sources only). */
static int want(struct moe_engine *e, uint32_t layer, uint32_t x,
		uint32_t node, struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	if (node != MOE_POOL_ANY)
		return e->src.want_on(e->src.ctx, layer, x, node, p, err);
	if (e->src.want)
		return e->src.want(e->src.ctx, layer, x, p, err);
	return e->src.acquire(e->src.ctx, layer, x, p, err);
}

static int wait_for(struct moe_engine *e, uint32_t layer, uint32_t x,
		    uint32_t node, struct moe_ffn_ptrs *p, struct moe_msg *err)
{
	if (node != MOE_POOL_ANY)
		return e->src.wait_on(e->src.ctx, layer, x, node, p, err);
	return e->src.wait(e->src.ctx, layer, x, p, err);
}

static void release(struct moe_engine *e, uint32_t layer, uint32_t x,
		    uint32_t node)
{
	if (node != MOE_POOL_ANY)
		e->src.release_on(e->src.ctx, layer, x, node);
	else
		e->src.release(e->src.ctx, layer, x);
}

/* The plan's copies of u's expert, each wanted on its node. One that
 * cannot be had is left out: the owner's copy serves its rows. */
static int want_copies(struct apply_job *j, struct unit *u)
{
	struct pass *ps = &j->e->ps;
	const struct moe_plan_layer *pl = &j->e->o.plan->layers[j->L->index];

	u->first_copy = (uint32_t)ps->n_copies;
	for (uint64_t m = pl->copies[u->expert]; m; m &= m - 1) {
		struct copy *c;
		int rc;

		if (GROW(ps->copies, ps->cap_copies, ps->n_copies + 1))
			return -ENOMEM;
		c = &ps->copies[ps->n_copies];
		c->node = (uint32_t)__builtin_ctzll(m);
		rc = want(j->e, j->L->index, u->expert, c->node, &c->w, NULL);
		if (rc < 0)
			continue;
		c->pending = rc == 0;
		c->acquired = rc == 1;
		j->e->missed[u->expert] |= rc == 0;
		ps->n_copies++;
		u->n_copies++;
	}
	return 0;
}

static int want_unit(struct apply_job *j, struct unit *u, struct moe_msg *err)
{
	struct moe_engine *e = j->e;
	int rc;

	u->node = placed(e) ? e->o.plan->layers[j->L->index].owner[u->expert] :
			      MOE_POOL_ANY;
	rc = want(e, j->L->index, u->expert, u->node, &u->w, err);
	if (rc < 0)
		return rc;
	u->pending = rc == 0 && (e->src.want || u->node != MOE_POOL_ANY);
	u->acquired = !u->pending;
	e->missed[u->expert] |= rc == 0;
	if (u->node == MOE_POOL_ANY)
		return 0;
	return want_copies(j, u) ? moe_msgf(err, -ENOMEM, "out of memory") : 0;
}

/* One unit per expert with tokens, then one for the shared experts. */
static void plan_units(struct apply_job *j)
{
	struct pass *ps = &j->e->ps;
	const struct moe_layer *L = j->L;
	const struct node_rows *set;

	j->n_units = 0;
	for (uint32_t x = 0; x < L->n_expert; x++) {
		struct unit *u;

		if (!ps->count[x])
			continue;
		u = &ps->units[j->n_units++];
		memset(u, 0, sizeof(*u));
		u->expert = x;
		u->mats = &L->experts[x];
		set = &ps->sets[ps->set_of[x]];
		unit_batch(j, u, set->xg + (size_t)ps->base[x] * j->e->m->n_embd,
			   set, ps->base[x], ps->count[x], L->n_ff);
	}
	j->n_routed = j->n_units;
	if (L->has_shared) {
		struct unit *u = &ps->units[j->n_units++];

		memset(u, 0, sizeof(*u));
		u->expert = UINT32_MAX;
		u->node = MOE_POOL_ANY;
		u->mats = &L->shared;
		u->w = j->e->pl[L->index].shared;
		unit_batch(j, u, j->x, &ps->sets[0], ps->sets[0].rows, j->nt,
			   L->n_ff_shared);
	}
}

/* Want the routed units from `from` on: resident ones are ready, the
 * others pending. When the cache has no slot left for one, the wave ends
 * before it (*to) and the next wave takes it once this one's experts are
 * released: a budget smaller than one pass's experts costs more waves,
 * not a failed request. Only a wave that cannot take even its first
 * expert fails. */
static int want_wave(struct apply_job *j, uint32_t from, uint32_t *to,
		     struct moe_msg *err)
{
	for (uint32_t i = from; i < j->n_routed; i++) {
		struct moe_msg why;
		int rc = want_unit(j, &j->e->ps.units[i], &why);

		if (rc == -MOE_ENOSPACE && i > from) {
			*to = i;
			return 0;
		}
		if (rc < 0) {
			if (err)
				*err = why;
			return rc;
		}
	}
	*to = j->n_routed;
	return 0;
}

/* Collected only to let it go: a pending read is waited for first. */
static void release_one(struct apply_job *j, uint32_t x, uint32_t node,
			struct moe_ffn_ptrs *w, bool *pending, bool *acquired)
{
	struct moe_msg ignored;

	if (*pending && !wait_for(j->e, j->L->index, x, node, w, &ignored))
		*acquired = true;
	if (*acquired)
		release(j->e, j->L->index, x, node);
	*acquired = *pending = false;
}

static void release_units(struct apply_job *j, uint32_t from, uint32_t to)
{
	struct pass *ps = &j->e->ps;

	for (uint32_t i = from; i < to; i++) {
		struct unit *u = &ps->units[i];

		for (uint32_t k = u->first_copy;
		     k < u->first_copy + u->n_copies; k++) {
			struct copy *c = &ps->copies[k];

			release_one(j, u->expert, c->node, &c->w, &c->pending,
				    &c->acquired);
		}
		release_one(j, u->expert, u->node, &u->w, &u->pending,
			    &u->acquired);
	}
}

static void shared_gates(struct apply_job *j)
{
	const struct moe_layer *L = j->L;
	float *g = j->e->ps.sgate;

	for (uint32_t t = 0; t < j->nt; t++)
		g[t] = 1.0f;
	if (!L->has_shared_gate)
		return;
	L->shared_gate.kern->dot_multi(
		j->e->pl[L->index].shared_gate, j->x, j->e->m->n_embd, j->nt,
		g, 1, L->shared_gate.cols);
	for (uint32_t t = 0; t < j->nt; t++)
		g[t] = 1.0f / (1.0f + expf(-g[t]));
}

/* Its own read or a copy's still to wait for. */
static bool waiting(const struct pass *ps, const struct unit *u)
{
	if (u->pending)
		return true;
	for (uint32_t i = u->first_copy; i < u->first_copy + u->n_copies; i++)
		if (ps->copies[i].pending)
			return true;
	return false;
}

/* Wait for u's reads. Its own failing fails the pass; a copy's only
 * leaves its rows to the owner's copy. */
static int collect(struct apply_job *j, struct unit *u, struct moe_msg *err)
{
	struct pass *ps = &j->e->ps;
	int rc;

	if (u->pending) {
		rc = wait_for(j->e, j->L->index, u->expert, u->node, &u->w, err);
		u->pending = false;
		if (rc)
			return rc;
		u->acquired = true;
	}
	for (uint32_t i = u->first_copy; i < u->first_copy + u->n_copies; i++) {
		struct copy *c = &ps->copies[i];

		if (!c->pending)
			continue;
		c->pending = false;
		c->acquired = !wait_for(j->e, j->L->index, u->expert, c->node,
					&c->w, NULL);
	}
	return 0;
}

static int add_unit_tasks(struct apply_job *j, uint32_t i, int down)
{
	const struct unit *u = &j->e->ps.units[i];
	uint32_t rows = down ? u->mats->down.rows : u->mats->gate.rows;

	if (waiting(&j->e->ps, u))
		return 0;
	return add_row_tasks(j->e, j->L->index, i, rows);
}

/* Gate/up then down for units [from, to) that are ready, and the shared
 * experts too when `shared`. */
static int run_units(struct apply_job *j, uint32_t from, uint32_t to,
		     bool shared)
{
	struct pass *ps = &j->e->ps;

	for (int down = 0; down < 2; down++) {
		ps->n_tasks = 0;
		for (uint32_t i = from; i < to; i++)
			if (add_unit_tasks(j, i, down))
				return -ENOMEM;
		for (uint32_t i = j->n_routed; shared && i < j->n_units; i++)
			if (add_unit_tasks(j, i, down))
				return -ENOMEM;
		if (!ps->n_tasks)
			return 0;
		moe_pool_run_nodes(j->e->pool, (uint32_t)ps->n_tasks,
				   j->e->o.plan ? ps->task_node : NULL,
				   down ? down_task : gate_up_task, j);
	}
	return 0;
}

/* Units [from, to), wanted: the resident experts first (and the shared
 * ones with the first wave), while the others load; then each missing
 * one as its read lands, in expert order. Which wave or step computes
 * an expert changes nothing in its result. */
static int run_wave(struct apply_job *j, uint32_t from, uint32_t to,
		    struct moe_msg *err)
{
	struct pass *ps = &j->e->ps;
	int rc = run_units(j, from, to, from == 0);

	for (uint32_t i = from; !rc && i < to; i++) {
		struct unit *u = &ps->units[i];

		if (!waiting(ps, u))
			continue;
		rc = collect(j, u, err);
		if (!rc)
			rc = run_units(j, i, i + 1, false);
	}
	return rc;
}

/* The call's whole input, hinted in its last pass (see run_routed). */
static void predict_next(struct apply_job *j)
{
	if (j->hint_x)
		moe_engine_prefetch_next(j->e, j->L->index, j->hint_x,
					 j->hint_nt);
}

/* Every routed unit in as few waves as the cache allows. The next
 * layer's prefetch goes out once the first wave's wants are taken, so it
 * cannot evict an expert this pass needs, and only when that wave holds
 * the whole pass: with no room even for this layer, a guess at the next
 * would only push out what is certainly needed. */
static int run_routed(struct apply_job *j, struct moe_msg *err)
{
	uint32_t to = 0;
	int rc = 0;

	if (!j->n_routed)
		return run_units(j, 0, 0, true);
	for (uint32_t from = 0; !rc && from < j->n_routed; from = to) {
		rc = want_wave(j, from, &to, err);
		if (!rc && from == 0 && to == j->n_routed)
			predict_next(j);
		if (!rc)
			rc = run_wave(j, from, to, err);
		/* On a failure, whatever was wanted from `from` on. */
		release_units(j, from, rc ? j->n_routed : to);
	}
	return rc;
}

static int apply_pass(struct apply_job *j, struct moe_msg *err)
{
	int rc = pass_reserve(&j->e->ps, j->L, j->nt);

	if (!rc)
		rc = plan_rows(j);
	if (rc)
		return moe_msgf(err, rc, "out of memory for a pass of %u tokens",
				j->nt);
	if (j->e->o.plan)
		moe_plan_feed(j->e->o.plan, j->L->index, j->e->ps.count);
	plan_units(j);
	rc = run_routed(j, err);
	if (rc)
		return rc == -ENOMEM ? moe_msgf(err, rc, "out of memory") : rc;
	shared_gates(j);
	moe_pool_run(j->e->pool, (j->nt + ROUTE_TASK - 1) / ROUTE_TASK,
		     reduce_task, j);
	return 0;
}

int moe_engine_apply(struct moe_engine *e, uint32_t layer, const float *x,
		     uint32_t nt, const struct moe_route *routes, float *y,
		     struct moe_msg *err)
{
	struct apply_job j = { .e = e };
	int rc;

	rc = check_layer(e, layer, err);
	if (!rc)
		rc = check_input(e, x, nt, err);
	for (uint32_t t = 0; !rc && t < nt; t++)
		rc = moe_route_check(&e->m->layers[layer], &routes[t], t, err);
	if (rc)
		return rc;
	j.L = &e->m->layers[layer];
	memset(e->missed, 0, j.L->n_expert);
	for (uint32_t t0 = 0; t0 < nt; t0 += e->o.max_batch) {
		j.nt = nt - t0 < e->o.max_batch ? nt - t0 : e->o.max_batch;
		j.x = x + (size_t)t0 * e->m->n_embd;
		j.y = y + (size_t)t0 * e->m->n_embd;
		j.routes = routes + t0;
		if (e->prefetch && t0 + j.nt == nt) {
			j.hint_x = x;
			j.hint_nt = nt;
		}
		rc = apply_pass(&j, err);
		if (rc)
			return rc;
	}
	return 0;
}

int moe_engine_forward(struct moe_engine *e, uint32_t layer, const float *x,
		       uint32_t nt, const struct moe_route_opts *o,
		       struct moe_route *routes, float *y,
		       struct moe_msg *err)
{
	struct moe_route *r = routes;
	int rc;

	if (!r) {
		r = malloc((nt ? nt : 1) * sizeof(*r));
		if (!r)
			return moe_msgf(err, -ENOMEM, "out of memory");
	}
	rc = moe_engine_route(e, layer, x, nt, o, r, err);
	if (!rc)
		rc = moe_engine_apply(e, layer, x, nt, r, y, err);
	if (r != routes)
		free(r);
	return rc;
}

const uint8_t *moe_engine_missed(const struct moe_engine *e)
{
	return e->missed;
}

static int next_moe_layer(const struct moe_model *m, uint32_t layer)
{
	for (uint32_t l = layer + 1; l < m->n_layer; l++)
		if (m->layers[l].moe)
			return (int)l;
	return -1;
}

void moe_engine_set_prefetch(struct moe_engine *e, bool on)
{
	e->prefetch = on;
}

uint32_t moe_engine_prefetch_next(struct moe_engine *e, uint32_t layer,
				  const float *x, uint32_t nt)
{
	int next = next_moe_layer(e->m, layer);
	struct moe_route *r;
	uint8_t seen[MOE_MAX_EXPERTS] = { 0 };
	uint32_t n = 0;

	if (!e->src.prefetch || next < 0 || !nt)
		return 0;
	if (!e->predicted)
		e->predicted = malloc(MOE_MAX_EXPERTS * sizeof(*e->predicted));
	r = malloc((size_t)nt * sizeof(*r));
	if (!r || !e->predicted ||
	    moe_engine_route(e, (uint32_t)next, x, nt, NULL, r, NULL)) {
		free(r);
		return 0;
	}
	for (uint32_t t = 0; t < nt; t++)
		for (uint32_t i = 0; i < r[t].k; i++)
			if (!seen[r[t].id[i]]++)
				e->predicted[n++] = r[t].id[i];
	free(r);
	e->src.prefetch(e->src.ctx, (uint32_t)next, e->predicted, n);
	return n;
}
