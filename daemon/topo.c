/* Topology discovery with hwloc (run once at start), node-local memory
 * with mbind on anonymous mappings, and jemalloc arenas whose extents are
 * bound to a node. The allocators are thread-safe. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <hwloc.h>
#include <jemalloc/jemalloc.h>
#include <numa.h>
#include <numaif.h>

#include "log.h"
#include "topo.h"

/* ---- discovery ---- */

static void to_cpuset(hwloc_const_bitmap_t b, cpu_set_t *s)
{
	unsigned i;

	CPU_ZERO(s);
	hwloc_bitmap_foreach_begin(i, b)
		if (i < CPU_SETSIZE)
			CPU_SET(i, s);
	hwloc_bitmap_foreach_end();
}

/* The environment is read here rather than left to hwloc: a bad value
 * then fails loudly instead of silently giving the real machine, and
 * hwloc's own handling of HWLOC_SYNTHETIC leaks (LeakSanitizer). The
 * option wins over the environment; XML over synthetic, as in hwloc. */
static int set_source(hwloc_topology_t h, const char *topo,
		      struct moe_msg *err)
{
	const char *env_xml = getenv("HWLOC_XMLFILE");
	struct stat st;

	if (!topo && env_xml && *env_xml) {
		if (hwloc_topology_set_xml(h, env_xml))
			return moe_msgf(err, -EINVAL, "HWLOC_XMLFILE=%s: hwloc cannot read it",
					env_xml);
		return 0;
	}
	if (!topo)
		topo = getenv("HWLOC_SYNTHETIC");
	if (!topo || !*topo)
		return 0;
	if (stat(topo, &st) == 0 && S_ISREG(st.st_mode)) {
		if (hwloc_topology_set_xml(h, topo))
			return moe_msgf(err, -EINVAL, "topology %s: hwloc cannot read it as XML",
					topo);
		return 0;
	}
	if (hwloc_topology_set_synthetic(h, topo))
		return moe_msgf(err, -EINVAL,
				"topology '%s': neither an XML file nor a synthetic description hwloc accepts (e.g. \"pack:2 numa:1 core:4 pu:1\")",
				topo);
	return 0;
}

static int load(hwloc_topology_t *h, const struct moe_topo_opts *o,
		struct moe_msg *err)
{
	int rc;

	if (hwloc_topology_init(h))
		return moe_msgf(err, -ENOMEM, "hwloc: cannot initialise a topology");
	/* PCI devices are what tells where the model's disk hangs. Linux's
	 * sysfs lists them: the libpciaccess plugin adds nothing we use
	 * and leaks on every load. */
	if (o->device_path) {
		hwloc_topology_set_io_types_filter(*h,
			HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
		hwloc_topology_set_components(*h,
			HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
	}
	rc = set_source(*h, o->topology, err);
	if (!rc && hwloc_topology_load(*h))
		rc = moe_msgf(err, errno ? -errno : -EINVAL,
			      "hwloc: cannot load the topology%s%s: %s",
			      o->topology ? " " : "",
			      o->topology ? o->topology : "", strerror(errno));
	if (rc)
		hwloc_topology_destroy(*h);
	return rc;
}

static void describe_source(struct moe_topo *t, hwloc_topology_t h,
			    const struct moe_topo_opts *o)
{
	hwloc_obj_t root = hwloc_get_root_obj(h);
	const char *backend = hwloc_obj_get_info_by_name(root, "Backend");
	const char *synth = hwloc_obj_get_info_by_name(root,
						       "SyntheticDescription");
	const char *xml = o->topology ? o->topology : getenv("HWLOC_XMLFILE");

	if (t->this_system)
		snprintf(t->source, sizeof(t->source), "this system");
	else if (backend && !strcmp(backend, "Synthetic"))
		snprintf(t->source, sizeof(t->source), "synthetic \"%s\"",
			 synth ? synth : "?");
	else
		snprintf(t->source, sizeof(t->source), "xml %s",
			 xml ? xml : "(unnamed)");
}

static int collect_nodes(struct moe_topo *t, hwloc_topology_t h,
			 struct moe_msg *err)
{
	int n = hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_NUMANODE);

	if (n < 1 || n > MOE_TOPO_MAX_NODES)
		return moe_msgf(err, -EINVAL, "topology has %d NUMA nodes; moed handles 1 to %d",
				n, MOE_TOPO_MAX_NODES);
	t->nodes = calloc((size_t)n, sizeof(*t->nodes));
	if (!t->nodes)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(h, HWLOC_OBJ_NUMANODE,
						      (unsigned)i);

		t->nodes[i].os_index = o->os_index;
		t->nodes[i].memory = o->attr->numanode.local_memory;
		to_cpuset(o->cpuset, &t->nodes[i].cpus);
	}
	t->n_nodes = (uint32_t)n;
	return 0;
}

