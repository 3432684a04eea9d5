/* moe-bench's memory cgroup: every refusal (no such root, a file, a
 * directory that is not a memory cgroup, a hierarchy that will not take
 * the cap) returns a clear message naming the path and leaves nothing
 * behind; the environment override is honoured; and where this machine
 * lets us make a real one, it is made with the cap, takes a process,
 * reports its peak and an OOM kill, and is removed. Where no memory
 * cgroup can be made, the real-cgroup tests say so and are skipped: the
 * refusal tests have then covered the path moe-bench takes. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../client/bench_cgroup.h"

static char scratch[64];

/* A fresh empty directory under $TMPDIR. */
static const char *temp_dir(void)
{
	const char *t = getenv("TMPDIR");

	snprintf(scratch, sizeof(scratch), "%.40s/cgtest.XXXXXX", t && *t ? t : "/tmp");
	assert_non_null(mkdtemp(scratch));
	return scratch;
}

static int entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

/* An empty file dir/name; its path in buf. */
static const char *touch(char *buf, size_t size, const char *dir,
			 const char *name)
{
	FILE *fp;

	snprintf(buf, size, "%s/%s", dir, name);
	fp = fopen(buf, "w");
	assert_non_null(fp);
	fclose(fp);
	return buf;
}

static void remove_tree(const char *dir, const char *file)
{
	char p[128];

	if (file) {
		snprintf(p, sizeof(p), "%s/%s", dir, file);
		unlink(p);
	}
	rmdir(dir);
}

static void missing_root_refused(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };

	(void)state;
	assert_int_equal(bench_cgroup_make(&cg, "/nonexistent/cgroups", "x", 1 << 26, &err),
			 -ENOENT);
	assert_non_null(strstr(err.text, "/nonexistent/cgroups"));
	assert_string_equal(cg.path, "");
}

static void file_root_refused(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	const char *d = temp_dir();
	char f[128];

	(void)state;
	touch(f, sizeof(f), d, "file");
	assert_int_equal(bench_cgroup_make(&cg, f, "x", 1 << 26, &err), -ENOTDIR);
	assert_non_null(strstr(err.text, "not a directory"));
	remove_tree(d, "file");
}

/* A plain directory: neither v1 nor v2 files in it. */
static void plain_directory_refused(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	const char *d = temp_dir();

	(void)state;
	assert_int_equal(bench_cgroup_make(&cg, d, "x", 1 << 26, &err), -EINVAL);
	assert_non_null(strstr(err.text, d));
	assert_non_null(strstr(err.text, "not a memory cgroup"));
	assert_int_equal(entries(d), 0);
	remove_tree(d, NULL);
}

/* A directory that looks like v1 but whose children do not get the
 * cgroup files: the child is made, the cap cannot be set, the child is
 * removed again and the message names the file. */
static void cap_refused_leaves_nothing(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	const char *d = temp_dir();
	char f[128];

	(void)state;
	touch(f, sizeof(f), d, "memory.limit_in_bytes");
	assert_int_equal(bench_cgroup_make(&cg, d, "run", 1 << 26, &err), -ENOENT);
	assert_non_null(strstr(err.text, "/run/memory.limit_in_bytes"));
	assert_non_null(strstr(err.text, "cannot set the cap"));
	assert_int_equal(entries(d), 1); /* the file we made, no child */
	remove_tree(d, "memory.limit_in_bytes");
}

static void environment_names_the_root(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	const char *d = temp_dir();

	(void)state;
	setenv(BENCH_CGROUP_ROOT_ENV, d, 1);
	assert_int_equal(bench_cgroup_make(&cg, NULL, "x", 1 << 26, &err), -EINVAL);
	unsetenv(BENCH_CGROUP_ROOT_ENV);
	assert_non_null(strstr(err.text, d));
	remove_tree(d, NULL);
}

/* Make a real one, or skip saying why this machine will not. */
static int real_cgroup(struct bench_cgroup *cg, const char *name, uint64_t cap)
{
	struct moe_msg err = { "" };
	int rc;

	unsetenv(BENCH_CGROUP_ROOT_ENV);
	rc = bench_cgroup_make(cg, NULL, name, cap, &err);
	if (rc)
		printf("no memory cgroup can be made here (%s): skipped, the refusals above are what moe-bench meets\n",
		       err.text);
	else
		printf("real cgroup v%d at %s\n", cg->version, cg->path);
	return rc;
}

/* A child that waits for a byte, then touches mb MiB and exits. */
static pid_t toucher(int *go, size_t mb)
{
	int p[2];
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char c;
		char *m;

		close(p[1]);
		if (read(p[0], &c, 1) != 1)
			_exit(2);
		m = malloc(mb << 20);
		for (size_t i = 0; m && i < mb << 20; i += 4096)
			m[i] = 1;
		_exit(m ? 0 : 3);
	}
	close(p[0]);
	*go = p[1];
	return pid;
}

static bool in_cgroup(pid_t pid, const char *name)
{
	char p[64], buf[4096];
	FILE *f;
	size_t n;

	snprintf(p, sizeof(p), "/proc/%d/cgroup", (int)pid);
	f = fopen(p, "r");
	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, name) != NULL;
}

static void made_used_and_removed(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	char name[64];
	struct stat st;
	int go, ws;
	int64_t peak;
	pid_t pid;

	(void)state;
	snprintf(name, sizeof(name), "moe-bench-test-%d", (int)getpid());
	if (real_cgroup(&cg, name, 64ull << 20))
		skip();
	assert_int_equal(stat(cg.path, &st), 0);
	assert_true(cg.cap == 64ull << 20);
	pid = toucher(&go, 16);
	assert_int_equal(bench_cgroup_enter(&cg, pid, &err), 0);
	assert_true(in_cgroup(pid, name));
	assert_int_equal(write(go, "g", 1), 1);
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	peak = bench_cgroup_peak(&cg);
	if (peak == -ENOENT)
		printf("this kernel keeps no peak (memory.peak): not checked\n");
	else
		assert_true(peak >= 16ll << 20 && peak <= 64ll << 20);
	assert_int_equal(bench_cgroup_oom_kills(&cg), 0);
	assert_int_equal(bench_cgroup_remove(&cg, &err), 0);
	assert_int_equal(stat(cg.path[0] ? cg.path : "/nonexistent", &st), -1);
	close(go);
}

/* A process that wants twice the cap is killed, and the kill is seen:
 * what moe-bench tells a user whose cap is too small. */
static void oom_kill_seen(void **state)
{
	struct bench_cgroup cg;
	struct moe_msg err = { "" };
	char name[64], path[4096];
	struct stat st;
	int go, ws;
	pid_t pid;

	(void)state;
	snprintf(name, sizeof(name), "moe-bench-oom-%d", (int)getpid());
	if (real_cgroup(&cg, name, 32ull << 20))
		skip();
	snprintf(path, sizeof(path), "%s", cg.path);
	pid = toucher(&go, 64);
	assert_int_equal(bench_cgroup_enter(&cg, pid, &err), 0);
	assert_int_equal(write(go, "g", 1), 1);
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
	assert_true(bench_cgroup_oom_kills(&cg) >= 1);
	assert_int_equal(bench_cgroup_remove(&cg, &err), 0);
	assert_int_equal(stat(path, &st), -1);
	close(go);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(missing_root_refused),
		cmocka_unit_test(file_root_refused),
		cmocka_unit_test(plain_directory_refused),
		cmocka_unit_test(cap_refused_leaves_nothing),
		cmocka_unit_test(environment_names_the_root),
		cmocka_unit_test(made_used_and_removed),
		cmocka_unit_test(oom_kill_seen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
