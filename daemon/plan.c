/* Placement plan: cores to workers, experts to nodes, budget to nodes,
 * and load balancing from fed token counts. Pure computation over the
 * topology and model; see plan.h for the policy. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

#define NONE UINT32_MAX

static void set_defaults(struct moe_plan_opts *o)
{
	if (o->imbalance <= 1.0)
		o->imbalance = 1.25;
	if (o->hot <= 0)
		o->hot = 2.0;
	if (o->cool <= 0)
		o->cool = 1.5;
	if (o->cool > o->hot)
		o->cool = o->hot;
	if (o->decay <= 0 || o->decay >= 1)
		o->decay = 0.5;
	if (o->replica_frac <= 0 || o->replica_frac > 1)
		o->replica_frac = 0.1;
	if (!o->max_swaps)
		o->max_swaps = 8;
}

/* ---- cores: reserved, workers, io thread ---- */

static uint32_t first_node_with_cores(const struct moe_topo *t)
{
	for (uint32_t n = 0; n < t->n_nodes; n++)
		if (t->nodes[n].n_cores)
			return n;
	return 0;
}

/* The io node's last cores, then the last cores of the nodes after it:
 * the io thread gets a core of its own next to the device. */
static void reserve_cores(struct moe_plan *p, const struct moe_topo *t,
			  bool *rsv)
{
	uint32_t left = p->o.reserve_cores;

	for (uint32_t k = 0; left && k < t->n_nodes; k++) {
		const struct moe_topo_node *n =
			&t->nodes[(p->io_node + k) % t->n_nodes];

		for (uint32_t c = n->n_cores; left && c-- > 0;) {
			const struct moe_topo_core *core =
				&t->cores[n->first_core + c];

			if (p->n_reserved == 0 && k == 0) {
				p->io_cpus = core->cpus;
				p->io_reserved = true;
			}
			rsv[n->first_core + c] = true;
			CPU_OR(&p->reserved, &p->reserved, &core->cpus);
			p->n_reserved++;
			left--;
		}
	}
}

static void place_workers(struct moe_plan *p, const struct moe_topo *t,
			  const bool *rsv)
{
	for (uint32_t n = 0; n < t->n_nodes; n++) {
		const struct moe_topo_node *tn = &t->nodes[n];

		p->nodes[n].os_index = tn->os_index;
		p->nodes[n].memory = tn->memory;
		p->nodes[n].first_worker = p->n_workers;
		for (uint32_t c = tn->first_core;
		     c < tn->first_core + tn->n_cores; c++) {
			struct moe_plan_worker *w;

			if (rsv[c])
				continue;
			w = &p->workers[p->n_workers++];
			w->node = n;
			w->core = t->cores[c].os_index;
			w->cpus = t->cores[c].cpus;
			p->nodes[n].n_workers++;
		}
	}
}

static int place_cores(struct moe_plan *p, const struct moe_topo *t,
		       struct moe_msg *err)
{
	int dev = p->o.inject_device ? p->o.device_node : t->device_node;
	bool *rsv;

	if (t->n_cores == 0)
		return moe_msgf(err, -EINVAL, "topology has no cores");
	if (p->o.reserve_cores >= t->n_cores)
		return moe_msgf(err, -EINVAL,
				"cannot reserve %u of %u cores: no worker would be left",
				p->o.reserve_cores, t->n_cores);
	if (dev < -1 || dev >= (int)t->n_nodes)
		return moe_msgf(err, -EINVAL, "device node %d: the topology has %u nodes",
				dev, t->n_nodes);
	p->device_node = dev;
	p->io_node = dev >= 0 && t->nodes[dev].n_cores ?
		(uint32_t)dev : first_node_with_cores(t);
	p->io_cpus = t->nodes[p->io_node].cpus;
	rsv = calloc(t->n_cores, sizeof(*rsv));
	p->workers = calloc(t->n_cores, sizeof(*p->workers));
	if (!rsv || !p->workers) {
		free(rsv);
		return moe_msgf(err, -ENOMEM, "out of memory");
	}
	reserve_cores(p, t, rsv);
	place_workers(p, t, rsv);
	free(rsv);
	return 0;
}

