/* Worker pool: a generation counter under a mutex starts a job, an atomic
 * counter hands out its tasks, and the mutex again reports completion, so
 * every task's writes are visible to the caller when run() returns. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "pool.h"

struct moe_pool {
	pthread_mutex_t lock;
	pthread_cond_t start; /* a new generation, or stop */
	pthread_cond_t done;  /* running reached 0 */
	uint64_t gen;
	uint32_t running; /* threads still in the current job */
	bool stop;
	moe_task_fn fn;
	void *ctx;
	uint32_t n_tasks;
	_Atomic uint32_t next; /* next task to hand out */
	uint32_t workers;
	uint32_t n_threads;
	pthread_t *threads;
};

struct worker_arg {
	struct moe_pool *p;
	uint32_t id;
};

static void drain(struct moe_pool *p, moe_task_fn fn, void *ctx,
		  uint32_t n_tasks, uint32_t id)
{
	uint32_t t;

	/* Relaxed: the job itself was published under the lock. */
	while ((t = atomic_fetch_add_explicit(&p->next, 1,
					      memory_order_relaxed)) < n_tasks)
		fn(ctx, t, id);
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
		void *ctx;
		uint32_t n;

		while (p->gen == seen && !p->stop)
			pthread_cond_wait(&p->start, &p->lock);
		if (p->stop)
			break;
		seen = p->gen;
		fn = p->fn;
		ctx = p->ctx;
		n = p->n_tasks;
		pthread_mutex_unlock(&p->lock);
		drain(p, fn, ctx, n, id);
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

int moe_pool_new(struct moe_pool **out, uint32_t workers)
{
	struct moe_pool *p;
	int rc = 0;

	if (workers < 1)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->start, NULL);
	pthread_cond_init(&p->done, NULL);
	p->workers = workers;
	p->threads = calloc(workers, sizeof(*p->threads));
	if (!p->threads) {
		rc = -ENOMEM;
		goto err;
	}
	for (uint32_t i = 1; i < workers; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));

		if (!wa) {
			rc = -ENOMEM;
			goto err;
		}
		wa->p = p;
		wa->id = i;
		rc = -pthread_create(&p->threads[p->n_threads], NULL,
				     worker_main, wa);
		if (rc) {
			free(wa);
			goto err;
		}
		p->n_threads++;
	}
	*out = p;
	return 0;
err:
	moe_pool_free(p);
	return rc;
}

void moe_pool_run(struct moe_pool *p, uint32_t n_tasks, moe_task_fn fn,
		  void *ctx)
{
	if (p->n_threads == 0 || n_tasks <= 1) {
		for (uint32_t t = 0; t < n_tasks; t++)
			fn(ctx, t, 0);
		return;
	}
	pthread_mutex_lock(&p->lock);
	p->fn = fn;
	p->ctx = ctx;
	p->n_tasks = n_tasks;
	atomic_store_explicit(&p->next, 0, memory_order_relaxed);
	p->running = p->n_threads;
	p->gen++;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->lock);

	drain(p, fn, ctx, n_tasks, 0);

	pthread_mutex_lock(&p->lock);
	while (p->running > 0)
		pthread_cond_wait(&p->done, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

uint32_t moe_pool_workers(const struct moe_pool *p)
{
	return p->workers;
}

void moe_pool_free(struct moe_pool *p)
{
	if (!p)
		return;
	stop_threads(p);
	pthread_cond_destroy(&p->done);
	pthread_cond_destroy(&p->start);
	pthread_mutex_destroy(&p->lock);
	free(p->threads);
	free(p);
}
