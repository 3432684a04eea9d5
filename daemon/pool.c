/* Worker pool: a generation counter under a mutex starts a job, atomic
 * counters hand out its tasks (one queue per node, one for any worker),
 * and the mutex again reports completion, so every task's writes are
 * visible to the caller when run() returns. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define ANYQ MOE_POOL_MAX_NODES /* the queue any worker drains */
#define N_QUEUES (MOE_POOL_MAX_NODES + 1)

/* Tasks order[start .. start+len) (or start .. start+len themselves when
 * the job has no order). start and len are written by the caller before
 * the job is published under the lock; next is the only field workers
 * write, on a line of its own so that nodes do not share one. */
struct queue {
	_Atomic uint32_t next;
	uint32_t start, len;
} __attribute__((aligned(64)));

struct moe_pool {
	pthread_mutex_t lock;
	pthread_cond_t start; /* a new generation, or stop */
	pthread_cond_t done;  /* running reached 0 */
	uint64_t gen;
	uint32_t running; /* threads still in the current job */
	bool stop;
	/* The job, published under lock with gen. */
	moe_task_fn fn;
	void *ctx;
	bool by_node;          /* workers drain their node's queue first */
	const uint32_t *order; /* NULL: tasks in queue order */
	struct queue *queues;  /* N_QUEUES */
	uint32_t *order_buf;
	uint32_t cap_order;
	uint32_t workers;
	uint32_t n_threads;
	pthread_t *threads;
	uint32_t *node;        /* per worker */
	uint32_t workers_on[MOE_POOL_MAX_NODES];
	bool has_nodes;        /* some worker was given a node */
	bool caller_pinned;
	pthread_t creator;
	cpu_set_t caller_cpus; /* to restore */
};

struct worker_arg {
	struct moe_pool *p;
	uint32_t id;
};

static void drain_queue(struct queue *q, const uint32_t *order,
			moe_task_fn fn, void *ctx, uint32_t id)
{
	uint32_t i;

	/* Relaxed: the job itself was published under the lock. */
	while ((i = atomic_fetch_add_explicit(&q->next, 1,
					      memory_order_relaxed)) < q->len)
		fn(ctx, order ? order[q->start + i] : q->start + i, id);
}

static void drain(struct moe_pool *p, moe_task_fn fn, void *ctx,
		  bool by_node, const uint32_t *order, uint32_t id)
{
	uint32_t node = p->node[id];

	if (by_node && node < MOE_POOL_MAX_NODES)
		drain_queue(&p->queues[node], order, fn, ctx, id);
	drain_queue(&p->queues[ANYQ], order, fn, ctx, id);
}