/* The node whose CPUs hold the core; a core in no node's cpuset (only in
 * malformed XML) goes to node 0. */
static uint32_t node_of_core(hwloc_topology_t h, hwloc_obj_t core)
{
	int n = hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_NUMANODE);

	for (int i = 0; i < n; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(h, HWLOC_OBJ_NUMANODE,
						      (unsigned)i);

		if (hwloc_bitmap_isincluded(core->cpuset, o->cpuset))
			return (uint32_t)i;
	}
	return 0;
}

static int collect_cores(struct moe_topo *t, hwloc_topology_t h)
{
	int depth = hwloc_get_type_or_below_depth(h, HWLOC_OBJ_CORE);
	int n = hwloc_get_nbobjs_by_depth(h, depth);

	t->cores = calloc(n > 0 ? (size_t)n : 1, sizeof(*t->cores));
	if (!t->cores)
		return -ENOMEM;
	for (uint32_t node = 0; node < t->n_nodes; node++) {
		t->nodes[node].first_core = t->n_cores;
		for (int i = 0; i < n; i++) {
			hwloc_obj_t o = hwloc_get_obj_by_depth(h, depth,
							       (unsigned)i);
			struct moe_topo_core *c;

			if (node_of_core(h, o) != node)
				continue;
			c = &t->cores[t->n_cores++];
			c->node = node;
			c->os_index = o->type == HWLOC_OBJ_CORE ? o->os_index :
				(unsigned)hwloc_bitmap_first(o->cpuset);
			to_cpuset(o->cpuset, &c->cpus);
			t->nodes[node].n_cores++;
		}
	}
	return 0;
}

/* A cache shared by several nodes counts in each in proportion to the
 * PUs it serves there. */
static void collect_caches(struct moe_topo *t, hwloc_topology_t h,
			   hwloc_obj_type_t type)
{
	int n = hwloc_get_nbobjs_by_type(h, type);
	hwloc_bitmap_t both = hwloc_bitmap_alloc();

	for (int i = 0; both && i < n; i++) {
		hwloc_obj_t c = hwloc_get_obj_by_type(h, type, (unsigned)i);
		int wc = hwloc_bitmap_weight(c->cpuset);

		for (uint32_t k = 0; wc > 0 && k < t->n_nodes; k++) {
			hwloc_obj_t nd = hwloc_get_obj_by_type(
				h, HWLOC_OBJ_NUMANODE, k);
			uint64_t share;
			int w;

			hwloc_bitmap_and(both, c->cpuset, nd->cpuset);
			w = hwloc_bitmap_weight(both);
			if (w <= 0)
				continue;
			share = c->attr->cache.size * (uint64_t)w / (uint64_t)wc;
			if (type == HWLOC_OBJ_L2CACHE) {
				t->nodes[k].l2_bytes += share;
				t->nodes[k].n_l2++;
			} else {
				t->nodes[k].l3_bytes += share;
				t->nodes[k].n_l3++;
			}
		}
	}
	hwloc_bitmap_free(both);
}

int moe_topo_node_index(const struct moe_topo *t, uint32_t os_index)
{
	for (uint32_t i = 0; i < t->n_nodes; i++)
		if (t->nodes[i].os_index == os_index)
			return (int)i;
	return -1;
}

/* ---- the model file's device ---- */

struct pci_id {
	unsigned dom, bus, dev, fn;
};

/* PCI functions named along a sysfs device path, outermost first: the
 * last is the device's own controller, earlier ones its bridges. */
static int pci_ids_in(const char *path, struct pci_id *ids, int max)
{
	int n = 0;

	for (const char *p = strchr(path, '/'); p && n < max;
	     p = strchr(p + 1, '/')) {
		struct pci_id id;
		int used = 0;

		if (sscanf(p + 1, "%4x:%2x:%2x.%1x%n", &id.dom, &id.bus,
			   &id.dev, &id.fn, &used) == 4 && used == 12 &&
		    (p[13] == '/' || p[13] == '\0'))
			ids[n++] = id;
	}
	return n;
}

