/* moe-bench's memory cgroup (see bench_cgroup.h): find where one can be
 * made, make it with a cap, move a process in, read its peak, remove it.
 * Everything is a small file in cgroupfs, read or written whole. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_cgroup.h"

/* Write s to dir/file (which must exist: cgroupfs makes its files, so a
 * missing one means dir is not what it claims). 0 or -errno. */
static int put(const char *dir, const char *file, const char *s)
{
	char p[PATH_MAX + 64];
	size_t n = strlen(s);
	ssize_t w;
	int fd, rc = 0;

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	w = write(fd, s, n);
	if (w < 0)
		rc = -errno;
	else if ((size_t)w != n)
		rc = -EIO;
	if (close(fd) && !rc)
		rc = -errno;
	return rc;
}

/* Read dir/file whole into buf (NUL-terminated). Bytes read or -errno. */
static ssize_t get(const char *dir, const char *file, char *buf, size_t cap)
{
	char p[PATH_MAX + 64];
	ssize_t n;
	int fd;

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, cap - 1);
	if (n < 0)
		n = -errno;
	else
		buf[n] = 0;
	close(fd);
	return n;
}

static bool has_file(const char *dir, const char *file)
{
	char p[PATH_MAX + 64];

	snprintf(p, sizeof(p), "%s/%s", dir, file);
	return access(p, F_OK) == 0;
}

/* Is word one of the space-separated words of list? */
static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = list; (p = strstr(p, word)); p += n)
		if ((p == list || p[-1] == ' ' || p[-1] == ',') &&
		    (!p[n] || p[n] == ' ' || p[n] == '\n' || p[n] == ','))
			return true;
	return false;
}

/* Our own cgroup path in the v1 hierarchy of controller, from
 * /proc/self/cgroup ("4:memory:/path"). */
static int own_path(const char *controller, char *out, size_t cap)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[1024];
	int rc = -ENOENT;

	if (!f)
		return -errno;
	while (rc && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;

		if (!c2)
			continue;
		*c2 = 0;
		if (!has_word(c1 + 1, controller))
			continue;
		c2[strcspn(c2 + 1, "\n") + 1] = 0;
		snprintf(out, cap, "%s", c2 + 1);
		rc = 0;
	}
	fclose(f);
	return rc;
}

struct mount_pick {
	char v1[PATH_MAX], v1_root[PATH_MAX]; /* memory controller, v1 */
	char v2[PATH_MAX];                    /* a cgroup2 mount */
};

/* The memory controller's v1 mount and any cgroup2 mount. */
static void find_mounts(struct mount_pick *mp)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096];

	mp->v1[0] = mp->v1_root[0] = mp->v2[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char root[PATH_MAX], point[PATH_MAX], type[64], super[1024];
		char *dash = strstr(line, " - ");

		if (!dash || sscanf(line, "%*s %*s %*s %4095s %4095s", root, point) != 2 ||
		    sscanf(dash + 3, "%63s %*s %1023s", type, super) != 2)
			continue;
		if (strcmp(type, "cgroup2") == 0 && !mp->v2[0])
			snprintf(mp->v2, sizeof(mp->v2), "%s", point);
		else if (strcmp(type, "cgroup") == 0 && has_word(super, "memory") &&
			 !mp->v1[0]) {
			snprintf(mp->v1, sizeof(mp->v1), "%s", point);
			snprintf(mp->v1_root, sizeof(mp->v1_root), "%s", root);
		}
	}
	fclose(f);
}

/* v2 gives a child the memory controller only if the parent lists it in
 * cgroup.subtree_control: ask for it when it is available but off. */
static int v2_enable(const char *dir, struct moe_msg *err)
{
	char buf[1024];
	int rc;

	if (get(dir, "cgroup.controllers", buf, sizeof(buf)) < 0 ||
	    !has_word(buf, "memory"))
		return moe_msgf(err, -ENOENT, "%s: the memory controller is not available there (cgroup.controllers: %s)",
				dir, buf[0] ? strtok(buf, "\n") : "empty");
	if (get(dir, "cgroup.subtree_control", buf, sizeof(buf)) >= 0 &&
	    has_word(buf, "memory"))
		return 0;
	rc = put(dir, "cgroup.subtree_control", "+memory");
	if (rc)
		return moe_msgf(err, rc, "%s/cgroup.subtree_control: cannot enable the memory controller for children: %s",
				dir, moe_strerror(rc));
	return 0;
}

/* Where to make it, and which version that is. */
static int pick_parent(const char *root, char *dir, size_t cap, int *version,
		       struct moe_msg *err)
{
	struct mount_pick mp;
	char own[PATH_MAX];
	struct stat st;

