/* Start, watch and stop a moed of moe-bench's own (see bench_moed.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "bench_cleanup.h"
#include "bench_moed.h"

#define MAX_ARGS 64

extern char **environ;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int executable(const char *p)
{
	return access(p, X_OK) == 0;
}

int bench_moed_find(const char *given, char *out, size_t cap,
		    struct moe_msg *err)
{
	char self[PATH_MAX], *slash;
	const char *path = getenv("PATH");
	ssize_t n;

	if (given) {
		snprintf(out, cap, "%s", given);
		return executable(out) ? 0 : moe_msgf(err, -ENOENT, "--moed %s: not an executable", given);
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = 0;
		slash = strrchr(self, '/');
		*slash = 0;
		snprintf(out, cap, "%s/moed", self);
		if (executable(out))
			return 0;
		snprintf(out, cap, "%s/../sbin/moed", self);
		if (executable(out))
			return 0;
	}
	for (const char *p = path; p && *p;) {
		size_t len = strcspn(p, ":");

		snprintf(out, cap, "%.*s/moed", (int)len, p);
		if (len && executable(out))
			return 0;
		p += len + (p[len] == ':');
	}
	return moe_msgf(err, -ENOENT, "moed not found next to moe-bench (%s/moed, %s/../sbin/moed) nor on $PATH: give --moed PATH",
			n > 0 ? self : "?", n > 0 ? self : "?");
}

/* A datagram socket in the private directory for moed's READY=1. */
static int notify_socket(struct bench_moed *d, char *path, size_t cap,
			 struct moe_msg *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	snprintf(path, cap, "%s/notify", d->dir);
	if (strlen(path) >= sizeof(sa.sun_path))
		return moe_msgf(err, -ENAMETOOLONG, "%s: path too long for a socket (set TMPDIR shorter)", path);
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		int rc = -errno;

		if (fd >= 0)
			close(fd);
		return moe_msgf(err, rc, "%s: %s", path, moe_strerror(rc));
	}
	d->notify_fd = fd;
	return 0;
}

/* argv and envp are built before fork: the child of a threaded process
 * may only call async-signal-safe functions until it execs. */
static int build_argv(const struct bench_moed *d, const struct bench_moed_opts *o,
		      const char **argv)
{
	int n = 0;

	argv[n++] = o->moed;
	argv[n++] = "--model";
	argv[n++] = o->model;
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	for (int i = 0; o->args && o->args[i]; i++) {
		if (n >= MAX_ARGS - 1)
			return -E2BIG;
		argv[n++] = o->args[i];
	}
	argv[n] = NULL;
	return 0;
}

static char **build_envp(const char *notify)
{
	size_t n = 0, j = 0;
	char **envp;

	while (environ[n])
		n++;
	envp = calloc(n + 2, sizeof(*envp));
	if (!envp)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "NOTIFY_SOCKET=", 14) &&
		    strncmp(environ[i], "WATCHDOG_", 9) &&
		    strncmp(environ[i], "JOURNAL_STREAM=", 15))
			envp[j++] = environ[i];
	if (asprintf(&envp[j], "NOTIFY_SOCKET=%s", notify) < 0) {
		free(envp);
		return NULL;
	}
	return envp;
}

/* The child: wait for the parent to have moved it into the cgroup, then
 * exec; an exec failure goes back as errno on the CLOEXEC pipe. moed
 * dies with moe-bench (the death signal survives the exec; a parent
 * already gone before it was set shows as a new parent). */
static void child(pid_t parent, int go, int report, int log,
		  const char **argv, char **envp)
{
	char c;
	int e;

	bench_cleanup_default();
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(127);
	if (read(go, &c, 1) != 1)
		_exit(127);
	dup2(log, STDERR_FILENO);
	dup2(log, STDOUT_FILENO);
	execve(argv[0], (char *const *)argv, envp);
	e = errno;
	if (write(report, &e, sizeof(e)) < 0)
		_exit(127);
	_exit(127);
}

