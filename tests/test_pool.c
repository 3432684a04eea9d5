/* Worker pool: every task runs exactly once, results do not depend on the
 * number of workers, node-restricted jobs stay on their node's workers,
 * pinned workers run on their plan's CPUs. Also run under TSan
 * (make test-tsan). */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plan.h"
#include "pool.h"
#include "testutil.h"
#include "topo.h"

/* ---- exactly once ---- */

/* Tasks run on workers' threads, where cmocka's asserts cannot jump:
 * they count what they see and the main thread asserts. */
struct once {
	_Atomic uint32_t *runs;
	_Atomic uint32_t *worker_of; /* last worker, +1 */
	uint32_t workers;
	_Atomic uint32_t bad;       /* worker index out of range */
};

static void once_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct once *o = ctx;

	if (worker >= o->workers)
		atomic_fetch_add_explicit(&o->bad, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&o->runs[task], 1, memory_order_relaxed);
	atomic_store_explicit(&o->worker_of[task], worker + 1,
			      memory_order_relaxed);
}

static void check_once(struct moe_pool *p, uint32_t n,
		       const uint32_t *node_of)
{
	struct once o = { calloc(n + 1, sizeof(*o.runs)),
			  calloc(n + 1, sizeof(*o.worker_of)),
			  moe_pool_workers(p), 0 };

	if (node_of)
		moe_pool_run_nodes(p, n, node_of, once_task, &o);
	else
		moe_pool_run(p, n, once_task, &o);
	assert_int_equal(o.bad, 0);
	for (uint32_t t = 0; t < n; t++)
		if (o.runs[t] != 1)
			fail_msg("task %u of %u ran %u times", t, n,
				 (unsigned)o.runs[t]);
	free((void *)o.runs);
	free((void *)o.worker_of);
}

static void every_task_once(void **s)
{
	static const uint32_t sizes[] = { 0, 1, 2, 3, 7, 64, 1000, 4097 };
	static const uint32_t workers[] = { 1, 2, 3, 8 };

	for (size_t w = 0; w < sizeof(workers) / sizeof(workers[0]); w++) {
		struct moe_pool *p;

		assert_int_equal(moe_pool_new(&p, workers[w]), 0);
		assert_int_equal(moe_pool_workers(p), workers[w]);
		assert_int_equal(moe_pool_worker_node(p, 0), MOE_POOL_ANY);
		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
			check_once(p, sizes[i], NULL);
		moe_pool_free(p);
	}
	assert_int_equal(moe_pool_new(&(struct moe_pool *){ NULL }, 0),
			 -EINVAL);
}

/* ---- same results, any worker count ---- */

#define CHUNK 257
#define N_VALS (CHUNK * 61 + 13)

struct sum_job {
	const float *x;
	float *part; /* per task */
	float **scratch; /* per worker */
};

/* A float reduction over a fixed chunk: its rounding depends on the
 * chunk only, never on which worker ran it. */
static void sum_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct sum_job *j = ctx;
	uint32_t a = task * CHUNK, b = a + CHUNK < N_VALS ? a + CHUNK : N_VALS;
	float *scr = j->scratch[worker];
	float acc = 0;

	for (uint32_t i = a; i < b; i++) {
		scr[i - a] = sinf(j->x[i]) * j->x[i];
		acc += scr[i - a];
	}
	j->part[task] = acc;
}

static float sum_with(uint32_t workers, const float *x, bool by_node)
{
	uint32_t n_tasks = (N_VALS + CHUNK - 1) / CHUNK, nodes[64];
	struct moe_pool_pin pins[8];
	struct sum_job j = { x, calloc(n_tasks, sizeof(float)),
			     calloc(workers, sizeof(float *)) };
	struct moe_pool *p;
	float total = 0;

	for (uint32_t w = 0; w < workers; w++) {
		pins[w].node = w % 2;
		CPU_ZERO(&pins[w].cpus);
		/* A node's arena: the call the engine makes per worker
		 * (node 0 is the one node every machine has). */
		assert_int_equal(moe_topo_scratch_alloc((void **)&j.scratch[w],
							CHUNK * sizeof(float),
							0), 0);
	}
	for (uint32_t t = 0; t < n_tasks; t++)
		nodes[t] = t % 3;
	assert_int_equal(by_node ? moe_pool_new_pinned(&p, workers, pins) :
				   moe_pool_new(&p, workers), 0);
	if (by_node)
		moe_pool_run_nodes(p, n_tasks, nodes, sum_task, &j);
	else
		moe_pool_run(p, n_tasks, sum_task, &j);
	for (uint32_t t = 0; t < n_tasks; t++)
		total += j.part[t];
	moe_pool_free(p);
	for (uint32_t w = 0; w < workers; w++)
		moe_topo_scratch_free(j.scratch[w]);
	free(j.part);
	free(j.scratch);
	return total;
}

