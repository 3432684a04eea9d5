/* A memory cgroup of moe-bench's own, to run a moed under a memory cap:
 * made before the run, the moed moved into it, its peak read afterwards,
 * removed at the end. Both hierarchies: cgroup v2 (memory.max, made under
 * the root of a cgroup2 mount that offers the memory controller, since v2
 * lets no cgroup with processes have children with controllers) and v1
 * (memory.limit_in_bytes, made under our own memory cgroup, else under
 * the controller's root). Where neither can be made the caller is told
 * why, in one line naming the path. */
#ifndef MOE_BENCH_CGROUP_H
#define MOE_BENCH_CGROUP_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "diag.h"

/* Overrides where cgroups are made (a directory of a memory cgroup
 * hierarchy, v1 or v2): for tests, and for machines that delegate a
 * subtree to the user. */
#define BENCH_CGROUP_ROOT_ENV "MOE_BENCH_CGROUP_ROOT"

struct bench_cgroup {
	char path[PATH_MAX]; /* the cgroup's directory, once made */
	int version;         /* 1 or 2 */
	uint64_t cap;        /* the limit as the kernel reports it, bytes */
};

/* Make the cgroup `name` capped at cap bytes under root (NULL: the
 * environment's BENCH_CGROUP_ROOT_ENV, else found in /proc/self/mountinfo).
 * Returns 0, or with err naming the path and the reason (nothing left
 * behind): -ENOENT (no memory cgroup hierarchy, or root missing),
 * -ENOTDIR / -EINVAL (root is not a memory cgroup directory), -EACCES /
 * -EPERM / -EROFS (not allowed to make it or set its limit), -errno. */
int bench_cgroup_make(struct bench_cgroup *cg, const char *root,
		      const char *name, uint64_t cap, struct moe_msg *err);

/* Move pid into the cgroup. 0 or -errno with err set. */
int bench_cgroup_enter(const struct bench_cgroup *cg, pid_t pid,
		       struct moe_msg *err);

/* Highest memory use the kernel saw in the cgroup (page cache included),
 * bytes; -ENOENT where the kernel does not keep it (v2 before 5.19). */
int64_t bench_cgroup_peak(const struct bench_cgroup *cg);

/* Processes the kernel's OOM killer killed in the cgroup. */
uint64_t bench_cgroup_oom_kills(const struct bench_cgroup *cg);

/* Remove the cgroup (its processes must have exited: a process that is
 * still dying is waited for, up to 2 s). 0 or -errno with err set. */
int bench_cgroup_remove(struct bench_cgroup *cg, struct moe_msg *err);

#endif
