/* moe-bench's cleanup on a signal (see bench_cleanup.h). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_cleanup.h"

/* Each path is written while its flag is clear, and the flag set after
 * it: a signal between the two sees the flag clear and skips the path.
 * The signal fences keep the compiler from reordering the two (the
 * handler runs on whichever thread the signal lands on, but each record
 * is made by the thread that owns the thing, before anyone could signal
 * about it, so compiler order is the order that matters). */
static volatile sig_atomic_t have_pid, have_dir, have_cg;
static volatile pid_t moed_pid;
static char dir_path[PATH_MAX];
static char cg_path[PATH_MAX];

void bench_cleanup_pid(pid_t pid)
{
	have_pid = 0;
	atomic_signal_fence(memory_order_seq_cst);
	moed_pid = pid;
	atomic_signal_fence(memory_order_seq_cst);
	have_pid = pid > 0;
}

static void record(volatile sig_atomic_t *flag, char *buf, const char *path)
{
	*flag = 0;
	atomic_signal_fence(memory_order_seq_cst);
	if (!path || strlen(path) >= PATH_MAX)
		return;
	memcpy(buf, path, strlen(path) + 1);
	atomic_signal_fence(memory_order_seq_cst);
	*flag = 1;
}

void bench_cleanup_dir(const char *dir)
{
	record(&have_dir, dir_path, dir);
}

void bench_cleanup_cgroup(const char *path)
{
	record(&have_cg, cg_path, path);
}

static void say(const char *s)
{
	if (write(STDERR_FILENO, s, strlen(s)) < 0)
		return;
}

static void nap_ms(long ms)
{
	struct timespec ts = { 0, ms * 1000000 };

	nanosleep(&ts, NULL);
}

/* SIGTERM, up to 5 s to exit, then SIGKILL. True if it was reaped. */
static int stop_moed(pid_t pid)
{
	int ws;

	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		pid_t r = waitpid(pid, &ws, WNOHANG);

		if (r == pid || (r < 0 && errno == ECHILD))
			return 1;
		nap_ms(10);
	}
	kill(pid, SIGKILL);
	return waitpid(pid, &ws, 0) == pid;
}

/* strcat into a fixed buffer, async-signal-safe. */
static void join(char *out, size_t cap, const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	if (la + lb + 2 > cap) {
		out[0] = 0;
		return;
	}
	memcpy(out, a, la);
	out[la] = '/';
	memcpy(out + la + 1, b, lb + 1);
}

void bench_cleanup_rmdir(const char *dir)
{
	static const char *const files[] = { "moed.sock", "notify", "moed.log" };
	char p[PATH_MAX + 16];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		join(p, sizeof(p), dir, files[i]);
		if (p[0])
			unlink(p);
	}
	rmdir(dir);
}

/* A cgroup can be removed once its last process has been released,
 * which can trail the exit by a little: up to 2 s. */
static int remove_cgroup(void)
{
	for (int i = 0; i < 200; i++) {
		if (rmdir(cg_path) == 0 || errno == ENOENT)
			return 1;
		if (errno != EBUSY)
			return 0;
		nap_ms(10);
	}
	return 0;
}

static atomic_flag busy = ATOMIC_FLAG_INIT;

static void on_signal(int sig)
{
	const char *name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
	int ok = 1, any = have_pid || have_dir || have_cg;

	/* A signal landing on another thread meanwhile leaves it to us. */
	if (atomic_flag_test_and_set_explicit(&busy, memory_order_relaxed))
		return;

	say("moe-bench: interrupted by ");
	say(name);
	say(": stopping\n");
	if (have_pid && moed_pid > 0 && !stop_moed(moed_pid)) {
		say("moe-bench: moed could not be reaped\n");
		ok = 0;
	}
	if (have_dir)
		bench_cleanup_rmdir(dir_path);
	if (have_cg && !remove_cgroup()) {
		say("moe-bench: cannot remove the cgroup ");
		say(cg_path);
		say("\n");
		ok = 0;
	}
	if (ok && any)
		say("moe-bench: moed stopped, its cgroup and temporary directory removed\n");
	else if (ok)
		say("moe-bench: nothing of its own was running\n");
	_exit(128 + sig);
}

void bench_cleanup_default(void)
{
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
}

void bench_cleanup_install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	/* A second signal on this thread waits for the first one's exit. */
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}