/* ---- ownership ---- */

/* Per-layer quotas: each node's floor share of the layer's experts; the
 * remaining experts go one each to the nodes furthest below their share
 * of everything assigned so far (the deficit is scaled by the worker
 * count so no division is needed). One each: a layer's quota is its
 * floor or ceiling, never more. */
static void layer_quota(const struct moe_plan *p,
			const struct moe_plan_layer *L, uint64_t total,
			uint32_t *quota)
{
	uint32_t floor_q[MOE_TOPO_MAX_NODES];
	int64_t W = p->n_workers;
	uint32_t rest = L->n_expert;

	for (uint32_t n = 0; n < p->n_nodes; n++) {
		quota[n] = (uint32_t)((uint64_t)L->n_expert *
				      p->nodes[n].n_workers / (uint64_t)W);
		floor_q[n] = quota[n];
		rest -= quota[n];
	}
	while (rest--) {
		uint32_t best = NONE;
		int64_t best_def = 0;

		for (uint32_t n = 0; n < p->n_nodes; n++) {
			int64_t def = (int64_t)p->nodes[n].n_workers * (int64_t)total -
				W * (int64_t)(p->nodes[n].owned_bytes +
					      quota[n] * L->expert_bytes);

			if (p->nodes[n].n_workers && quota[n] == floor_q[n] &&
			    (best == NONE || def > best_def)) {
				best = n;
				best_def = def;
			}
		}
		quota[best]++;
	}
}

/* Interleave: expert e goes to the node with the largest share of its
 * quota still open, so a node's experts spread over the ids. */
static void own_layer(struct moe_plan *p, struct moe_plan_layer *L,
		      uint64_t *assigned)
{
	uint32_t quota[MOE_TOPO_MAX_NODES], given[MOE_TOPO_MAX_NODES] = { 0 };

	*assigned += (uint64_t)L->n_expert * L->expert_bytes;
	layer_quota(p, L, *assigned, quota);
	for (uint32_t e = 0; e < L->n_expert; e++) {
		uint32_t best = NONE;

		for (uint32_t n = 0; n < p->n_nodes; n++) {
			if (given[n] >= quota[n])
				continue;
			if (best == NONE || (uint64_t)(given[n] + 1) * quota[best] <
					    (uint64_t)(given[best] + 1) * quota[n])
				best = n;
		}
		L->owner[e] = (uint8_t)best;
		given[best]++;
		p->nodes[best].n_experts++;
		p->nodes[best].owned_bytes += L->expert_bytes;
	}
}

static int by_size_desc(const void *a, const void *b, void *ctx)
{
	const struct moe_plan *p = ctx;
	uint64_t x = p->layers[*(const uint32_t *)a].expert_bytes;
	uint64_t y = p->layers[*(const uint32_t *)b].expert_bytes;

	if (x != y)
		return x > y ? -1 : 1;
	return *(const uint32_t *)a < *(const uint32_t *)b ? -1 : 1;
}

/* Largest experts first, so smaller layers even out what larger ones
 * left uneven. */
static int own_all(struct moe_plan *p)
{
	uint32_t *order = calloc(p->n_layer ? p->n_layer : 1, sizeof(*order));
	uint64_t assigned = 0;

	if (!order)
		return -ENOMEM;
	for (uint32_t l = 0; l < p->n_layer; l++)
		order[l] = l;
	qsort_r(order, p->n_layer, sizeof(*order), by_size_desc, p);
	for (uint32_t i = 0; i < p->n_layer; i++)
		if (p->layers[order[i]].n_expert)
			own_layer(p, &p->layers[order[i]], &assigned);
	free(order);
	return 0;
}

