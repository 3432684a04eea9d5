/* The notify protocol against a test socket: what moed sends is what a
 * service manager receives; without $NOTIFY_SOCKET nothing is sent. Then
 * a real moed as systemd would see it: READY only once it serves (its
 * socket takes a connection the moment READY arrives), RELOADING and
 * READY around a SIGHUP, STOPPING on SIGTERM, and watchdog pings that
 * keep coming while clients keep it busy. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "notify.h"
#include "sock.h"
#include "testutil.h"

static int listener(const char *name, int abstract)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));

	assert_true(fd >= 0);
	memcpy(sa.sun_path, name, strlen(name));
	if (abstract)
		sa.sun_path[0] = 0;
	else
		unlink(name);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, len), 0);
	return fd;
}

static void expect_msg(int fd, const char *want)
{
	char buf[512];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);

	assert_true(n > 0);
	buf[n] = 0;
	assert_string_equal(buf, want);
}

static void path_socket(void **s)
{
	char path[256];
	int fd;

	tmp_path(path, sizeof(path), "notify");
	fd = listener(path, 0);
	setenv("NOTIFY_SOCKET", path, 1);
	assert_int_equal(moe_notify("READY=1\nSTATUS=serving"), 0);
	expect_msg(fd, "READY=1\nSTATUS=serving");
	assert_int_equal(moe_notifyf("STATUS=%d clients", 3), 0);
	expect_msg(fd, "STATUS=3 clients");
	close(fd);
	unsetenv("NOTIFY_SOCKET");
}

static void abstract_socket(void **s)
{
	char name[64];
	int fd;

	snprintf(name, sizeof(name), "@moetest-notify-%d", (int)getpid());
	fd = listener(name, 1);
	setenv("NOTIFY_SOCKET", name, 1);
	assert_int_equal(moe_notify("WATCHDOG=1"), 0);
	expect_msg(fd, "WATCHDOG=1");
	close(fd);
	unsetenv("NOTIFY_SOCKET");
}

static void not_under_systemd(void **s)
{
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(moe_notify("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(moe_notify("READY=1"), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}

static void watchdog_interval(void **s)
{
	char pid[32];

	unsetenv("WATCHDOG_PID");
	unsetenv("WATCHDOG_USEC");
	assert_int_equal(moe_notify_watchdog_usec(), 0);
	setenv("WATCHDOG_USEC", "2000000", 1);
	assert_int_equal(moe_notify_watchdog_usec(), 2000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(moe_notify_watchdog_usec(), 2000000);
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(moe_notify_watchdog_usec(), 0); /* meant for another */
	setenv("WATCHDOG_PID", "", 1);
	setenv("WATCHDOG_USEC", "12x", 1);
	assert_int_equal(moe_notify_watchdog_usec(), 0);
}

/* ---- a real moed ---- */

#define N_EMBD 256

static struct tmoed md;
static char notify_path[256];
static int notify_fd = -1;

static int moed_setup(void **s)
{
	tmoed_init(&md, "notify-moed");
	tmp_path(notify_path, sizeof(notify_path), "notify-sock");
	return run_cmd("%s/moe-gen %s -q --arch qwen2moe --layers 3 --experts 8 --top-k 2 --embd %d --ff 256",
		       bin_dir(), md.model, N_EMBD) ? -1 : 0;
}

static int moed_teardown(void **s)
{
	tmoed_print_log(&md);
	return 0;
}

/* A fresh notify socket in moed's environment; watchdog_usec 0: none. */
static void listen_notify(const char *watchdog_usec)
{
	struct timeval tv = { .tv_sec = 10 };

	notify_fd = listener(notify_path, 0);
	assert_int_equal(setsockopt(notify_fd, SOL_SOCKET, SO_RCVTIMEO, &tv,
				    sizeof(tv)), 0);
	setenv("NOTIFY_SOCKET", notify_path, 1);
	unsetenv("WATCHDOG_PID");
	if (watchdog_usec)
		setenv("WATCHDOG_USEC", watchdog_usec, 1);
	else
		unsetenv("WATCHDOG_USEC");
}

static void unlisten_notify(void)
{
	close(notify_fd);
	notify_fd = -1;
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
}

/* The next datagram (waiting up to 10 s), NUL-terminated. */
static void next_msg(char *buf, size_t len)
{
	ssize_t n = recv(notify_fd, buf, len - 1, 0);

	if (n <= 0)
		fail_msg("no notify message from moed: %s", strerror(errno));
	buf[n] = 0;
}

static int64_t mono_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* READY=1 comes once moed serves: at that moment its socket takes a
 * connection and answers, and nothing was said before it. A SIGHUP is
 * bracketed by RELOADING=1 (with the monotonic time systemd wants) and
 * READY=1; SIGTERM says STOPPING=1; no watchdog pings unless asked. */