/* Node index of a PCI function by hwloc's locality: -1 when it is local
 * to several nodes (or none), -2 when hwloc does not list it. */
static int node_of_pci(const struct moe_topo *t, hwloc_topology_t h,
		       const struct pci_id *id)
{
	hwloc_obj_t o = hwloc_get_pcidev_by_busid(h, id->dom, id->bus,
						  id->dev, id->fn);

	if (!o)
		return -2;
	o = hwloc_get_non_io_ancestor_obj(h, o);
	if (!o || !o->nodeset || hwloc_bitmap_weight(o->nodeset) != 1)
		return -1;
	return moe_topo_node_index(t, (uint32_t)hwloc_bitmap_first(o->nodeset));
}

static int node_of_block(const struct moe_topo *t, hwloc_topology_t h,
			 const char *dir, int depth, char *why, size_t len);

/* A device-mapper or md device has no PCI path of its own: its node is
 * that of the devices under it (slaves/) when they all agree. */
static int node_of_slaves(const struct moe_topo *t, hwloc_topology_t h,
			  char *real, int depth, char *why, size_t len)
{
	char path[PATH_MAX + 16], sub[PATH_MAX + 300];
	const char *name = strrchr(real, '/') + 1;
	struct dirent *de;
	int node = -3;
	DIR *d;

	/* A partition's slaves/ belongs to the disk that holds it. */
	snprintf(path, sizeof(path), "%s/partition", real);
	if (access(path, F_OK) == 0)
		*strrchr(real, '/') = '\0';
	snprintf(path, sizeof(path), "%s/slaves", real);
	d = depth < 4 ? opendir(path) : NULL;
	while (d && (de = readdir(d))) {
		int k;

		if (de->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
		k = node_of_block(t, h, sub, depth + 1, why, len);
		if (k < 0 || (node >= 0 && k != node)) {
			node = -1;
			break;
		}
		node = k;
	}
	if (d)
		closedir(d);
	if (node == -3)
		snprintf(why, len, "%s: a virtual device, not on PCI", name);
	return node < 0 ? -1 : node;
}

/* Node of the block device whose sysfs directory is dir; -1 with why
 * filled when that cannot be told. */
static int node_of_block(const struct moe_topo *t, hwloc_topology_t h,
			 const char *dir, int depth, char *why, size_t len)
{
	char real[PATH_MAX];
	struct pci_id ids[16];
	int n;

	if (!realpath(dir, real)) {
		snprintf(why, len, "%s: %s", dir, strerror(errno));
		return -1;
	}
	n = pci_ids_in(real, ids, 16);
	/* The device itself first; a bridge above it when hwloc filtered
	 * the function out. */
	for (int i = n - 1; i >= 0; i--) {
		int node = node_of_pci(t, h, &ids[i]);

		if (node == -2)
			continue;
		snprintf(why, len, "%s: PCI %04x:%02x:%02x.%x%s",
			 strrchr(real, '/') + 1, ids[i].dom, ids[i].bus,
			 ids[i].dev, ids[i].fn,
			 node < 0 ? ", local to several nodes" : "");
		return node;
	}
	if (n > 0) {
		snprintf(why, len, "%s: PCI %04x:%02x:%02x.%x unknown to hwloc",
			 strrchr(real, '/') + 1, ids[n - 1].dom,
			 ids[n - 1].bus, ids[n - 1].dev, ids[n - 1].fn);
		return -1;
	}
	return node_of_slaves(t, h, real, depth, why, len);
}

static void find_device(struct moe_topo *t, hwloc_topology_t h,
			const char *path)
{
	char dir[64];
	struct stat st;

	t->device_node = -1;
	if (!path) {
		snprintf(t->device, sizeof(t->device), "no model file given");
		return;
	}
	if (!t->this_system) {
		snprintf(t->device, sizeof(t->device),
			 "not looked up: the topology is not this machine's");
		return;
	}
	if (stat(path, &st)) {
		snprintf(t->device, sizeof(t->device), "%s", strerror(errno));
		return;
	}
	if (major(st.st_dev) == 0) {
		snprintf(t->device, sizeof(t->device),
			 "the file is on no block device (tmpfs, overlay or network file system)");
		return;
	}
	snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u", major(st.st_dev),
		 minor(st.st_dev));
	t->device_node = node_of_block(t, h, dir, 0, t->device,
				       sizeof(t->device));
}