static int alloc_layers(struct moe_plan *p, const struct moe_model *m)
{
	p->layers = calloc(m->n_layer ? m->n_layer : 1, sizeof(*p->layers));
	if (!p->layers)
		return -ENOMEM;
	p->n_layer = m->n_layer;
	for (uint32_t l = 0; l < m->n_layer; l++) {
		const struct moe_layer *ml = &m->layers[l];
		struct moe_plan_layer *L = &p->layers[l];
		uint32_t n = ml->n_expert;

		if (!ml->moe || !n)
			continue;
		L->n_expert = n;
		L->expert_bytes = ml->expert_bytes;
		L->owner = calloc(n, sizeof(*L->owner));
		L->copies = calloc(n, sizeof(*L->copies));
		L->load = calloc(n, sizeof(*L->load));
		L->fed = calloc(n, sizeof(*L->fed));
		if (!L->owner || !L->copies || !L->load || !L->fed)
			return -ENOMEM;
		p->total_bytes += (uint64_t)n * ml->expert_bytes;
	}
	return 0;
}

/* ---- budget ---- */

static uint64_t split_weight(const struct moe_plan *p, uint32_t n,
			     enum moe_budget_split s)
{
	const struct moe_plan_node *nd = &p->nodes[n];

	if (!nd->n_workers)
		return 0;
	if (s == MOE_SPLIT_OWNED)
		return nd->owned_bytes;
	if (s == MOE_SPLIT_MEMORY)
		return nd->memory;
	return 1;
}

/* Floors, then the rounding remainder to the first node with workers,
 * so the shares sum to the budget exactly. */
static void split_budget(struct moe_plan *p)
{
	enum moe_budget_split s = p->o.split;
	uint64_t sum = 0, given = 0;
	uint32_t first = NONE;

	p->budget = p->o.cache_bytes ? p->o.cache_bytes : p->total_bytes;
	for (uint32_t n = 0; n < p->n_nodes; n++)
		sum += split_weight(p, n, s);
	if (!sum) { /* no memory sizes, or nothing owned */
		s = MOE_SPLIT_EQUAL;
		for (uint32_t n = 0; n < p->n_nodes; n++)
			sum += split_weight(p, n, s);
	}
	for (uint32_t n = 0; n < p->n_nodes; n++) {
		uint64_t w = split_weight(p, n, s);

		p->nodes[n].budget = (uint64_t)((unsigned __int128)p->budget *
						w / sum);
		given += p->nodes[n].budget;
		if (w && first == NONE)
			first = n;
	}
	p->nodes[first].budget += p->budget - given;
	for (uint32_t n = 0; n < p->n_nodes; n++)
		p->nodes[n].replica_cap =
			(uint64_t)((double)p->nodes[n].budget * p->o.replica_frac);
}

int moe_plan_new(struct moe_plan **out, const struct moe_topo *t,
		 const struct moe_model *m, const struct moe_plan_opts *o,
		 struct moe_msg *err)
{
	struct moe_plan *p = calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return moe_msgf(err, -ENOMEM, "out of memory");
	if (o)
		p->o = *o;
	set_defaults(&p->o);
	p->n_nodes = t->n_nodes;
	p->bind = t->this_system;
	p->numa = t->this_system && t->numa_ok;
	p->nodes = calloc(t->n_nodes, sizeof(*p->nodes));
	if (!p->nodes) {
		rc = moe_msgf(err, -ENOMEM, "out of memory");
		goto err;
	}
	rc = place_cores(p, t, err);
	if (rc)
		goto err;
	rc = alloc_layers(p, m);
	if (!rc)
		rc = own_all(p);
	if (rc) {
		moe_msgf(err, rc, "out of memory for the plan");
		goto err;
	}
	split_budget(p);
	*out = p;
	return 0;
err:
	moe_plan_free(p);
	return rc;
}