static void same_result_any_thread_count(void **s)
{
	struct trng r = { 7 };
	float *x = malloc(N_VALS * sizeof(float));
	float ref;

	trng_fill(&r, x, N_VALS, -3, 3);
	ref = sum_with(1, x, false);
	for (uint32_t w = 1; w <= 8; w++) {
		float a = sum_with(w, x, false), b = sum_with(w, x, true);

		if (memcmp(&a, &ref, sizeof(a)) || memcmp(&b, &ref, sizeof(b)))
			fail_msg("%u workers: %.9g / %.9g, 1 worker: %.9g", w,
				 a, b, ref);
	}
	free(x);
}

/* ---- node-restricted runs ---- */

static struct moe_pool *node_pool(uint32_t workers, const uint32_t *node)
{
	struct moe_pool_pin pins[16];
	struct moe_pool *p;

	for (uint32_t w = 0; w < workers; w++) {
		pins[w].node = node[w];
		CPU_ZERO(&pins[w].cpus);
	}
	assert_int_equal(moe_pool_new_pinned(&p, workers, pins), 0);
	return p;
}

/* Tasks for nodes 0-2 run on their node's workers only; tasks for node
 * 3 (no workers), node 99 and MOE_POOL_ANY run anywhere. */
static void node_restricted(void **s)
{
	static const uint32_t node[6] = { 0, 0, 1, 1, 2, MOE_POOL_ANY };
	static const uint32_t pick[6] = { 0, 1, 2, 3, 99, MOE_POOL_ANY };
	struct trng r = { 3 };
	struct moe_pool *p = node_pool(6, node);

	for (int round = 0; round < 50; round++) {
		uint32_t n = (uint32_t)(trng_next(&r) % 600);
		uint32_t *of = malloc((n + 1) * sizeof(*of));
		struct once o = { calloc(n + 1, sizeof(*o.runs)),
				  calloc(n + 1, sizeof(*o.worker_of)), 6, 0 };

		for (uint32_t t = 0; t < n; t++)
			of[t] = pick[trng_next(&r) % 6];
		moe_pool_run_nodes(p, n, of, once_task, &o);
		for (uint32_t t = 0; t < n; t++) {
			uint32_t w = o.worker_of[t] - 1;

			assert_int_equal(o.runs[t], 1);
			if (of[t] <= 2)
				assert_int_equal(moe_pool_worker_node(p, w),
						 of[t]);
		}
		free(of);
		free((void *)o.runs);
		free((void *)o.worker_of);
	}
	moe_pool_free(p);
}

/* The caller is worker 0 on node 0: a job all for node 1 runs on the
 * other workers while the caller waits, even a single task. */
static void caller_not_on_node(void **s)
{
	static const uint32_t node[3] = { 0, 1, 1 };
	struct moe_pool *p = node_pool(3, node);
	uint32_t of[40];
	struct once o = { calloc(40, sizeof(*o.runs)),
			  calloc(40, sizeof(*o.worker_of)), 3, 0 };

	for (uint32_t t = 0; t < 40; t++)
		of[t] = 1;
	for (uint32_t n = 1; n <= 40; n += 39) {
		moe_pool_run_nodes(p, n, of, once_task, &o);
		for (uint32_t t = 0; t < n; t++)
			assert_int_not_equal(o.worker_of[t] - 1, 0);
	}
	/* A plain pool ignores nodes and still runs everything. */
	moe_pool_free(p);
	assert_int_equal(moe_pool_new(&p, 3), 0);
	check_once(p, 40, of);
	moe_pool_free(p);
	free((void *)o.runs);
	free((void *)o.worker_of);
	/* A node past the limit is refused. */
	{
		static const uint32_t bad[2] = { 0, MOE_POOL_MAX_NODES };
		struct moe_pool_pin pins[2] = { { .node = bad[0] },
						{ .node = bad[1] } };

		assert_int_equal(moe_pool_new_pinned(&p, 2, pins), -EINVAL);
	}
}