	if (!root || !*root)
		root = getenv(BENCH_CGROUP_ROOT_ENV);
	if (root && *root) {
		if (stat(root, &st))
			return moe_msgf(err, -errno, "cgroup root %s: %s", root,
					moe_strerror(-errno));
		if (!S_ISDIR(st.st_mode))
			return moe_msgf(err, -ENOTDIR, "cgroup root %s: not a directory", root);
		snprintf(dir, cap, "%s", root);
		*version = has_file(root, "cgroup.controllers") ? 2
			   : has_file(root, "memory.limit_in_bytes") ? 1 : 0;
		if (!*version)
			return moe_msgf(err, -EINVAL, "cgroup root %s: not a memory cgroup directory (neither cgroup.controllers nor memory.limit_in_bytes in it)",
					root);
		return *version == 2 ? v2_enable(dir, err) : 0;
	}
	find_mounts(&mp);
	if (mp.v2[0] && v2_enable(mp.v2, NULL) == 0) {
		snprintf(dir, cap, "%s", mp.v2);
		*version = 2;
		return 0;
	}
	if (!mp.v1[0])
		return moe_msgf(err, -ENOENT, "no memory cgroup hierarchy is mounted (no cgroup2 mount offering memory, no v1 memory mount in /proc/self/mountinfo)");
	*version = 1;
	/* Nested under our own memory cgroup when it is visible here: its
	 * limits keep applying. */
	if (!own_path("memory", own, sizeof(own)) &&
	    strncmp(own, mp.v1_root, strlen(mp.v1_root)) == 0) {
		const char *rel = own + (strcmp(mp.v1_root, "/") ? strlen(mp.v1_root) : 0);

		snprintf(dir, cap, "%s%s", mp.v1, strcmp(rel, "/") ? rel : "");
		if (!stat(dir, &st) && S_ISDIR(st.st_mode) && !access(dir, W_OK))
			return 0;
	}
	snprintf(dir, cap, "%s", mp.v1);
	return 0;
}

static int set_cap(struct bench_cgroup *cg, uint64_t cap, struct moe_msg *err)
{
	const char *file = cg->version == 2 ? "memory.max" : "memory.limit_in_bytes";
	char v[32], buf[64];
	int rc;

	snprintf(v, sizeof(v), "%" PRIu64, cap);
	rc = put(cg->path, file, v);
	if (rc)
		return moe_msgf(err, rc, "%s/%s: cannot set the cap to %s bytes: %s",
				cg->path, file, v, moe_strerror(rc));
	/* Swap would let the group hold more than the cap; best effort, the
	 * files exist only where swap accounting does. */
	if (cg->version == 2)
		put(cg->path, "memory.swap.max", "0");
	else
		put(cg->path, "memory.memsw.limit_in_bytes", v);
	cg->cap = cap;
	if (get(cg->path, file, buf, sizeof(buf)) > 0)
		cg->cap = strtoull(buf, NULL, 10);
	return 0;
}

int bench_cgroup_make(struct bench_cgroup *cg, const char *root,
		      const char *name, uint64_t cap, struct moe_msg *err)
{
	char parent[PATH_MAX];
	int rc;

	memset(cg, 0, sizeof(*cg));
	rc = pick_parent(root, parent, sizeof(parent), &cg->version, err);
	if (rc)
		return rc;
	if (snprintf(cg->path, sizeof(cg->path), "%s/%s", parent, name) >=
	    (int)sizeof(cg->path))
		return moe_msgf(err, -ENAMETOOLONG, "%s/%s: path too long", parent, name);
	if (mkdir(cg->path, 0755)) {
		rc = -errno;
		moe_msgf(err, rc, "%s: cannot make a memory cgroup: %s", cg->path,
			 moe_strerror(rc));
		cg->path[0] = 0;
		return rc;
	}
	rc = set_cap(cg, cap, err);
	if (rc) {
		rmdir(cg->path);
		cg->path[0] = 0;
	}
	return rc;
}

int bench_cgroup_enter(const struct bench_cgroup *cg, pid_t pid,
		       struct moe_msg *err)
{
	char v[24];
	int rc;

	snprintf(v, sizeof(v), "%d", (int)pid);
	rc = put(cg->path, "cgroup.procs", v);
	if (rc)
		return moe_msgf(err, rc, "%s/cgroup.procs: cannot move pid %d in: %s",
				cg->path, (int)pid, moe_strerror(rc));
	return 0;
}

int64_t bench_cgroup_peak(const struct bench_cgroup *cg)
{
	char buf[64];
	ssize_t n = get(cg->path, cg->version == 2 ? "memory.peak"
						   : "memory.max_usage_in_bytes",
			buf, sizeof(buf));

	return n < 0 ? n : (int64_t)strtoll(buf, NULL, 10);
}

uint64_t bench_cgroup_oom_kills(const struct bench_cgroup *cg)
{
	char buf[2048], *p;

	if (get(cg->path, cg->version == 2 ? "memory.events" : "memory.oom_control",
		buf, sizeof(buf)) < 0)
		return 0;
	for (p = buf; (p = strstr(p, "oom_kill ")); p++)
		if (p == buf || p[-1] == '\n')
			return strtoull(p + 9, NULL, 10);
	return 0;
}

int bench_cgroup_remove(struct bench_cgroup *cg, struct moe_msg *err)
{
	struct timespec pause = { 0, 10 * 1000000 };
	int rc = 0;

	if (!cg->path[0])
		return 0;
	/* A process that has just been reaped can hold the group a moment. */
	for (int i = 0; i < 200; i++) {
		rc = rmdir(cg->path) ? -errno : 0;
		if (rc != -EBUSY)
			break;
		nanosleep(&pause, NULL);
	}
	if (rc)
		return moe_msgf(err, rc, "%s: cannot remove the cgroup: %s",
				cg->path, moe_strerror(rc));
	cg->path[0] = 0;
	return 0;
}