void moe_plan_free(struct moe_plan *p)
{
	if (!p)
		return;
	for (uint32_t l = 0; p->layers && l < p->n_layer; l++) {
		free(p->layers[l].owner);
		free(p->layers[l].copies);
		free(p->layers[l].load);
		free(p->layers[l].fed);
	}
	free(p->layers);
	free(p->workers);
	free(p->nodes);
	free(p);
}

/* ---- load ---- */

static uint32_t holders(const struct moe_plan_layer *L, uint32_t e)
{
	return 1 + (uint32_t)__builtin_popcountll(L->copies[e]);
}

/* Tokens each node computes: an expert's load is split evenly among the
 * nodes that hold it (its rows are). */
static void node_loads(const struct moe_plan *p, const struct moe_plan_layer *L,
		       double *load)
{
	memset(load, 0, p->n_nodes * sizeof(*load));
	for (uint32_t e = 0; e < L->n_expert; e++) {
		double share = L->load[e] / holders(L, e);
		uint64_t c = L->copies[e];

		load[L->owner[e]] += share;
		for (; c; c &= c - 1)
			load[__builtin_ctzll(c)] += share;
	}
}

static double per_worker(const struct moe_plan *p, const double *load,
			 uint32_t n)
{
	return p->nodes[n].n_workers ? load[n] / p->nodes[n].n_workers : 0;
}

static uint32_t busiest(const struct moe_plan *p, const double *load)
{
	uint32_t a = 0;

	for (uint32_t n = 1; n < p->n_nodes; n++)
		if (per_worker(p, load, n) > per_worker(p, load, a))
			a = n;
	return a;
}

static double imbalance_of(const struct moe_plan *p, const double *load)
{
	double sum = 0;

	for (uint32_t n = 0; n < p->n_nodes; n++)
		sum += load[n];
	if (sum <= 0)
		return 1.0;
	return per_worker(p, load, busiest(p, load)) * p->n_workers / sum;
}

double moe_plan_imbalance(const struct moe_plan *p, uint32_t layer)
{
	double load[MOE_TOPO_MAX_NODES];

	if (layer >= p->n_layer || !p->layers[layer].n_expert)
		return 1.0;
	node_loads(p, &p->layers[layer], load);
	return imbalance_of(p, load);
}

void moe_plan_feed(struct moe_plan *p, uint32_t layer,
		   const uint32_t *counts)
{
	struct moe_plan_layer *L;

	if (layer >= p->n_layer)
		return;
	L = &p->layers[layer];
	for (uint32_t e = 0; e < L->n_expert; e++)
		L->fed[e] += counts[e];
}

/* A candidate move and the larger of the two nodes' loads per worker
 * after it. */
struct move {
	uint32_t x, y, b;
	double peak;
};

/* The swap of an expert x of the busiest node a with a lighter expert y
 * of another node b that lowers max(a, b) the most. Equal sizes within a
 * layer: bytes per node do not change. Experts with copies stay put. */
static struct move best_swap(const struct moe_plan *p,
			     const struct moe_plan_layer *L,
			     const double *load, uint32_t a)
{
	struct move best = { NONE, NONE, NONE, per_worker(p, load, a) };
	double wa = p->nodes[a].n_workers;

	best.peak *= 1 - 1e-9;
	for (uint32_t x = 0; x < L->n_expert; x++) {
		if (L->owner[x] != a || L->copies[x])
			continue;
		for (uint32_t y = 0; y < L->n_expert; y++) {
			uint32_t b = L->owner[y];
			double d = L->load[x] - L->load[y], peak;

			if (b == a || L->copies[y] || d <= 0)
				continue;
			peak = (load[a] - d) / wa;
			if ((load[b] + d) / p->nodes[b].n_workers > peak)
				peak = (load[b] + d) / p->nodes[b].n_workers;
			if (peak < best.peak)
				best = (struct move){ x, y, b, peak };
		}
	}
	return best;
}