/* ---- memory ---- */

/* 0: not asked yet, 1: libnuma works, -1: it does not. Relaxed: the
 * answer is the only thing published, and every thread computes the same
 * one. */
static atomic_int numa_state;
static atomic_bool said_bind_failed;

static bool numa_usable(void)
{
	int s = atomic_load_explicit(&numa_state, memory_order_relaxed);

	if (s)
		return s > 0;
	s = numa_available() < 0 ? -1 : 1;
	if (atomic_exchange_explicit(&numa_state, s, memory_order_relaxed) == 0 &&
	    s < 0)
		moe_log(MOE_LOG_WARNING,
			"topology: no NUMA support (numa_available() < 0): running without binding memory to nodes");
	return s > 0;
}

static void say_bind_failed(int os_node, int e)
{
	if (!atomic_exchange_explicit(&said_bind_failed, true,
				      memory_order_relaxed))
		moe_log(MOE_LOG_WARNING,
			"topology: cannot place memory on node %d (%s): memory stays unbound",
			os_node, strerror(e));
}

#define NODE_BITS 1024

/* Preferred, not bound: see moe_topo_alloc. 0 or an errno value. */
static int bind_range(void *p, size_t size, int os_node)
{
	unsigned long mask[NODE_BITS / (8 * sizeof(unsigned long))] = { 0 };
	const unsigned bpl = 8 * sizeof(unsigned long);

	if (os_node < 0 || os_node >= NODE_BITS)
		return EINVAL;
	mask[(unsigned)os_node / bpl] = 1ul << ((unsigned)os_node % bpl);
	/* maxnode counts one past the bits the kernel reads. */
	if (mbind(p, size, MPOL_PREFERRED, mask, NODE_BITS + 1, 0))
		return errno;
	return 0;
}

int moe_topo_alloc(void **out, size_t size, int os_node)
{
	void *p;
	int e;

	if (!size)
		return -EINVAL;
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	/* Slabs hold gigabytes of weights streamed by every worker: huge
	 * pages spare the TLB. Only a hint; ignored where THP is off. */
	madvise(p, size, MADV_HUGEPAGE);
	if (os_node >= 0 && numa_usable() && (e = bind_range(p, size, os_node)))
		say_bind_failed(os_node, e);
	*out = p;
	return 0;
}

void moe_topo_free(void *p, size_t size)
{
	if (p)
		munmap(p, size);
}

int moe_topo_node_of_addr(const void *p)
{
	int node = -1;

	if (!numa_usable())
		return -ENOSYS;
	if (get_mempolicy(&node, NULL, 0, (void *)p, MPOL_F_NODE | MPOL_F_ADDR))
		return -errno;
	return node;
}

/* ---- per-node jemalloc arenas ---- */

struct node_arena {
	extent_hooks_t hooks; /* first: jemalloc hands &hooks back to us */
	int os_node;
	unsigned index;
};

/* jemalloc keeps the hooks' address for the life of the process, so the
 * table is static and never shrinks. Written under arena_lock only; a
 * hook reads its entry after the arena was published by arenas.create,
 * which ran under the same lock. */
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node_arena arenas[MOE_TOPO_MAX_NODES];
static uint32_t n_arenas;
static extent_hooks_t *default_hooks;
static atomic_int hook_bind_errno;

/* New extents come from jemalloc's own mapping code, then get the node
 * policy; pages are placed when the worker first touches them. */
static void *node_extent_alloc(extent_hooks_t *h, void *addr, size_t size,
			       size_t align, bool *zero, bool *commit,
			       unsigned ind)
{
	struct node_arena *a = (struct node_arena *)h;
	void *p = default_hooks->alloc(default_hooks, addr, size, align,
				       zero, commit, ind);
	int e;

	/* No logging here: this runs inside jemalloc. */
	if (p && (e = bind_range(p, size, a->os_node)))
		atomic_store_explicit(&hook_bind_errno, e,
				      memory_order_relaxed);
	return p;
}

