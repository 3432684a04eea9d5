/* Topology and placement plan: plans on synthetic and XML topologies
 * (every expert owned, bytes balanced, budget split, pinning sets, io
 * thread, copies made and dropped), environment-selected topologies,
 * and node-local memory checked page by page. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model.h"
#include "plan.h"
#include "testutil.h"
#include "topo.h"

/* ---- fixtures ---- */

/* Only what the plan reads: layer count, which layers are MoE, experts
 * per layer and their size. Layer 0 is dense, as in DeepSeek. */
static struct moe_model *fake_model(uint32_t n_layer, uint32_t n_expert,
				    const uint64_t *bytes)
{
	struct moe_model *m = calloc(1, sizeof(*m));

	assert_non_null(m);
	m->n_layer = n_layer;
	m->layers = calloc(n_layer, sizeof(*m->layers));
	assert_non_null(m->layers);
	for (uint32_t l = 1; l < n_layer; l++) {
		m->layers[l].index = l;
		m->layers[l].moe = true;
		m->layers[l].n_expert = n_expert;
		m->layers[l].expert_bytes = bytes ? bytes[l] : 3u << 20;
	}
	return m;
}

static void free_model(struct moe_model *m)
{
	free(m->layers);
	free(m);
}

static struct moe_topo *topo_of(const char *desc)
{
	struct moe_topo_opts o = { .topology = desc };
	struct moe_msg err = { "" };
	struct moe_topo *t = NULL;

	if (moe_topo_open(&t, &o, &err))
		fail_msg("topology %s: %s", desc ? desc : "(this system)",
			 err.text);
	return t;
}

/* An hwloc XML machine: one package per node, nodes with the given core
 * counts and memory in GiB; a node of 0 cores hangs off the machine as
 * memory only (CXL, HBM). hwloc's synthetic syntax is symmetric, so
 * unequal nodes need this. */
static void xml_numa(FILE *f, uint32_t i, unsigned long long cs, uint32_t gib)
{
	fprintf(f, "   <object type=\"NUMANode\" os_index=\"%u\" cpuset=\"0x%llx\" complete_cpuset=\"0x%llx\" nodeset=\"0x%x\" complete_nodeset=\"0x%x\" local_memory=\"%llu\"/>\n",
		i, cs, cs, 1u << i, 1u << i, (unsigned long long)gib << 30);
}

static void xml_core(FILE *f, uint32_t cpu, uint32_t i)
{
	unsigned long long cs = 1ull << cpu;

	fprintf(f, "   <object type=\"Core\" os_index=\"%u\" cpuset=\"0x%llx\" complete_cpuset=\"0x%llx\" nodeset=\"0x%x\" complete_nodeset=\"0x%x\"><object type=\"PU\" os_index=\"%u\" cpuset=\"0x%llx\" complete_cpuset=\"0x%llx\" nodeset=\"0x%x\" complete_nodeset=\"0x%x\"/></object>\n",
		cpu, cs, cs, 1u << i, 1u << i, cpu, cs, cs, 1u << i, 1u << i);
}

static char *write_xml_to(char *path, uint32_t n, const uint32_t *cores,
			  const uint32_t *gib)
{
	unsigned long long all_cs;
	uint32_t cpu = 0, all = 0;
	FILE *f;

	for (uint32_t i = 0; i < n; i++)
		all += cores[i];
	assert_true(all >= 1 && all < 64 && n < 32);
	all_cs = (1ull << all) - 1;
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
		"<topology version=\"2.0\">\n"
		" <object type=\"Machine\" os_index=\"0\" cpuset=\"0x%llx\" complete_cpuset=\"0x%llx\" nodeset=\"0x%x\" complete_nodeset=\"0x%x\">\n",
		all_cs, all_cs, (1u << n) - 1, (1u << n) - 1);
	for (uint32_t i = 0; i < n; i++)
		if (!cores[i])
			xml_numa(f, i, all_cs, gib[i]);
	for (uint32_t i = 0; i < n; i++) {
		unsigned long long cs = ((1ull << cores[i]) - 1) << cpu;

		if (!cores[i])
			continue;
		fprintf(f, "  <object type=\"Package\" os_index=\"%u\" cpuset=\"0x%llx\" complete_cpuset=\"0x%llx\" nodeset=\"0x%x\" complete_nodeset=\"0x%x\">\n",
			i, cs, cs, 1u << i, 1u << i);
		xml_numa(f, i, cs, gib[i]);
		for (uint32_t c = 0; c < cores[i]; c++, cpu++)
			xml_core(f, cpu, i);
		fprintf(f, "  </object>\n");
	}
	fprintf(f, " </object>\n</topology>\n");
	assert_int_equal(fclose(f), 0);
	return path;
}