static uint32_t swap_some(struct moe_plan *p, struct moe_plan_layer *L,
			  double *load)
{
	uint32_t done = 0;

	while (done < p->o.max_swaps && imbalance_of(p, load) > p->o.imbalance) {
		uint32_t a = busiest(p, load);
		struct move m = best_swap(p, L, load, a);

		if (m.x == NONE)
			break;
		L->owner[m.x] = (uint8_t)m.b;
		L->owner[m.y] = (uint8_t)a;
		node_loads(p, L, load);
		done++;
	}
	return done;
}

/* A copy of hot expert x (held by the busiest node a) on node b, which
 * then computes its share of x's rows. */
static struct move best_copy(const struct moe_plan *p,
			     const struct moe_plan_layer *L,
			     const double *load, uint32_t a, double mean)
{
	struct move best = { NONE, NONE, NONE, per_worker(p, load, a) };

	best.peak *= 1 - 1e-9;
	for (uint32_t x = 0; x < L->n_expert; x++) {
		double c = holders(L, x), lx = L->load[x];

		if (lx < p->o.hot * mean ||
		    (L->owner[x] != a && !(L->copies[x] >> a & 1)))
			continue;
		for (uint32_t b = 0; b < p->n_nodes; b++) {
			const struct moe_plan_node *nb = &p->nodes[b];
			double peak;

			if (!nb->n_workers || L->owner[x] == b ||
			    (L->copies[x] >> b & 1) ||
			    nb->replica_bytes + L->expert_bytes > nb->replica_cap)
				continue;
			peak = (load[a] - lx / c + lx / (c + 1)) /
			       p->nodes[a].n_workers;
			if ((load[b] + lx / (c + 1)) / nb->n_workers > peak)
				peak = (load[b] + lx / (c + 1)) / nb->n_workers;
			if (peak < best.peak)
				best = (struct move){ x, NONE, b, peak };
		}
	}
	return best;
}

static uint32_t copy_some(struct moe_plan *p, struct moe_plan_layer *L,
			  double *load, double mean)
{
	uint32_t done = 0;

	while (imbalance_of(p, load) > p->o.imbalance) {
		struct move m = best_copy(p, L, load, busiest(p, load), mean);

		if (m.x == NONE)
			break;
		L->copies[m.x] |= 1ull << m.b;
		p->nodes[m.b].replica_bytes += L->expert_bytes;
		node_loads(p, L, load);
		done++;
	}
	return done;
}

/* Copies of experts that cooled below the lower threshold go. */
static uint32_t drop_cool(struct moe_plan *p, struct moe_plan_layer *L,
			  double mean)
{
	uint32_t done = 0;

	for (uint32_t e = 0; e < L->n_expert; e++) {
		uint64_t c = L->copies[e];

		if (!c || L->load[e] >= p->o.cool * mean)
			continue;
		for (; c; c &= c - 1, done++)
			p->nodes[__builtin_ctzll(c)].replica_bytes -=
				L->expert_bytes;
		L->copies[e] = 0;
	}
	return done;
}

static void rebalance_layer(struct moe_plan *p, struct moe_plan_layer *L,
			    struct moe_plan_change *c)
{
	double load[MOE_TOPO_MAX_NODES], sum = 0, mean;

	for (uint32_t e = 0; e < L->n_expert; e++) {
		L->load[e] = p->o.decay * L->load[e] + (double)L->fed[e];
		L->fed[e] = 0;
		sum += L->load[e];
	}
	if (sum <= 0)
		return;
	mean = sum / L->n_expert;
	c->copies_dropped += drop_cool(p, L, mean);
	node_loads(p, L, load);
	/* Above the threshold only: small drifts move nothing. */
	if (imbalance_of(p, load) <= p->o.imbalance)
		return;
	c->swaps += swap_some(p, L, load);
	c->copies_added += copy_some(p, L, load, mean);
}