static void moed_lifecycle(void **s)
{
	struct ipc_status_reply st;
	struct ipc_msg_hdr q;
	char buf[512], want[512];
	long long t;
	int fd;

	listen_notify(NULL);
	assert_int_equal(tmoed_spawn(&md, "--cache-mb 16 --threads 2"), 0);
	next_msg(buf, sizeof(buf));
	fd = ipc_connect(md.sock, 1000); /* now, before anything else */
	assert_true(fd >= 0);
	snprintf(want, sizeof(want), "READY=1\nSTATUS=serving %s", md.model);
	assert_string_equal(buf, want);
	ipc_sock_timeout(fd, 5000);
	ipc_msg_init(&q, IPC_MSG_STATUS, sizeof(q), 0);
	assert_int_equal(ipc_send(fd, &q, sizeof(q), -1, 0), 0);
	assert_int_equal(ipc_recv(fd, &st, sizeof(st), NULL, 0), sizeof(st));
	assert_int_equal(st.pid, md.pid);
	close(fd);

	kill(md.pid, SIGHUP);
	next_msg(buf, sizeof(buf));
	assert_int_equal(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%lld", &t), 1);
	assert_true(t > 0 && t <= mono_usec() && mono_usec() - t < 10000000);
	next_msg(buf, sizeof(buf));
	assert_string_equal(buf, want);

	/* A second of housekeeping ticks: still no WATCHDOG=1. */
	usleep(1200000);
	assert_int_equal(tmoed_stop(&md), 0);
	next_msg(buf, sizeof(buf));
	assert_string_equal(buf, "STOPPING=1");
	assert_int_equal(recv(notify_fd, buf, sizeof(buf), MSG_DONTWAIT), -1);
	unlisten_notify();
}

#define LOAD_SECONDS 3
#define LOAD_CLIENTS 3

/* A client keeping moed busy for LOAD_SECONDS: requests of 64 tokens
 * back to back. Writes how many were answered with status 0 to out;
 * exits 1 at the first that was not. */
static void load_client(int out, uint64_t seed)
{
	struct trng r = { seed };
	struct tconn c;
	struct ipc_cqe e;
	float *x = malloc(64 * N_EMBD * sizeof(float));
	int64_t end = mono_usec() + LOAD_SECONDS * 1000000;
	uint32_t done = 0;

	trng_fill(&r, x, 64 * N_EMBD, -1.5f, 1.5f);
	if (tconn_open(&c, md.sock, 64, 0, "notify-load"))
		_exit(1);
	while (mono_usec() < end) {
		if (tconn_submit(&c, done % 3, 0, 64, x) ||
		    tconn_wait(&c, &e, 10000) || e.status)
			_exit(1);
		done++;
	}
	tconn_close(&c);
	_exit(write(out, &done, sizeof(done)) == sizeof(done) ? 0 : 1);
}

/* With a 1 s watchdog, pings come every half second, and keep coming
 * while every client keeps moed's dispatcher busy: never a gap the
 * watchdog would take for a hang. */
static void watchdog_under_load(void **s)
{
	pid_t kids[LOAD_CLIENTS];
	int64_t last, gap_max = 0, end;
	uint32_t pings = 0, answered = 0, n;
	char buf[512];
	int p[2], st;

	listen_notify("1000000");
	assert_int_equal(tmoed_spawn(&md, "--cache-mb 16 --threads 2"), 0);
	next_msg(buf, sizeof(buf));
	assert_true(strncmp(buf, "READY=1", 7) == 0);
	assert_int_equal(pipe(p), 0);
	for (int i = 0; i < LOAD_CLIENTS; i++) {
		kids[i] = fork();
		assert_true(kids[i] >= 0);
		if (kids[i] == 0) {
			close(p[0]);
			load_client(p[1], 50 + (uint64_t)i);
		}
	}
	close(p[1]);
	last = mono_usec();
	end = last + LOAD_SECONDS * 1000000;
	while (mono_usec() < end) {
		next_msg(buf, sizeof(buf));
		assert_string_equal(buf, "WATCHDOG=1");
		pings++;
		if (mono_usec() - last > gap_max)
			gap_max = mono_usec() - last;
		last = mono_usec();
	}
	for (int i = 0; i < LOAD_CLIENTS; i++) {
		assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		assert_int_equal(read(p[0], &n, sizeof(n)), sizeof(n));
		answered += n;
	}
	close(p[0]);
	printf("  %u requests of 64 tokens answered in %d s; %u watchdog pings, longest gap %.0f ms\n",
	       answered, LOAD_SECONDS, pings, gap_max / 1e3);
	assert_true(answered >= LOAD_CLIENTS);
	assert_true(pings >= 2 * LOAD_SECONDS - 2);
	assert_true(gap_max < 1000000);
	assert_int_equal(tmoed_stop(&md), 0);
	unlisten_notify();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(path_socket),
		cmocka_unit_test(abstract_socket),
		cmocka_unit_test(not_under_systemd),
		cmocka_unit_test(watchdog_interval),
	};
	const struct CMUnitTest moed_tests[] = {
		cmocka_unit_test(moed_lifecycle),
		cmocka_unit_test(watchdog_under_load),
	};

	return cmocka_run_group_tests(tests, NULL, NULL) |
	       cmocka_run_group_tests(moed_tests, moed_setup, moed_teardown);
}
