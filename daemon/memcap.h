/* The memory a process may still take under its memory cgroup, so moed
 * sizes its expert cache to fit the cgroup instead of filling slabs past
 * the limit and being killed by the kernel's OOM killer (which no error
 * path can catch). Reads cgroup v2 (memory.max, memory.current) or v1
 * (memory.limit_in_bytes, memory.usage_in_bytes) under /sys/fs/cgroup, at
 * the path /proc/self/cgroup names and each ancestor of it: the
 * tightest room wins. */
#ifndef MOE_MEMCAP_H
#define MOE_MEMCAP_H

#include <stdint.h>

struct moe_memcap {
	uint64_t limit;  /* bytes; UINT64_MAX: no limit found */
	uint64_t usage;  /* bytes in use in that cgroup now, page cache
			  * (reclaimable) left out */
	char path[512];  /* the cgroup directory whose limit binds */
};

/* Fill *c. Returns 0 (limit UINT64_MAX when no memory cgroup limits us
 * or none can be read: moed then trusts --cache-mb as given). */
int moe_memcap_read(struct moe_memcap *c);

/* Bytes of cache that fit: want, or the room under the limit less a
 * reserve for everything else moed holds (pinned routers and shared
 * experts, client arenas, buffers, a sanitizer's shadow): a quarter of
 * the limit, at least 16 MiB. 0 when nothing fits. */
uint64_t moe_memcap_fit(const struct moe_memcap *c, uint64_t want);

#endif