void moe_plan_rebalance(struct moe_plan *p, struct moe_plan_change *c)
{
	struct moe_plan_change d = { 0 };

	for (uint32_t l = 0; l < p->n_layer; l++)
		if (p->layers[l].n_expert)
			rebalance_layer(p, &p->layers[l], &d);
	p->rebalances++;
	p->total.swaps += d.swaps;
	p->total.copies_added += d.copies_added;
	p->total.copies_dropped += d.copies_dropped;
	if (c) {
		c->swaps += d.swaps;
		c->copies_added += d.copies_added;
		c->copies_dropped += d.copies_dropped;
	}
}

bool moe_plan_holds(const struct moe_plan *p, uint32_t layer, uint32_t e,
		    uint32_t node)
{
	const struct moe_plan_layer *L;

	if (layer >= p->n_layer || node >= p->n_nodes)
		return false;
	L = &p->layers[layer];
	return e < L->n_expert &&
	       (L->owner[e] == node || (L->copies[e] >> node & 1));
}

uint32_t moe_plan_node_of_rows(const struct moe_plan *p, uint32_t layer,
			       uint32_t e, uint32_t row0, uint32_t rows)
{
	const struct moe_plan_layer *L;
	uint32_t k;
	uint64_t c;

	if (layer >= p->n_layer || e >= p->layers[layer].n_expert)
		return MOE_POOL_ANY;
	L = &p->layers[layer];
	if (!L->copies[e] || row0 >= rows)
		return L->owner[e];
	k = (uint32_t)((uint64_t)row0 * holders(L, e) / rows);
	if (k == 0)
		return L->owner[e];
	for (c = L->copies[e]; --k; c &= c - 1)
		;
	return (uint32_t)__builtin_ctzll(c);
}

void moe_plan_pins(const struct moe_plan *p, struct moe_pool_pin *pins)
{
	for (uint32_t w = 0; w < p->n_workers; w++) {
		pins[w].node = p->workers[w].node;
		if (p->bind)
			pins[w].cpus = p->workers[w].cpus;
		else
			CPU_ZERO(&pins[w].cpus);
	}
}

/* ---- printing ---- */

static char *bytes_str(uint64_t n, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
	return buf;
}

static void print_topo(FILE *f, const struct moe_plan *p,
		       const struct moe_topo *t)
{
	char mem[32], l2[32], l3[32], cpus[256];

	fprintf(f, "topology     %s: %u NUMA node%s, %u cores; libnuma %s\n",
		t->source, t->n_nodes, t->n_nodes == 1 ? "" : "s", t->n_cores,
		t->numa_ok ? "available" : "unavailable (memory not bound)");
	for (uint32_t n = 0; n < t->n_nodes; n++) {
		const struct moe_topo_node *nd = &t->nodes[n];

		fprintf(f, "  node %-6u os %u, %s, %u cores (%scpus %s), L2 %s, L3 %s\n",
			n, nd->os_index, bytes_str(nd->memory, mem, sizeof(mem)),
			nd->n_cores, nd->n_cores ? "" : "memory only, near ",
			moe_cpuset_str(&nd->cpus, cpus, sizeof(cpus)),
			nd->n_l2 ? bytes_str(nd->l2_bytes, l2, sizeof(l2)) : "-",
			nd->n_l3 ? bytes_str(nd->l3_bytes, l3, sizeof(l3)) : "-");
	}
	if (p->o.inject_device)
		fprintf(f, "device       node %d (given by the options)\n",
			p->device_node);
	else if (p->device_node >= 0)
		fprintf(f, "device       node %d (%s)\n", p->device_node,
			t->device);
	else
		fprintf(f, "device       unknown (%s)\n", t->device);
}

