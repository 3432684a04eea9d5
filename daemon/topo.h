/* Topology: the machine as hwloc sees it (NUMA nodes, cores, caches, and
 * the node the model file's block device hangs off), reduced to the few
 * facts placement needs, plus node-local memory (slabs through libnuma,
 * worker scratch from a jemalloc arena per node) and thread pinning. */
#ifndef MOE_TOPO_H
#define MOE_TOPO_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"

#define MOE_TOPO_MAX_NODES 64

/* A core: where one worker runs. On a topology without cores (some
 * synthetic ones) every PU counts as a core. */
struct moe_topo_core {
	uint32_t os_index; /* the core's number (first PU's if no cores) */
	uint32_t node;     /* index into moe_topo.nodes */
	cpu_set_t cpus;    /* its PUs, by OS number */
};

struct moe_topo_node {
	uint32_t os_index;  /* the number libnuma and mbind use */
	uint64_t memory;    /* local memory in bytes */
	uint32_t first_core, n_cores; /* a node's cores are contiguous */
	uint64_t l2_bytes, l3_bytes;  /* cache serving its cores; a cache
				       * shared with another node counts
				       * in proportion to its PUs here */
	uint32_t n_l2, n_l3;
	cpu_set_t cpus;
};

/* Read-only after moe_topo_open. */
struct moe_topo {
	uint32_t n_nodes, n_cores;
	struct moe_topo_node *nodes; /* in hwloc's logical order */
	struct moe_topo_core *cores; /* grouped by node, in node order */
	bool this_system; /* false for synthetic or XML topologies: their
			   * CPUs and nodes must never be bound to */
	bool numa_ok;     /* libnuma works here: memory can be bound */
	int device_node;  /* node index of the model file's device; -1:
			   * unknown (no file given, not this system, a
			   * virtual or non-PCI device, or PCI local to
			   * several nodes) */
	char device[160]; /* what was found, or why unknown */
	char source[200]; /* "this system", "synthetic ...", "xml ..." */
};

struct moe_topo_opts {
	/* NULL: this machine, unless HWLOC_XMLFILE or HWLOC_SYNTHETIC is
	 * set (in that order, as hwloc reads them; a value hwloc refuses is
	 * an error here, where hwloc alone would silently fall back to the
	 * real machine). A path to an existing file: an hwloc XML topology.
	 * Else a synthetic description such as "pack:2 numa:1 core:4 pu:1".
	 * Either wins over the environment. */
	const char *topology;
	/* The model file: its block device's node is looked up (only on
	 * this system). NULL: device_node is -1. */
	const char *device_path;
};

/* 0, or -EINVAL (a synthetic description or XML file hwloc refuses; err
 * names it), -ENOMEM, -errno from hwloc. o may be NULL. */
int moe_topo_open(struct moe_topo **out, const struct moe_topo_opts *o,
		  struct moe_msg *err);
void moe_topo_close(struct moe_topo *t);

/* Index of the node with that OS number, or -1. */
int moe_topo_node_index(const struct moe_topo *t, uint32_t os_index);

/* "0-3,8,10-11". buf of at least 16 bytes; truncated with "..." when too
 * short. Returns buf. */
char *moe_cpuset_str(const cpu_set_t *s, char *buf, size_t len);

/* Node-local memory for large, long-lived buffers (the store's slabs):
 * anonymous pages, page-aligned, whose pages are placed on the node with
 * OS number os_node when first touched. The policy is "preferred", not
 * "bind": under memory pressure a page lands on another node rather than
 * the daemon being killed. Without libnuma support, or when the kernel
 * refuses the node (cpuset.mems), the memory is plain and that is logged
 * once. os_node < 0: plain memory. 0 or -ENOMEM. */
int moe_topo_alloc(void **out, size_t size, int os_node);
void moe_topo_free(void *p, size_t size);

/* OS number of the node holding the page at p (faulted in if absent),
 * or -errno (-ENOSYS without libnuma support). */
int moe_topo_node_of_addr(const void *p);

/* Scratch for a worker (activations, partial sums): from a jemalloc arena
 * of its own whose extents are placed on node os_node, created the first
 * time the node is named. 64-byte aligned. os_node < 0, no libnuma, or
 * no arena could be made: jemalloc's default arenas. Thread-safe.
 * 0 or -ENOMEM. Free with moe_topo_scratch_free only. */
int moe_topo_scratch_alloc(void **out, size_t size, int os_node);
void moe_topo_scratch_free(void *p);

/* The jemalloc arena serving os_node's scratch (created if need be),
 * for callers that bind a thread to it with mallctl("thread.arena").
 * -errno from mallctl, or -ENOSPC past MOE_TOPO_MAX_NODES arenas. */
int moe_topo_arena(int os_node, unsigned *arena);

/* Pin the calling thread to cpus (e.g. the io thread). 0 or -errno. */
int moe_topo_bind_thread(const cpu_set_t *cpus);

#endif
