/* Worker pool: runs n tasks of one function across a fixed set of
 * threads, the caller included, and returns when all are done. Which
 * worker runs a task never changes its result: callers split work into
 * tasks whose boundaries do not depend on the number of workers.
 *
 * A pinned pool knows each worker's CPUs and node, and can run a job
 * whose tasks are each restricted to the workers of one node (an
 * expert's rows computed next to the memory that holds them). */
#ifndef MOE_POOL_H
#define MOE_POOL_H

#include <sched.h>
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

/* Node numbers a pool understands are small indexes (a plan's node
 * index, not necessarily the OS number). */
#define MOE_POOL_MAX_NODES 64
#define MOE_POOL_ANY UINT32_MAX /* no node: any worker may run it */

/* Where one worker runs. */
struct moe_pool_pin {
	uint32_t node;  /* < MOE_POOL_MAX_NODES, or MOE_POOL_ANY */
	cpu_set_t cpus; /* its CPUs; empty: not pinned */
};

/* As moe_pool_new, worker w placed as pins[w] says (workers entries).
 * pins[0] is the caller: its thread is pinned here, and its previous
 * CPUs are restored by moe_pool_free when called from the same thread.
 * Threads are started on their CPUs, so their stacks are node-local.
 * -EINVAL (a node out of range, or CPUs the kernel refuses), -ENOMEM,
 * -errno. */
int moe_pool_new_pinned(struct moe_pool **out, uint32_t workers,
			const struct moe_pool_pin *pins);

/* Run tasks [0, n_tasks), task t only on the workers of node
 * node_of_task[t]. A task whose node has no worker in this pool, or is
 * MOE_POOL_ANY, may run on any worker (so a plain pool runs everything,
 * as moe_pool_run does). A worker takes its node's tasks first, in
 * ascending order, then the unrestricted ones; workers never take
 * another node's tasks. node_of_task NULL: as moe_pool_run. Allocates
 * once per growth of n_tasks; if that fails the job still runs, without
 * the restriction. */
void moe_pool_run_nodes(struct moe_pool *p, uint32_t n_tasks,
			const uint32_t *node_of_task, moe_task_fn fn,
			void *ctx);

/* The node worker w was given (MOE_POOL_ANY in a plain pool). */
uint32_t moe_pool_worker_node(const struct moe_pool *p, uint32_t worker);

#endif