static void *worker_main(void *a)
{
	struct worker_arg *wa = a;
	struct moe_pool *p = wa->p;
	uint32_t id = wa->id;
	uint64_t seen = 0;

	free(wa);
	pthread_mutex_lock(&p->lock);
	for (;;) {
		moe_task_fn fn;
		const uint32_t *order;
		void *ctx;
		bool by_node;

		while (p->gen == seen && !p->stop)
			pthread_cond_wait(&p->start, &p->lock);
		if (p->stop)
			break;
		seen = p->gen;
		fn = p->fn;
		ctx = p->ctx;
		by_node = p->by_node;
		order = p->order;
		pthread_mutex_unlock(&p->lock);
		drain(p, fn, ctx, by_node, order, id);
		pthread_mutex_lock(&p->lock);
		if (--p->running == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void stop_threads(struct moe_pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->lock);
	for (uint32_t i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	p->n_threads = 0;
}

/* Started on its CPUs rather than moved there, so the thread's stack is
 * first touched on its own node. */
static int start_thread(struct moe_pool *p, uint32_t id,
			const struct moe_pool_pin *pin)
{
	struct worker_arg *wa = malloc(sizeof(*wa));
	pthread_attr_t attr;
	int rc;

	if (!wa)
		return -ENOMEM;
	wa->p = p;
	wa->id = id;
	pthread_attr_init(&attr);
	rc = pin && CPU_COUNT(&pin->cpus) ?
		pthread_attr_setaffinity_np(&attr, sizeof(pin->cpus),
					    &pin->cpus) : 0;
	if (!rc)
		rc = pthread_create(&p->threads[p->n_threads], &attr,
				    worker_main, wa);
	pthread_attr_destroy(&attr);
	if (rc) {
		free(wa);
		return -rc;
	}
	p->n_threads++;
	return 0;
}

static int pin_caller(struct moe_pool *p, const cpu_set_t *cpus)
{
	pthread_t self = pthread_self();
	int rc;

	if (!CPU_COUNT(cpus))
		return 0;
	rc = pthread_getaffinity_np(self, sizeof(p->caller_cpus),
				    &p->caller_cpus);
	if (!rc)
		rc = pthread_setaffinity_np(self, sizeof(*cpus), cpus);
	if (rc)
		return -rc;
	p->caller_pinned = true;
	p->creator = self;
	return 0;
}

static int set_nodes(struct moe_pool *p, const struct moe_pool_pin *pins)
{
	for (uint32_t w = 0; w < p->workers; w++) {
		uint32_t n = pins ? pins[w].node : MOE_POOL_ANY;

		if (n != MOE_POOL_ANY && n >= MOE_POOL_MAX_NODES)
			return -EINVAL;
		p->node[w] = n;
		if (n != MOE_POOL_ANY) {
			p->workers_on[n]++;
			p->has_nodes = true;
		}
	}
	return 0;
}

static struct moe_pool *pool_alloc(uint32_t workers)
{
	struct moe_pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->start, NULL);
	pthread_cond_init(&p->done, NULL);
	p->workers = workers;
	p->threads = calloc(workers, sizeof(*p->threads));
	p->node = calloc(workers, sizeof(*p->node));
	p->queues = aligned_alloc(64, N_QUEUES * sizeof(*p->queues));
	if (!p->threads || !p->node || !p->queues) {
		moe_pool_free(p);
		return NULL;
	}
	memset(p->queues, 0, N_QUEUES * sizeof(*p->queues));
	return p;
}

int moe_pool_new_pinned(struct moe_pool **out, uint32_t workers,
			const struct moe_pool_pin *pins)
{
	struct moe_pool *p;
	int rc;

	if (workers < 1)
		return -EINVAL;
	p = pool_alloc(workers);
	if (!p)
		return -ENOMEM;
	rc = set_nodes(p, pins);
	if (!rc && pins)
		rc = pin_caller(p, &pins[0].cpus);
	for (uint32_t i = 1; !rc && i < workers; i++)
		rc = start_thread(p, i, pins ? &pins[i] : NULL);
	if (rc)
		goto err;
	*out = p;
	return 0;
err:
	moe_pool_free(p);
	return rc;
}

int moe_pool_new(struct moe_pool **out, uint32_t workers)
{
	return moe_pool_new_pinned(out, workers, NULL);
}

static void set_queue(struct queue *q, uint32_t start, uint32_t len)
{
	q->start = start;
	q->len = len;
	/* Relaxed: published with the job under the lock. */
	atomic_store_explicit(&q->next, 0, memory_order_relaxed);
}

/* Publish the job, take part in it, wait for the other workers. */
static void run_job(struct moe_pool *p, moe_task_fn fn, void *ctx,
		    bool by_node, const uint32_t *order)
{
	pthread_mutex_lock(&p->lock);
	p->fn = fn;
	p->ctx = ctx;
	p->by_node = by_node;
	p->order = order;
	p->running = p->n_threads;
	p->gen++;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->lock);

	drain(p, fn, ctx, by_node, order, 0);

	pthread_mutex_lock(&p->lock);
	while (p->running > 0)
		pthread_cond_wait(&p->done, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

void moe_pool_run(struct moe_pool *p, uint32_t n_tasks, moe_task_fn fn,
		  void *ctx)
{
	if (p->n_threads == 0 || n_tasks <= 1) {
		for (uint32_t t = 0; t < n_tasks; t++)
			fn(ctx, t, 0);
		return;
	}
	set_queue(&p->queues[ANYQ], 0, n_tasks);
	run_job(p, fn, ctx, false, NULL);
}

static uint32_t queue_of(const struct moe_pool *p, uint32_t node)
{
	return node < MOE_POOL_MAX_NODES && p->workers_on[node] ? node : ANYQ;
}

/* Counting sort of the tasks by queue: ascending task order within
 * each. 0 or -ENOMEM. */
static int group_tasks(struct moe_pool *p, uint32_t n_tasks,
		       const uint32_t *node_of_task)
{
	uint32_t fill[N_QUEUES] = { 0 };
	uint32_t pos = 0;

	if (n_tasks > p->cap_order) {
		uint32_t *o = realloc(p->order_buf, n_tasks * sizeof(*o));

		if (!o)
			return -ENOMEM;
		p->order_buf = o;
		p->cap_order = n_tasks;
	}
	for (uint32_t t = 0; t < n_tasks; t++)
		fill[queue_of(p, node_of_task[t])]++;
	for (uint32_t q = 0; q < N_QUEUES; q++) {
		set_queue(&p->queues[q], pos, fill[q]);
		pos += fill[q];
		fill[q] = p->queues[q].start;
	}
	for (uint32_t t = 0; t < n_tasks; t++)
		p->order_buf[fill[queue_of(p, node_of_task[t])]++] = t;
	return 0;
}

void moe_pool_run_nodes(struct moe_pool *p, uint32_t n_tasks,
			const uint32_t *node_of_task, moe_task_fn fn,
			void *ctx)
{
	/* One worker, or none bound to a node: nothing to restrict. */
	if (!node_of_task || p->n_threads == 0 || !p->has_nodes ||
	    group_tasks(p, n_tasks, node_of_task)) {
		moe_pool_run(p, n_tasks, fn, ctx);
		return;
	}
	run_job(p, fn, ctx, true, p->order_buf);
}

uint32_t moe_pool_workers(const struct moe_pool *p)
{
	return p->workers;
}

uint32_t moe_pool_worker_node(const struct moe_pool *p, uint32_t worker)
{
	return worker < p->workers ? p->node[worker] : MOE_POOL_ANY;
}

void moe_pool_free(struct moe_pool *p)
{
	if (!p)
		return;
	stop_threads(p);
	if (p->caller_pinned && pthread_equal(p->creator, pthread_self()))
		pthread_setaffinity_np(p->creator, sizeof(p->caller_cpus),
				       &p->caller_cpus);
	pthread_cond_destroy(&p->done);
	pthread_cond_destroy(&p->start);
	pthread_mutex_destroy(&p->lock);
	free(p->order_buf);
	free(p->node);
	free(p->queues);
	free(p->threads);
	free(p);
}