static void reap(struct bench_moed *d, int wstatus, const struct rusage *ru)
{
	d->wstatus = wstatus;
	d->maxrss_kb = ru->ru_maxrss;
	d->pid = 0;
	bench_cleanup_pid(0);
}

bool bench_moed_exited(struct bench_moed *d)
{
	struct rusage ru;
	int ws;

	if (!d->pid)
		return true;
	if (wait4(d->pid, &ws, WNOHANG, &ru) != d->pid)
		return false;
	reap(d, ws, &ru);
	return true;
}

static void describe(const struct bench_moed *d, char *buf, size_t cap)
{
	if (WIFEXITED(d->wstatus))
		snprintf(buf, cap, "exited with status %d", WEXITSTATUS(d->wstatus));
	else if (WIFSIGNALED(d->wstatus))
		snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(d->wstatus),
			 strsignal(WTERMSIG(d->wstatus)));
	else
		snprintf(buf, cap, "ended (wait status %#x)", d->wstatus);
}

/* The last line of the log, for one-line errors. */
static void last_line(const struct bench_moed *d, char *buf, size_t cap)
{
	FILE *f = fopen(d->log, "re");
	char line[512];

	buf[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (line[0] != '\n')
			snprintf(buf, cap, "%.*s", (int)strcspn(line, "\n"), line);
	fclose(f);
}

/* Wait for READY=1 while watching for an early exit. */
static int wait_ready(struct bench_moed *d, uint32_t ms, struct moe_msg *err)
{
	int64_t end = now_ms() + ms;
	char buf[512], how[128], tail[400];

	for (;;) {
		struct pollfd p = { d->notify_fd, POLLIN, 0 };
		ssize_t n;

		if (poll(&p, 1, 50) > 0) {
			n = recv(d->notify_fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
			if (n > 0) {
				buf[n] = 0;
				if (strstr(buf, "READY=1"))
					return 0;
			}
		}
		if (bench_moed_exited(d)) {
			describe(d, how, sizeof(how));
			last_line(d, tail, sizeof(tail));
			return moe_msgf(err, -ECHILD, "moed %s before it was ready: %s",
					how, tail[0] ? tail : "(nothing in its log)");
		}
		if (now_ms() > end) {
			kill(d->pid, SIGKILL);
			while (!bench_moed_exited(d))
				poll(NULL, 0, 10);
			return moe_msgf(err, -ETIMEDOUT, "moed did not get ready within %u ms (log: %s)",
					ms, d->log);
		}
	}
}

static int spawn(struct bench_moed *d, const struct bench_moed_opts *o,
		 const char **argv, char **envp, struct moe_msg *err)
{
	int go[2] = { -1, -1 }, report[2] = { -1, -1 }, log, e = 0, rc = 0;
	pid_t parent;

	log = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (log < 0 || pipe2(go, O_CLOEXEC) || pipe2(report, O_CLOEXEC)) {
		rc = moe_msgf(err, -errno, "%s: %s", d->log, moe_strerror(-errno));
		goto out;
	}
	parent = getpid();
	d->pid = fork();
	if (d->pid < 0) {
		d->pid = 0;
		rc = moe_msgf(err, -errno, "fork: %s", moe_strerror(-errno));
		goto out;
	}
	if (d->pid == 0)
		child(parent, go[0], report[1], log, argv, envp);
	bench_cleanup_pid(d->pid);
	close(report[1]);
	report[1] = -1;
	if (o->cg)
		rc = bench_cgroup_enter(o->cg, d->pid, err);
	if (rc) {
		kill(d->pid, SIGKILL);
		while (!bench_moed_exited(d))
			poll(NULL, 0, 10);
		goto out;
	}
	if (write(go[1], "g", 1) != 1 || read(report[0], &e, sizeof(e)) > 0) {
		rc = moe_msgf(err, -(e ? e : EPIPE), "cannot run %s: %s", o->moed,
			      moe_strerror(e ? e : EPIPE));
		while (!bench_moed_exited(d))
			poll(NULL, 0, 10);
	}
out:
	for (int i = 0; i < 2; i++) {
		if (go[i] >= 0)
			close(go[i]);
		if (report[i] >= 0)
			close(report[i]);
	}
	if (log >= 0)
		close(log);
	return rc;
}

int bench_moed_start(struct bench_moed *d, const struct bench_moed_opts *o,
		     struct moe_msg *err)
{
	const char *tmp = getenv("TMPDIR"), *argv[MAX_ARGS];
	char notify[PATH_MAX];
	char **envp = NULL;
	int rc;

	memset(d, 0, sizeof(*d));
	d->notify_fd = -1;
	if (snprintf(d->dir, sizeof(d->dir), "%s/moe-bench.XXXXXX",
		     tmp && *tmp ? tmp : "/tmp") >= (int)sizeof(d->dir)) {
		d->dir[0] = 0;
		return moe_msgf(err, -ENAMETOOLONG, "$TMPDIR is too long for a socket path: %s", tmp);
	}
	if (!mkdtemp(d->dir)) {
		rc = -errno;
		moe_msgf(err, rc, "%s: %s", d->dir, moe_strerror(rc));
		d->dir[0] = 0;
		return rc;
	}
	bench_cleanup_dir(d->dir);
	snprintf(d->sock, sizeof(d->sock), "%s/moed.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/moed.log", d->dir);
	rc = notify_socket(d, notify, sizeof(notify), err);
	if (!rc && build_argv(d, o, argv))
		rc = moe_msgf(err, -E2BIG, "too many moed options");
	if (!rc && !(envp = build_envp(notify)))
		rc = moe_msgf(err, -ENOMEM, "out of memory");
	if (!rc)
		rc = spawn(d, o, argv, envp, err);
	if (!rc)
		rc = wait_ready(d, o->ready_ms ? o->ready_ms : 120000, err);
	if (envp) {
		for (size_t i = 0; envp[i]; i++)
			if (!strncmp(envp[i], "NOTIFY_SOCKET=", 14))
				free(envp[i]);
		free(envp);
	}
	return rc;
}

int bench_moed_stop(struct bench_moed *d, struct moe_msg *err)
{
	char how[128], tail[400];
	int64_t end = now_ms() + 10000;

	if (d->pid) {
		kill(d->pid, SIGTERM);
		while (!bench_moed_exited(d) && now_ms() < end)
			poll(NULL, 0, 10);
		if (d->pid) {
			kill(d->pid, SIGKILL);
			while (!bench_moed_exited(d))
				poll(NULL, 0, 10);
			return moe_msgf(err, -ECHILD, "moed did not stop within 10 s of SIGTERM: killed");
		}
	}
	if (WIFEXITED(d->wstatus) && WEXITSTATUS(d->wstatus) == 0)
		return 0;
	describe(d, how, sizeof(how));
	last_line(d, tail, sizeof(tail));
	return moe_msgf(err, -ECHILD, "moed %s: %s", how, tail[0] ? tail : "(nothing in its log)");
}

void bench_moed_report(const struct bench_moed *d, FILE *f, int lines)
{
	char buf[512], **ring = calloc((size_t)lines, sizeof(*ring));
	FILE *in = fopen(d->log, "re");
	int n = 0;

	if (!in || !ring) {
		free(ring);
		if (in)
			fclose(in);
		return;
	}
	while (fgets(buf, sizeof(buf), in)) {
		free(ring[n % lines]);
		ring[n % lines] = strdup(buf);
		n++;
	}
	fclose(in);
	fprintf(f, "moe-bench: the last lines of moed's log:\n");
	for (int i = n > lines ? n - lines : 0; i < n; i++)
		fprintf(f, "  %s", ring[i % lines] ? ring[i % lines] : "\n");
	for (int i = 0; i < lines; i++)
		free(ring[i]);
	free(ring);
}

void bench_moed_cleanup(struct bench_moed *d)
{
	if (d->notify_fd >= 0)
		close(d->notify_fd);
	d->notify_fd = -1;
	if (!d->dir[0])
		return;
	bench_cleanup_rmdir(d->dir);
	bench_cleanup_dir(NULL);
	d->dir[0] = 0;
}