/* Many short jobs back to back, both kinds interleaved: generations,
 * queue resets and the completion handshake under TSan. */
static void many_generations(void **s)
{
	static const uint32_t node[4] = { 0, 1, 0, 1 };
	struct moe_pool *p = node_pool(4, node);
	uint32_t of[33];

	for (uint32_t t = 0; t < 33; t++)
		of[t] = t % 2;
	for (int i = 0; i < 2000; i++) {
		if (i % 2)
			check_once(p, (uint32_t)(i % 33), of);
		else
			check_once(p, (uint32_t)(i % 33), NULL);
	}
	moe_pool_free(p);
}

/* ---- pinning ---- */

struct affinity {
	const struct moe_pool_pin *pins;
	_Atomic uint32_t bad;
	_Atomic uint32_t seen; /* bit per worker */
};

static void affinity_task(void *ctx, uint32_t task, uint32_t worker)
{
	struct affinity *a = ctx;
	cpu_set_t mine;

	if (sched_getaffinity(0, sizeof(mine), &mine) ||
	    !CPU_EQUAL(&mine, &a->pins[worker].cpus))
		atomic_fetch_add_explicit(&a->bad, 1, memory_order_relaxed);
	atomic_fetch_or_explicit(&a->seen, 1u << (worker % 32),
				 memory_order_relaxed);
}

/* This machine's plan, its pins applied: every task sees exactly its
 * worker's CPUs; the caller's CPUs come back when the pool goes. */
static void pinning_applied(void **s)
{
	struct moe_model m = { 0 };
	struct moe_topo *t;
	struct moe_plan *plan;
	struct moe_pool_pin *pins;
	struct moe_pool *p;
	struct affinity a = { 0 };
	struct moe_msg err = { "" };
	cpu_set_t before, after;

	unsetenv("HWLOC_SYNTHETIC");
	unsetenv("HWLOC_XMLFILE");
	assert_int_equal(moe_topo_open(&t, NULL, &err), 0);
	assert_true(t->this_system);
	assert_int_equal(moe_plan_new(&plan, t, &m, NULL, &err), 0);
	pins = calloc(plan->n_workers, sizeof(*pins));
	moe_plan_pins(plan, pins);
	for (uint32_t w = 0; w < plan->n_workers; w++) {
		assert_true(CPU_COUNT(&pins[w].cpus) > 0);
		assert_int_equal(pins[w].node, plan->workers[w].node);
	}
	assert_int_equal(sched_getaffinity(0, sizeof(before), &before), 0);
	assert_int_equal(moe_pool_new_pinned(&p, plan->n_workers, pins), 0);
	a.pins = pins;
	/* Enough tasks, long enough, that every worker takes some. */
	for (int i = 0; i < 200 && a.seen != (1u << plan->n_workers) - 1; i++)
		moe_pool_run(p, 64 * plan->n_workers, affinity_task, &a);
	assert_int_equal(a.bad, 0);
	assert_int_equal(a.seen, (1u << plan->n_workers) - 1);
	moe_pool_free(p);
	assert_int_equal(sched_getaffinity(0, sizeof(after), &after), 0);
	assert_true(CPU_EQUAL(&before, &after));
	print_message("%u workers pinned as the plan says\n", plan->n_workers);
	free(pins);
	moe_plan_free(plan);
	moe_topo_close(t);
}

/* CPUs the machine does not have are refused, not silently ignored. */
static void pinning_refused(void **s)
{
	struct moe_pool_pin pins[2] = { { .node = 0 }, { .node = 0 } };
	struct moe_pool *p = NULL;

	CPU_ZERO(&pins[0].cpus);
	CPU_ZERO(&pins[1].cpus);
	CPU_SET(CPU_SETSIZE - 1, &pins[1].cpus);
	assert_int_equal(moe_pool_new_pinned(&p, 2, pins), -EINVAL);
	assert_null(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_task_once),
		cmocka_unit_test(same_result_any_thread_count),
		cmocka_unit_test(node_restricted),
		cmocka_unit_test(caller_not_on_node),
		cmocka_unit_test(many_generations),
		cmocka_unit_test(pinning_applied),
		cmocka_unit_test(pinning_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
