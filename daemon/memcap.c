/* The room under our memory cgroup's limit (see memcap.h). A handful of
 * small files read once at start; anything unreadable counts as no
 * limit, since a wrong guess here must not stop moed from starting. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memcap.h"

#define CGROOT "/sys/fs/cgroup"
#define RESERVE_MIN (UINT64_C(16) << 20)

/* A number from dir/file; "max" (v2) and v1's huge "unlimited" read as
 * UINT64_MAX. False if the file cannot be read. */
static bool read_u64(const char *dir, const char *file, uint64_t *v)
{
	char path[576], buf[64];
	FILE *f;
	bool ok;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "re");
	if (!f)
		return false;
	ok = fgets(buf, sizeof(buf), f) != NULL;
	fclose(f);
	if (!ok)
		return false;
	*v = strncmp(buf, "max", 3) ? strtoull(buf, NULL, 10) : UINT64_MAX;
	if (*v >= UINT64_C(1) << 62)
		*v = UINT64_MAX;
	return true;
}

/* Bytes of page cache (file pages, reclaimable under pressure) charged
 * to the cgroup at dir, from memory.stat; 0 if unreadable. */
static uint64_t file_cache(const char *dir, bool v2)
{
	char path[576], key[64];
	unsigned long long v;
	uint64_t sum = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/memory.stat", dir);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fscanf(f, "%63s %llu", key, &v) == 2)
		if (!strcmp(key, v2 ? "active_file" : "total_active_file") ||
		    !strcmp(key, v2 ? "inactive_file" : "total_inactive_file"))
			sum += v;
	fclose(f);
	return sum;
}

/* Our path in the v2 hierarchy ("0::/a/b") or the v1 memory one
 * ("4:memory:/a/b"); which of the two in *v2. */
static bool own_path(char *out, size_t len, bool *v2)
{
	char line[1024], *ctl, *path;
	bool found = false;
	FILE *f = fopen("/proc/self/cgroup", "re");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		ctl = strchr(line, ':');
		path = ctl ? strchr(ctl + 1, ':') : NULL;
		if (!path)
			continue;
		*path++ = 0;
		ctl++;
		*v2 = ctl[0] == 0;
		/* A v1 memory controller wins over the v2 line of a hybrid
		 * setup, whose unified tree then holds no memory controller. */
		found = !strcmp(ctl, "memory") || !strncmp(ctl, "memory,", 7) ||
			strstr(ctl, ",memory") != NULL;
		if (found || *v2)
			snprintf(out, len, "%s", strcmp(path, "/") ? path : "");
	}
	fclose(f);
	return found || *v2;
}

/* The limit at dir and what is charged there less page cache, which
 * the kernel reclaims before it kills anything. */
static bool room_at(const char *dir, bool v2, uint64_t *lim, uint64_t *use)
{
	uint64_t cache;

	if (!read_u64(dir, v2 ? "memory.max" : "memory.limit_in_bytes", lim) ||
	    *lim == UINT64_MAX ||
	    !read_u64(dir, v2 ? "memory.current" : "memory.usage_in_bytes", use))
		return false;
	cache = file_cache(dir, v2);
	*use = *use > cache ? *use - cache : 0;
	*use = *use < *lim ? *use : *lim;
	return true;
}

/* The tightest room from dir up to the root of its hierarchy. */
static void walk_up(struct moe_memcap *c, char *dir, size_t root_len,
		    bool v2)
{
	for (;;) {
		uint64_t lim, use;
		char *slash;

		if (room_at(dir, v2, &lim, &use) &&
		    (c->limit == UINT64_MAX || lim - use < c->limit - c->usage)) {
			c->limit = lim;
			c->usage = use;
			snprintf(c->path, sizeof(c->path), "%s", dir);
		}
		slash = strrchr(dir, '/');
		if (!slash || (size_t)(slash - dir) < root_len)
			return;
		*slash = 0;
	}
}

int moe_memcap_read(struct moe_memcap *c)
{
	char own[448], dir[sizeof(c->path)];
	size_t root;
	bool v2 = false;

	c->limit = UINT64_MAX;
	c->usage = 0;
	c->path[0] = 0;
	if (!own_path(own, sizeof(own), &v2))
		return 0;
	root = strlen(v2 ? CGROOT : CGROOT "/memory");
	snprintf(dir, sizeof(dir), "%s%s", v2 ? CGROOT : CGROOT "/memory", own);
	walk_up(c, dir, root, v2);
	return 0;
}

uint64_t moe_memcap_fit(const struct moe_memcap *c, uint64_t want)
{
	uint64_t reserve, room;

	if (c->limit == UINT64_MAX)
		return want;
	reserve = c->limit / 4 > RESERVE_MIN ? c->limit / 4 : RESERVE_MIN;
	room = c->limit - c->usage;
	room = room > reserve ? room - reserve : 0;
	return want < room ? want : room;
}