static void print_budget(FILE *f, const struct moe_plan *p)
{
	static const char *const how[] = { "by owned bytes", "by node memory",
					   "equally" };
	char a[32], b[32], c[32], d[32];

	fprintf(f, "budget       %s%s, split %s\n",
		bytes_str(p->budget, a, sizeof(a)),
		p->o.cache_bytes ? "" : " (no cache budget: the whole model)",
		how[p->o.split <= MOE_SPLIT_EQUAL ? p->o.split : 0]);
	for (uint32_t n = 0; n < p->n_nodes; n++) {
		const struct moe_plan_node *nd = &p->nodes[n];

		fprintf(f, "  node %-6u %s (copies up to %s), owns %u experts, %s; holds %s of copies\n",
			n, bytes_str(nd->budget, a, sizeof(a)),
			bytes_str(nd->replica_cap, b, sizeof(b)), nd->n_experts,
			bytes_str(nd->owned_bytes, c, sizeof(c)),
			bytes_str(nd->replica_bytes, d, sizeof(d)));
	}
}

static void layer_counts(const struct moe_plan *p, uint32_t l,
			 uint32_t *count)
{
	const struct moe_plan_layer *L = &p->layers[l];

	memset(count, 0, p->n_nodes * sizeof(*count));
	for (uint32_t e = 0; e < L->n_expert; e++)
		count[L->owner[e]]++;
}

static bool same_split(const struct moe_plan *p, uint32_t a, uint32_t b)
{
	uint32_t ca[MOE_TOPO_MAX_NODES], cb[MOE_TOPO_MAX_NODES];

	if (p->layers[a].expert_bytes != p->layers[b].expert_bytes ||
	    p->layers[a].n_expert != p->layers[b].n_expert)
		return false;
	layer_counts(p, a, ca);
	layer_counts(p, b, cb);
	return !memcmp(ca, cb, p->n_nodes * sizeof(*ca));
}

/* The run of MoE layers from the first at or after *l with the same
 * split: [*l, *last]. false past the last MoE layer. */
static bool next_run(const struct moe_plan *p, uint32_t *l, uint32_t *last)
{
	while (*l < p->n_layer && !p->layers[*l].n_expert)
		(*l)++;
	if (*l >= p->n_layer)
		return false;
	*last = *l;
	while (*last + 1 < p->n_layer && p->layers[*last + 1].n_expert &&
	       same_split(p, *l, *last + 1))
		(*last)++;
	return true;
}

static void print_run(FILE *f, const struct moe_plan *p, uint32_t l,
		      uint32_t last)
{
	const struct moe_plan_layer *L = &p->layers[l];
	uint32_t count[MOE_TOPO_MAX_NODES];
	char a[32], b[32];

	layer_counts(p, l, count);
	fprintf(f, "  layer%s %u", last > l ? "s" : "", l);
	if (last > l)
		fprintf(f, "-%u", last);
	fprintf(f, " (%u x %s):", L->n_expert,
		bytes_str(L->expert_bytes, a, sizeof(a)));
	for (uint32_t n = 0; n < p->n_nodes; n++)
		if (p->nodes[n].n_workers)
			fprintf(f, " node %u %u (%s)", n, count[n],
				bytes_str(count[n] * L->expert_bytes, b,
					  sizeof(b)));
	fputc('\n', f);
}

/* Fewest and most experts a node owns in any layer. */
static void print_range(FILE *f, const struct moe_plan *p, uint32_t n)
{
	uint32_t count[MOE_TOPO_MAX_NODES], lo = UINT32_MAX, hi = 0;

	for (uint32_t l = 0; l < p->n_layer; l++) {
		if (!p->layers[l].n_expert)
			continue;
		layer_counts(p, l, count);
		lo = count[n] < lo ? count[n] : lo;
		hi = count[n] > hi ? count[n] : hi;
	}
	fprintf(f, "  node %-6u %u to %u experts per layer\n", n, lo, hi);
}

/* Consecutive MoE layers with the same split share a line; when even so
 * the lines would be many (unequal nodes alternate), a range per node. */