static char *write_xml(char *path, size_t len, uint32_t n,
		       const uint32_t *cores, const uint32_t *gib)
{
	return write_xml_to(tmp_path(path, len, "topo.xml"), n, cores, gib);
}

static struct moe_plan *plan_of(const struct moe_topo *t,
				const struct moe_model *m,
				const struct moe_plan_opts *o)
{
	struct moe_msg err = { "" };
	struct moe_plan *p = NULL;

	if (moe_plan_new(&p, t, m, o, &err))
		fail_msg("plan: %s", err.text);
	return p;
}

/* ---- invariants every plan keeps ---- */

/* Every expert of every MoE layer has an owner with workers; the sums
 * kept per node agree with the layers. */
static void check_owned(const struct moe_plan *p, const struct moe_model *m)
{
	uint64_t bytes[MOE_TOPO_MAX_NODES] = { 0 };

	for (uint32_t l = 0; l < m->n_layer; l++) {
		const struct moe_plan_layer *L = &p->layers[l];

		assert_int_equal(L->n_expert,
				 m->layers[l].moe ? m->layers[l].n_expert : 0);
		for (uint32_t e = 0; e < L->n_expert; e++) {
			assert_true(L->owner[e] < p->n_nodes);
			assert_true(p->nodes[L->owner[e]].n_workers > 0);
			bytes[L->owner[e]] += L->expert_bytes;
		}
	}
	for (uint32_t n = 0; n < p->n_nodes; n++)
		assert_int_equal(bytes[n], p->nodes[n].owned_bytes);
}

/* The tolerance: each node's owned bytes are within one expert (the
 * largest) of its share (its workers over all workers) of the total, and
 * within one expert of its share in every single layer. */
static void check_balanced(const struct moe_plan *p)
{
	uint64_t max_b = 0;

	for (uint32_t l = 0; l < p->n_layer; l++) {
		const struct moe_plan_layer *L = &p->layers[l];
		uint32_t count[MOE_TOPO_MAX_NODES] = { 0 };

		if (L->expert_bytes > max_b)
			max_b = L->expert_bytes;
		for (uint32_t e = 0; e < L->n_expert; e++)
			count[L->owner[e]]++;
		for (uint32_t n = 0; L->n_expert && n < p->n_nodes; n++) {
			double share = (double)L->n_expert *
				       p->nodes[n].n_workers / p->n_workers;

			if (count[n] < share - 1 || count[n] > share + 1)
				fail_msg("layer %u node %u: %u experts, share %.2f",
					 l, n, count[n], share);
		}
	}
	for (uint32_t n = 0; n < p->n_nodes; n++) {
		double share = (double)p->total_bytes * p->nodes[n].n_workers /
			       p->n_workers;
		double off = (double)p->nodes[n].owned_bytes - share;

		if (off > (double)max_b || -off > (double)max_b)
			fail_msg("node %u owns %llu bytes, share %.0f: off by more than one expert (%llu)",
				 n, (unsigned long long)p->nodes[n].owned_bytes,
				 share, (unsigned long long)max_b);
	}
}

static void check_budget(const struct moe_plan *p, uint64_t want)
{
	uint64_t sum = 0;

	for (uint32_t n = 0; n < p->n_nodes; n++) {
		sum += p->nodes[n].budget;
		assert_true(p->nodes[n].replica_bytes <= p->nodes[n].replica_cap);
		if (!p->nodes[n].n_workers)
			assert_int_equal(p->nodes[n].budget, 0);
	}
	assert_int_equal(sum, want);
}

/* Workers' CPU sets are disjoint, lie in their node, and with the
 * reserved cores cover every CPU of the topology exactly once. */