static int arena_create(int os_node, unsigned *index)
{
	struct node_arena *a = &arenas[n_arenas];
	extent_hooks_t *hp = &a->hooks;
	size_t sz = sizeof(default_hooks);
	int rc;

	if (!default_hooks) {
		rc = mallctl("arena.0.extent_hooks", &default_hooks, &sz,
			     NULL, 0);
		if (rc)
			return -rc;
	}
	a->hooks = *default_hooks;
	a->hooks.alloc = node_extent_alloc;
	a->os_node = os_node;
	sz = sizeof(a->index);
	rc = mallctl("arenas.create", &a->index, &sz, &hp, sizeof(hp));
	if (rc)
		return -rc;
	n_arenas++;
	*index = a->index;
	return 0;
}

int moe_topo_arena(int os_node, unsigned *arena)
{
	int rc = 0;

	pthread_mutex_lock(&arena_lock);
	for (uint32_t i = 0; i < n_arenas; i++) {
		if (arenas[i].os_node == os_node) {
			*arena = arenas[i].index;
			goto out;
		}
	}
	rc = n_arenas < MOE_TOPO_MAX_NODES ? arena_create(os_node, arena) :
					     -ENOSPC;
out:
	pthread_mutex_unlock(&arena_lock);
	return rc;
}

int moe_topo_scratch_alloc(void **out, size_t size, int os_node)
{
	/* Scratch is taken once per worker: no thread cache, which could
	 * also hand back a block of another arena. */
	int flags = MALLOCX_ALIGN(64) | MALLOCX_TCACHE_NONE;
	unsigned a;
	int e;

	if (!size)
		return -EINVAL;
	if (os_node >= 0 && numa_usable()) {
		if (moe_topo_arena(os_node, &a) == 0)
			flags |= MALLOCX_ARENA(a);
		else
			say_bind_failed(os_node, ENOSPC);
	}
	*out = mallocx(size, flags);
	e = atomic_exchange_explicit(&hook_bind_errno, 0,
				     memory_order_relaxed);
	if (e)
		say_bind_failed(os_node, e);
	return *out ? 0 : -ENOMEM;
}

void moe_topo_scratch_free(void *p)
{
	if (p)
		dallocx(p, MALLOCX_TCACHE_NONE);
}

int moe_topo_bind_thread(const cpu_set_t *cpus)
{
	return -pthread_setaffinity_np(pthread_self(), sizeof(*cpus), cpus);
}

/* ---- the handle ---- */

char *moe_cpuset_str(const cpu_set_t *s, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (int i = 0; i < CPU_SETSIZE; i++) {
		int j = i;

		if (!CPU_ISSET(i, s))
			continue;
		while (j + 1 < CPU_SETSIZE && CPU_ISSET(j + 1, s))
			j++;
		used += (size_t)snprintf(buf + used, len - used,
					 j > i ? "%s%d-%d" : "%s%d",
					 used ? "," : "", i, j);
		if (used >= len) {
			strcpy(buf + len - 4, "...");
			break;
		}
		i = j;
	}
	return buf;
}

int moe_topo_open(struct moe_topo **out, const struct moe_topo_opts *o,
		  struct moe_msg *err)
{
	static const struct moe_topo_opts none;
	struct moe_topo *t;
	hwloc_topology_t h;
	int rc;

	if (!o)
		o = &none;
	t = calloc(1, sizeof(*t));
	if (!t)
		return moe_msgf(err, -ENOMEM, "out of memory");
	rc = load(&h, o, err);
	if (rc) {
		free(t);
		return rc;
	}
	t->this_system = hwloc_topology_is_thissystem(h);
	t->numa_ok = numa_usable();
	describe_source(t, h, o);
	rc = collect_nodes(t, h, err);
	if (!rc && (rc = collect_cores(t, h)))
		moe_msgf(err, rc, "out of memory");
	if (!rc) {
		collect_caches(t, h, HWLOC_OBJ_L2CACHE);
		collect_caches(t, h, HWLOC_OBJ_L3CACHE);
		find_device(t, h, o->device_path);
		*out = t;
	}
	hwloc_topology_destroy(h);
	if (rc)
		moe_topo_close(t);
	return rc;
}

void moe_topo_close(struct moe_topo *t)
{
	if (!t)
		return;
	free(t->nodes);
	free(t->cores);
	free(t);
}