static void print_layers(FILE *f, const struct moe_plan *p)
{
	uint32_t runs = 0, last;

	for (uint32_t l = 0; next_run(p, &l, &last); l = last + 1)
		runs++;
	fprintf(f, "experts      owned per node, per layer:\n");
	if (runs > 8) {
		for (uint32_t n = 0; n < p->n_nodes; n++)
			if (p->nodes[n].n_workers)
				print_range(f, p, n);
		return;
	}
	for (uint32_t l = 0; next_run(p, &l, &last); l = last + 1)
		print_run(f, p, l, last);
}

static void print_copies(FILE *f, const struct moe_plan *p)
{
	uint32_t shown = 0, total = 0;

	for (uint32_t l = 0; l < p->n_layer; l++)
		for (uint32_t e = 0; e < p->layers[l].n_expert; e++)
			total += (uint32_t)__builtin_popcountll(
				p->layers[l].copies[e]);
	fprintf(f, "copies       %u%s\n", total,
		total ? "" : " (made when observed load is uneven)");
	for (uint32_t l = 0; l < p->n_layer && shown < 8; l++) {
		const struct moe_plan_layer *L = &p->layers[l];

		for (uint32_t e = 0; e < L->n_expert && shown < 8; e++) {
			if (!L->copies[e])
				continue;
			fprintf(f, "  layer %u expert %u: owner node %u, copies on",
				l, e, L->owner[e]);
			for (uint64_t c = L->copies[e]; c; c &= c - 1)
				fprintf(f, " %d", __builtin_ctzll(c));
			fputc('\n', f);
			shown++;
		}
	}
}

static void print_cores(FILE *f, const struct moe_plan *p)
{
	char cpus[256];

	fprintf(f, "workers      %u, one per core, %s\n", p->n_workers,
		p->bind ? "pinned" : "not pinned (the topology is not this machine's)");
	for (uint32_t n = 0; n < p->n_nodes; n++) {
		const struct moe_plan_node *nd = &p->nodes[n];

		fprintf(f, "  node %-6u %u:", n, nd->n_workers);
		for (uint32_t w = nd->first_worker;
		     w < nd->first_worker + nd->n_workers; w++)
			fprintf(f, " %s", moe_cpuset_str(&p->workers[w].cpus,
							 cpus, sizeof(cpus)));
		fputc('\n', f);
	}
	if (p->n_reserved)
		fprintf(f, "reserved     %u core%s: cpus %s\n", p->n_reserved,
			p->n_reserved == 1 ? "" : "s",
			moe_cpuset_str(&p->reserved, cpus, sizeof(cpus)));
	else
		fprintf(f, "reserved     none\n");
	fprintf(f, "io thread    node %u, cpus %s%s\n", p->io_node,
		moe_cpuset_str(&p->io_cpus, cpus, sizeof(cpus)),
		p->io_reserved ? " (a reserved core)" :
		" (shared with the node's workers)");
}

void moe_plan_print(FILE *f, const struct moe_plan *p,
		    const struct moe_topo *t)
{
	print_topo(f, p, t);
	print_budget(f, p);
	print_layers(f, p);
	print_copies(f, p);
	print_cores(f, p);
}

int moe_plan_report(FILE *f, const struct moe_model *m,
		    const char *model_path, const char *topology,
		    uint32_t reserve_cores, uint64_t cache_bytes,
		    struct moe_msg *err)
{
	struct moe_topo_opts to = { .topology = topology,
				    .device_path = model_path };
	struct moe_plan_opts po = { .reserve_cores = reserve_cores,
				    .cache_bytes = cache_bytes };
	struct moe_topo *t;
	struct moe_plan *p;
	int rc;

	rc = moe_topo_open(&t, &to, err);
	if (rc)
		return rc;
	rc = moe_plan_new(&p, t, m, &po, err);
	if (!rc) {
		moe_plan_print(f, p, t);
		moe_plan_free(p);
	}
	moe_topo_close(t);
	return rc;
}
