/* Worker pool: runs n tasks of one function across a fixed set of
 * threads, the caller included, and returns when all are done. Which
 * worker runs a task never changes its result: callers split work into
 * tasks whose boundaries do not depend on the number of workers. */
#ifndef MOE_POOL_H
#define MOE_POOL_H

#include <stdint.h>

struct moe_pool;

/* task in [0, n_tasks); worker in [0, workers): index per-worker scratch. */
typedef void (*moe_task_fn)(void *ctx, uint32_t task, uint32_t worker);

/* workers >= 1 counts the caller, so workers - 1 threads are started.
 * 0 or -errno. */
int moe_pool_new(struct moe_pool **out, uint32_t workers);

void moe_pool_run(struct moe_pool *p, uint32_t n_tasks, moe_task_fn fn,
		  void *ctx);

uint32_t moe_pool_workers(const struct moe_pool *p);

void moe_pool_free(struct moe_pool *p);

#endif