static void check_pins(const struct moe_plan *p, const struct moe_topo *t)
{
	cpu_set_t seen, all;

	CPU_ZERO(&all);
	for (uint32_t n = 0; n < t->n_nodes; n++)
		CPU_OR(&all, &all, &t->nodes[n].cpus);
	seen = p->reserved;
	assert_int_equal(CPU_COUNT(&p->reserved) > 0, p->n_reserved > 0);
	for (uint32_t w = 0; w < p->n_workers; w++) {
		const struct moe_plan_worker *wk = &p->workers[w];
		cpu_set_t both, in_node;

		assert_true(CPU_COUNT(&wk->cpus) > 0);
		CPU_AND(&both, &seen, &wk->cpus);
		assert_int_equal(CPU_COUNT(&both), 0);
		CPU_AND(&in_node, &t->nodes[wk->node].cpus, &wk->cpus);
		assert_true(CPU_EQUAL(&in_node, &wk->cpus));
		assert_true(w >= p->nodes[wk->node].first_worker &&
			    w < p->nodes[wk->node].first_worker +
				    p->nodes[wk->node].n_workers);
		CPU_OR(&seen, &seen, &wk->cpus);
	}
	assert_true(CPU_EQUAL(&seen, &all));
	assert_int_equal(p->n_workers + p->n_reserved, t->n_cores);
}

static void check_all(const struct moe_plan *p, const struct moe_topo *t,
		      const struct moe_model *m)
{
	check_owned(p, m);
	check_balanced(p);
	check_budget(p, p->o.cache_bytes ? p->o.cache_bytes : p->total_bytes);
	check_pins(p, t);
}

/* ---- plans on synthetic topologies ---- */

static void two_nodes_by_four(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(7, 64, NULL);
	struct moe_plan_opts o = { .cache_bytes = 1000000007 };
	struct moe_plan *p;

	assert_int_equal(t->n_nodes, 2);
	assert_int_equal(t->n_cores, 8);
	assert_false(t->this_system);
	assert_int_equal(t->device_node, -1);
	p = plan_of(t, m, &o);
	check_all(p, t, m);
	assert_false(p->bind || p->numa); /* not this machine's to bind */
	assert_int_equal(p->n_workers, 8);
	assert_false(p->bind);
	/* Equal nodes: equal halves, to the byte. */
	assert_int_equal(p->nodes[0].owned_bytes, p->nodes[1].owned_bytes);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

static void four_nodes_by_two(void **s)
{
	struct moe_topo *t = topo_of("numa:4 core:2 pu:1");
	/* 10 experts over 4 nodes: every layer leaves two over. */
	struct moe_model *m = fake_model(9, 10, NULL);
	struct moe_plan *p;

	assert_int_equal(t->n_nodes, 4);
	p = plan_of(t, m, NULL);
	check_all(p, t, m);
	for (uint32_t n = 0; n < 4; n++)
		assert_int_equal(p->nodes[n].n_workers, 2);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* Layers of different expert sizes: the running deficit keeps the
 * totals within one (largest) expert. */
static void unequal_nodes_xml(void **s)
{
	static const uint32_t cores[2] = { 4, 2 }, gib[2] = { 8, 4 };
	uint64_t bytes[12];
	char path[256];
	struct moe_topo *t = topo_of(write_xml(path, sizeof(path), 2, cores,
					       gib));
	struct moe_model *m;
	struct moe_plan *p;

	for (uint32_t l = 0; l < 12; l++)
		bytes[l] = (l % 3 + 1) * 1000003ull;
	m = fake_model(12, 7, bytes);
	assert_int_equal(t->n_nodes, 2);
	assert_int_equal(t->nodes[0].n_cores, 4);
	assert_int_equal(t->nodes[1].n_cores, 2);
	assert_int_equal(t->nodes[0].memory, 8ull << 30);
	assert_non_null(strstr(t->source, "xml"));
	p = plan_of(t, m, NULL);
	check_all(p, t, m);
	/* Two thirds of the bytes on the node with two thirds of the cores. */
	assert_true(p->nodes[0].owned_bytes > p->nodes[1].owned_bytes);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* Many shapes: node counts, unequal cores, layer sizes, reserved cores. */
static void balance_property(void **s)
{
	struct trng r = { 42 };
	char path[256];

	tmp_path(path, sizeof(path), "topo.xml");
	for (int round = 0; round < 40; round++) {
		uint32_t n = 1 + (uint32_t)(trng_next(&r) % 5), cores[8], gib[8];
		uint32_t layers = 2 + (uint32_t)(trng_next(&r) % 20);
		uint32_t experts = 1 + (uint32_t)(trng_next(&r) % 300);
		struct moe_plan_opts o = { 0 };
		uint64_t bytes[32];
		uint32_t all = 0;
		struct moe_topo *t;
		struct moe_model *m;
		struct moe_plan *p;

		/* Now and then a node of memory only. */
		for (uint32_t i = 0; i < n; i++) {
			cores[i] = (uint32_t)(trng_next(&r) % 7);
			gib[i] = 1 + (uint32_t)(trng_next(&r) % 16);
			all += cores[i];
		}
		if (!all)
			all = cores[0] = 1;
		for (uint32_t l = 0; l < layers; l++)
			bytes[l] = 4096 + trng_next(&r) % (8u << 20);
		o.reserve_cores = (uint32_t)(trng_next(&r) % all);
		o.split = (enum moe_budget_split)(trng_next(&r) % 3);
		o.cache_bytes = trng_next(&r) % (64ull << 30);
		t = topo_of(write_xml_to(path, n, cores, gib));
		m = fake_model(layers, experts, bytes);
		p = plan_of(t, m, &o);
		check_all(p, t, m);
		moe_plan_free(p);
		free_model(m);
		moe_topo_close(t);
	}
}

/* A node without cores owns nothing and gets no budget: nothing could
 * compute its experts next to their memory. */
static void memory_only_node(void **s)
{
	static const uint32_t cores[3] = { 2, 0, 2 }, gib[3] = { 8, 64, 8 };
	char path[256];
	struct moe_topo *t = topo_of(write_xml(path, sizeof(path), 3, cores,
					       gib));
	struct moe_model *m = fake_model(4, 6, NULL);
	struct moe_plan_opts o = { .split = MOE_SPLIT_MEMORY,
				   .cache_bytes = 1ull << 30 };
	struct moe_plan *p = plan_of(t, m, &o);
	int cxl = moe_topo_node_index(t, 1);

	assert_int_equal(t->n_nodes, 3);
	assert_true(cxl >= 0);
	assert_int_equal(t->nodes[cxl].n_cores, 0);
	check_all(p, t, m);
	assert_int_equal(p->nodes[cxl].n_workers, 0);
	assert_int_equal(p->nodes[cxl].owned_bytes, 0);
	assert_int_equal(p->nodes[cxl].budget, 0);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

static void budget_splits(void **s)
{
	static const uint32_t cores[2] = { 2, 2 }, gib[2] = { 12, 4 };
	char path[256];
	struct moe_topo *t = topo_of(write_xml(path, sizeof(path), 2, cores,
					       gib));
	struct moe_model *m = fake_model(5, 16, NULL);
	struct moe_plan_opts o = { .cache_bytes = (4ull << 30) + 3 };
	struct moe_plan *p;

	o.split = MOE_SPLIT_MEMORY;
	p = plan_of(t, m, &o);
	check_budget(p, o.cache_bytes);
	/* 12 GiB against 4: three quarters, give or take the remainder. */
	assert_true(p->nodes[0].budget - 3 * p->nodes[1].budget < 8);
	moe_plan_free(p);

	o.split = MOE_SPLIT_EQUAL;
	p = plan_of(t, m, &o);
	check_budget(p, o.cache_bytes);
	assert_true(p->nodes[0].budget - p->nodes[1].budget <= 1);
	moe_plan_free(p);

	o.split = MOE_SPLIT_OWNED;
	o.cache_bytes = 0; /* the whole model */
	p = plan_of(t, m, &o);
	check_budget(p, p->total_bytes);
	assert_int_equal(p->nodes[0].budget, p->nodes[0].owned_bytes);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* ---- cores: reservation, io thread ---- */

static void reserve_and_io_node(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(3, 8, NULL);
	struct moe_plan_opts o = { .reserve_cores = 3, .inject_device = true,
				   .device_node = 1 };
	struct moe_plan *p = plan_of(t, m, &o);
	cpu_set_t in1;

	check_all(p, t, m);
	assert_int_equal(p->n_workers, 5);
	assert_int_equal(p->io_node, 1);
	/* Reserved cores come from the device's node, the io thread gets
	 * one of them to itself. */
	CPU_AND(&in1, &p->reserved, &t->nodes[1].cpus);
	assert_true(CPU_EQUAL(&in1, &p->reserved));
	assert_true(p->io_reserved);
	assert_int_equal(CPU_COUNT(&p->io_cpus), 1);
	CPU_AND(&in1, &p->io_cpus, &p->reserved);
	assert_true(CPU_EQUAL(&in1, &p->io_cpus));
	moe_plan_free(p);

	/* No reservation: the io thread shares its node's cores. */
	o.reserve_cores = 0;
	p = plan_of(t, m, &o);
	assert_int_equal(p->io_node, 1);
	assert_false(p->io_reserved);
	assert_true(CPU_EQUAL(&p->io_cpus, &t->nodes[1].cpus));
	moe_plan_free(p);

	/* Unknown device: node 0. */
	o.device_node = -1;
	p = plan_of(t, m, &o);
	assert_int_equal(p->io_node, 0);
	assert_int_equal(p->device_node, -1);
	moe_plan_free(p);

	/* More reserved than one node has: the next node gives the rest. */
	o.reserve_cores = 6;
	o.device_node = 1;
	p = plan_of(t, m, &o);
	check_all(p, t, m);
	assert_int_equal(p->nodes[1].n_workers, 0);
	assert_int_equal(p->nodes[0].n_workers, 2);
	assert_int_equal(p->nodes[1].owned_bytes, 0);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

static void bad_options(void **s)
{
	struct moe_topo *t = topo_of("numa:2 core:2 pu:1");
	struct moe_model *m = fake_model(2, 4, NULL);
	struct moe_plan_opts o = { .reserve_cores = 4 };
	struct moe_msg err = { "" };
	struct moe_topo_opts to = { .topology = "nonsense:3" };
	struct moe_plan *p = NULL;
	struct moe_topo *bad = NULL;

	assert_int_equal(moe_plan_new(&p, t, m, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "reserve"));
	o.reserve_cores = 0;
	o.inject_device = true;
	o.device_node = 2;
	assert_int_equal(moe_plan_new(&p, t, m, &o, &err), -EINVAL);
	assert_non_null(strstr(err.text, "device node"));
	assert_int_equal(moe_topo_open(&bad, &to, &err), -EINVAL);
	assert_non_null(strstr(err.text, "nonsense"));
	free_model(m);
	moe_topo_close(t);
}

/* ---- load: swaps, copies, cooling ---- */

static void feed_layer(struct moe_plan *p, uint32_t l, uint32_t hot_e,
		       uint32_t hot, uint32_t cold)
{
	uint32_t c[MOE_MAX_EXPERTS];

	for (uint32_t e = 0; e < p->layers[l].n_expert; e++)
		c[e] = e == hot_e ? hot : cold;
	moe_plan_feed(p, l, c);
}

static void owned_counts(const struct moe_plan *p, uint32_t l, uint32_t *c)
{
	memset(c, 0, p->n_nodes * sizeof(*c));
	for (uint32_t e = 0; e < p->layers[l].n_expert; e++)
		c[p->layers[l].owner[e]]++;
}

/* All the load on node 0's experts: swaps move half of it over, and the
 * number of experts (so bytes) per node stays. */
static void swaps_balance_load(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(3, 16, NULL);
	struct moe_plan *p = plan_of(t, m, NULL);
	struct moe_plan_change ch = { 0 };
	uint32_t before[2], after[2], c[16];

	for (uint32_t e = 0; e < 16; e++)
		c[e] = p->layers[1].owner[e] == 0 ? 100 + e : 1;
	owned_counts(p, 1, before);
	moe_plan_feed(p, 1, c);
	moe_plan_rebalance(p, &ch);
	owned_counts(p, 1, after);
	assert_true(ch.swaps > 0);
	assert_int_equal(ch.copies_added, 0);
	assert_memory_equal(before, after, sizeof(before));
	assert_true(moe_plan_imbalance(p, 1) <= p->o.imbalance);
	check_all(p, t, m);
	/* Layer 2 was fed nothing and stays as planned. */
	assert_true(moe_plan_imbalance(p, 2) == 1.0);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* Below the threshold nothing moves, though a swap would even it out:
 * moving an expert costs a read, small drifts are not worth one. */
static void small_drift_moves_nothing(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(2, 16, NULL);
	struct moe_plan_opts o = { .cache_bytes = 1ull << 30 };
	struct moe_plan *p = plan_of(t, m, &o);
	struct moe_plan_change ch = { 0 };
	uint8_t owner[16];
	uint32_t c[16];

	for (uint32_t e = 0; e < 16; e++)
		c[e] = p->layers[1].owner[e] == 0 ? 110 : 90;
	memcpy(owner, p->layers[1].owner, sizeof(owner));
	moe_plan_feed(p, 1, c);
	moe_plan_rebalance(p, &ch);
	assert_true(moe_plan_imbalance(p, 1) > 1.05);
	assert_true(moe_plan_imbalance(p, 1) <= p->o.imbalance);
	assert_int_equal(ch.swaps + ch.copies_added + ch.copies_dropped, 0);
	assert_memory_equal(owner, p->layers[1].owner, sizeof(owner));
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* One expert takes most tokens: no swap can help, a copy does; the copy
 * survives a first cooler round (hysteresis) and goes once the expert's
 * load falls below the cool threshold. */
static void copies_made_and_dropped(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(4, 8, NULL);
	struct moe_plan_opts o = { .cache_bytes = 1ull << 30 };
	struct moe_plan *p = plan_of(t, m, &o);
	struct moe_plan_change ch = { 0 };
	uint32_t owner, other, rows = 512, rounds = 0;

	feed_layer(p, 2, 3, 1000, 10);
	owner = p->layers[2].owner[3];
	other = 1 - owner;
	moe_plan_rebalance(p, &ch);
	assert_true(ch.copies_added >= 1);
	assert_true(moe_plan_holds(p, 2, 3, other));
	assert_int_equal(p->layers[2].owner[3], owner);
	/* Without the copy: (1000 + 3 * 10) / 4 per worker against a mean
	 * of 1070 / 8, 1.93; with it (500 + 40) / 4 at most, 1.01. */
	assert_true(moe_plan_imbalance(p, 2) < 1.05);
	assert_int_equal(p->nodes[other].replica_bytes, 3u << 20);
	check_budget(p, o.cache_bytes);
	/* Rows are split between the holders, owner first. */
	assert_int_equal(moe_plan_node_of_rows(p, 2, 3, 0, rows), owner);
	assert_int_equal(moe_plan_node_of_rows(p, 2, 3, rows / 2 - 64, rows),
			 owner);
	assert_int_equal(moe_plan_node_of_rows(p, 2, 3, rows / 2, rows), other);
	assert_int_equal(moe_plan_node_of_rows(p, 2, 3, rows - 1, rows), other);

	/* Uniform load from now on. */
	feed_layer(p, 2, 3, 10, 10);
	moe_plan_rebalance(p, &ch);
	assert_true(moe_plan_holds(p, 2, 3, other));
	while (p->layers[2].copies[3] && rounds++ < 30) {
		feed_layer(p, 2, 3, 10, 10);
		moe_plan_rebalance(p, &ch);
	}
	assert_int_equal(p->layers[2].copies[3], 0);
	assert_true(rounds > 1 && rounds < 30);
	assert_int_equal(ch.copies_dropped, ch.copies_added);
	assert_int_equal(p->nodes[other].replica_bytes, 0);
	assert_int_equal(moe_plan_node_of_rows(p, 2, 3, rows - 1, rows), owner);
	check_all(p, t, m);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* The budget's replica share is a hard cap: with no room, no copy. */
static void copies_need_budget(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(2, 8, NULL);
	struct moe_plan_opts o = { .cache_bytes = 8u << 20 };
	struct moe_plan *p = plan_of(t, m, &o);
	struct moe_plan_change ch = { 0 };

	/* 4 MiB per node, 10% for copies: less than one 3 MiB expert. */
	feed_layer(p, 1, 0, 1000, 1);
	moe_plan_rebalance(p, &ch);
	assert_int_equal(ch.copies_added, 0);
	assert_int_equal(p->layers[1].copies[0], 0);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* ---- topologies from the environment and from this machine ---- */

static void environment_topologies(void **s)
{
	static const uint32_t cores[3] = { 1, 2, 3 }, gib[3] = { 1, 1, 1 };
	struct moe_msg err = { "" };
	char path[256];
	struct moe_topo *t;

	setenv("HWLOC_SYNTHETIC", "numa:3 core:2 pu:2", 1);
	t = topo_of(NULL);
	assert_int_equal(t->n_nodes, 3);
	assert_int_equal(t->n_cores, 6);
	assert_int_equal(CPU_COUNT(&t->cores[0].cpus), 2);
	assert_false(t->this_system);
	assert_non_null(strstr(t->source, "synthetic"));
	moe_topo_close(t);
	/* An explicit topology wins over the environment. */
	t = topo_of("numa:2 core:1 pu:1");
	assert_int_equal(t->n_nodes, 2);
	moe_topo_close(t);
	/* A value hwloc refuses is an error, not the real machine. */
	setenv("HWLOC_SYNTHETIC", "bogus:2", 1);
	assert_int_equal(moe_topo_open(&t, NULL, &err), -EINVAL);
	assert_non_null(strstr(err.text, "bogus"));
	unsetenv("HWLOC_SYNTHETIC");

	setenv("HWLOC_XMLFILE", write_xml(path, sizeof(path), 3, cores, gib), 1);
	t = topo_of(NULL);
	assert_int_equal(t->n_nodes, 3);
	assert_int_equal(t->nodes[2].n_cores, 3);
	assert_false(t->this_system);
	moe_topo_close(t);
	unsetenv("HWLOC_XMLFILE");
}

/* This machine, with a file on its disk: the device's node is known or
 * its reason is said; the plan is the degenerate one on one node. */
static void this_machine(void **s)
{
	char path[256];
	struct moe_topo_opts o = { .device_path = tmp_path(path, sizeof(path),
							   "dev") };
	struct moe_msg err = { "" };
	struct moe_model *m = fake_model(3, 8, NULL);
	struct moe_topo *t;
	struct moe_plan *p;

	if (moe_topo_open(&t, &o, &err))
		fail_msg("%s", err.text);
	assert_true(t->this_system);
	assert_true(t->n_cores >= 1);
	assert_true(t->device[0] != '\0');
	assert_true(t->device_node >= -1 && t->device_node < (int)t->n_nodes);
	print_message("this machine: %u node(s), %u core(s); device: node %d (%s)\n",
		      t->n_nodes, t->n_cores, t->device_node, t->device);
	p = plan_of(t, m, NULL);
	check_all(p, t, m);
	assert_true(p->bind);
	assert_int_equal(p->numa, t->numa_ok);
	assert_int_equal(p->io_node,
			 t->device_node >= 0 ? (uint32_t)t->device_node : 0);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

static void print_shows_plan(void **s)
{
	struct moe_topo *t = topo_of("pack:2 numa:1 core:4 pu:1");
	struct moe_model *m = fake_model(4, 8, NULL);
	struct moe_plan_opts o = { .reserve_cores = 1, .cache_bytes = 1ull << 30 };
	struct moe_plan *p = plan_of(t, m, &o);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	feed_layer(p, 1, 0, 1000, 10);
	moe_plan_rebalance(p, NULL);
	moe_plan_print(f, p, t);
	fclose(f);
	assert_non_null(strstr(buf, "synthetic \"pack:2 numa:1 core:4 pu:1\""));
	assert_non_null(strstr(buf, "node 1"));
	/* 3 workers against 4: the odd expert alternates between layers. */
	assert_non_null(strstr(buf, "layer 1 (8 x 3.0 MiB): node 0 3 (9.0 MiB) node 1 5 (15.0 MiB)"));
	assert_non_null(strstr(buf, "layer 1 expert 0"));
	assert_non_null(strstr(buf, "reserved     1 core: cpus 3"));
	assert_non_null(strstr(buf, "io thread    node 0, cpus 3"));
	free(buf);
	moe_plan_free(p);
	free_model(m);
	moe_topo_close(t);
}

/* The tool's option on a real file, on a synthetic machine. */
static void tool_print_plan(void **s)
{
	char model[256], out[256];
	FILE *f;
	char line[512];
	int nodes = 0;

	tmp_path(model, sizeof(model), "model");
	tmp_path(out, sizeof(out), "plan");
	assert_int_equal(run_cmd("%s/moe-gen %s -q --arch qwen3moe --layers 3 --experts 8 --top-k 2 --embd 256 --ff 256",
				 bin_dir(), model), 0);
	assert_int_equal(run_cmd("%s/moe-layer %s --print-plan --topology 'numa:2 core:2 pu:1' --reserve-cores 1 > %s",
				 bin_dir(), model, out), 0);
	f = fopen(out, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		nodes += strncmp(line, "  node ", 7) == 0;
	fclose(f);
	assert_true(nodes >= 6); /* topology, budget and workers per node */
	assert_int_not_equal(run_cmd("%s/moe-layer %s --print-plan --reserve-cores 4096 2>/dev/null",
				     bin_dir(), model), 0);
}

/* ---- memory placement ---- */

/* Every page of a node-local buffer is on its node: get_mempolicy per
 * page. With one node that is all there is to check, and the test says
 * so. */
static void check_pages(const char *what, uint8_t *p, size_t size,
			int os_node)
{
	long pg = sysconf(_SC_PAGESIZE);

	memset(p, 0x5a, size); /* first touch places the pages */
	for (size_t off = 0; off < size; off += (size_t)pg) {
		int got = moe_topo_node_of_addr(p + off);

		if (got != os_node)
			fail_msg("%s: page at +%zu on node %d, wanted %d", what,
				 off, got, os_node);
	}
}

static void memory_on_node(void **s)
{
	struct moe_topo *t = topo_of(NULL);
	size_t size = 8u << 20;

	if (!t->this_system || !t->numa_ok) {
		print_message("no NUMA support here: placement not checked\n");
		moe_topo_close(t);
		skip();
	}
	for (uint32_t n = 0; n < t->n_nodes; n++) {
		uint32_t os = t->nodes[n].os_index;
		void *slab, *scratch;

		assert_int_equal(moe_topo_alloc(&slab, size, (int)os), 0);
		check_pages("slab", slab, size, (int)os);
		moe_topo_free(slab, size);
		assert_int_equal(moe_topo_scratch_alloc(&scratch, size, (int)os), 0);
		assert_int_equal((uintptr_t)scratch % 64, 0);
		check_pages("scratch", scratch, size, (int)os);
		moe_topo_scratch_free(scratch);
	}
	if (t->n_nodes == 1)
		print_message("one NUMA node: checked placement on node 0 only\n");
	else
		print_message("%u NUMA nodes: placement checked on each\n",
			      t->n_nodes);
	moe_topo_close(t);
}

static void arenas_per_node(void **s)
{
	unsigned a0, a0b, a1;
	void *p;

	assert_int_equal(moe_topo_arena(0, &a0), 0);
	assert_int_equal(moe_topo_arena(0, &a0b), 0);
	assert_int_equal(moe_topo_arena(1, &a1), 0);
	assert_int_equal(a0, a0b);
	assert_int_not_equal(a0, a1);
	/* No node: jemalloc's own arenas; still freed the same way. */
	assert_int_equal(moe_topo_scratch_alloc(&p, 1000, -1), 0);
	moe_topo_scratch_free(p);
}

static void cpuset_strings(void **s)
{
	cpu_set_t c;
	char buf[64], tiny[16];

	CPU_ZERO(&c);
	assert_string_equal(moe_cpuset_str(&c, buf, sizeof(buf)), "");
	for (int i = 0; i < 4; i++)
		CPU_SET(i, &c);
	CPU_SET(8, &c);
	CPU_SET(10, &c);
	CPU_SET(11, &c);
	assert_string_equal(moe_cpuset_str(&c, buf, sizeof(buf)), "0-3,8,10-11");
	for (int i = 20; i < 200; i += 2)
		CPU_SET(i, &c);
	moe_cpuset_str(&c, tiny, sizeof(tiny));
	assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
	assert_string_equal(tiny + sizeof(tiny) - 4, "...");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(two_nodes_by_four),
		cmocka_unit_test(four_nodes_by_two),
		cmocka_unit_test(unequal_nodes_xml),
		cmocka_unit_test(balance_property),
		cmocka_unit_test(memory_only_node),
		cmocka_unit_test(budget_splits),
		cmocka_unit_test(reserve_and_io_node),
		cmocka_unit_test(bad_options),
		cmocka_unit_test(swaps_balance_load),
		cmocka_unit_test(small_drift_moves_nothing),
		cmocka_unit_test(copies_made_and_dropped),
		cmocka_unit_test(copies_need_budget),
		cmocka_unit_test(environment_topologies),
		cmocka_unit_test(this_machine),
		cmocka_unit_test(print_shows_plan),
		cmocka_unit_test(tool_print_plan),
		cmocka_unit_test(memory_on_node),
		cmocka_unit_test(arenas_per_node),
		cmocka_unit_test(cpuset_strings),
	};

	/* A synthetic topology in the caller's environment would turn the
	 * "this machine" tests into something else. */
	unsetenv("HWLOC_SYNTHETIC");
	unsetenv("HWLOC_XMLFILE");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
