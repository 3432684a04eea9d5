/* What keeps clients of one moed apart and strangers out, checked on a
 * real moed:
 *   own_memory_only     each client's arena is its own memfd, sealed, not
 *                       world-accessible; descriptors naming any slot or
 *                       size beyond a client's grant are refused and
 *                       touch nobody's memory; a client that scribbles on
 *                       its arena's layout header changes nothing moed
 *                       does; another uid cannot open moed's or a
 *                       client's fds or memory through /proc;
 *   uid_not_allowed     the socket (mode 0660) keeps other users out; past
 *                       a looser mode, SO_PEERCRED against --allow-uid
 *                       does; --allow-gid lets a group in;
 *   supplementary_gid   --allow-gid lets in a user whose supplementary
 *                       groups hold it (usermod -aG), not only its
 *                       primary group;
 *   status_not_allowed  a peer off the allow lists gets neither status
 *                       nor stats: refused at accept, with a log line;
 *   silent_connections  connections that never say hello: at most
 *                       max-clients of them at once (the next refused,
 *                       logged), each closed after hello-timeout-ms
 *                       (logged), while a client that did say hello
 *                       keeps being served;
 *   unit_unprivileged   systemd/moed.service runs moed as its own user
 *                       with no capabilities and a umask that leaves
 *                       nothing world-readable (systemd-analyze security
 *                       agrees, where it is installed).
 * The parts that act as another user (nobody, 65534) need root; without
 * it they are skipped, saying so. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "sock.h"
#include "testutil.h"

#define N_EMBD 256
#define NOBODY 65534

static struct tmoed md;
static float x[4 * N_EMBD], want[4 * N_EMBD];

static int setup(void **s)
{
	struct trng r = { 5 };
	struct tref *ref;

	tmoed_init(&md, "sec");
	if (run_cmd("%s/moe-gen %s -q --arch olmoe --layers 2 --experts 8 --top-k 2 --embd %d --ff 256",
		    bin_dir(), md.model, N_EMBD))
		return -1;
	/* Readable by the other user the tests act as. */
	chmod(md.model, 0644);
	trng_fill(&r, x, 4 * N_EMBD, -1.f, 1.f);
	ref = tref_open(md.model, 2);
	if (!ref || tref_forward(ref, 1, x, 4, NULL, NULL, want))
		return -1;
	tref_close(ref);
	return 0;
}

static void start(const char *extra)
{
	assert_int_equal(truncate(md.log, 0), 0);
	if (tmoed_start(&md, "--cache-mb 16 --threads 2 %s", extra)) {
		tmoed_print_log(&md);
		fail_msg("moed did not start");
	}
}

static void stop(void)
{
	assert_int_equal(tmoed_stop(&md), 0);
}

static void wait_no_clients(void)
{
	struct ipc_status_reply st;

	for (int i = 0; i < 500; i++) {
		assert_int_equal(tmoed_status(&md, &st), 0);
		if (!st.clients)
			return;
		usleep(10000);
	}
	fail_msg("clients still connected after 5 s");
}

/* Run fn as uid and gid NOBODY, with the n supplementary groups given,
 * in a child; its exit status. */
static int as_nobody_in(const gid_t *groups, size_t n, int (*fn)(void *),
			void *arg)
{
	pid_t p = fork();
	int st;

	assert_true(p >= 0);
	if (p == 0) {
		if (setgroups(n, groups) || setresgid(NOBODY, NOBODY, NOBODY) ||
		    setresuid(NOBODY, NOBODY, NOBODY))
			_exit(100);
		_exit(fn(arg));
	}
	assert_int_equal(waitpid(p, &st, 0), p);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static int as_nobody(int (*fn)(void *), void *arg)
{
	return as_nobody_in(NULL, 0, fn, arg);
}

static bool root(const char *test)
{
	if (geteuid() == 0)
		return true;
	printf("  SKIP %s: acting as another user needs root\n", test);
	return false;
}

/* One request of layer 1 on slot 0; the output as the reference's. */
static void forward_ok(struct tconn *c)
{
	struct ipc_cqe e;

	assert_int_equal(tconn_submit(c, 1, 0, 4, x), 0);
	assert_int_equal(tconn_wait(c, &e, 10000), 0);
	assert_int_equal(e.status, 0);
	assert_memory_equal(ipc_slot_out(&c->a, 0), want, sizeof(want));
}

static int desc_status(struct tconn *c, struct ipc_desc *d)
{
	struct ipc_cqe e;

	assert_int_equal(tconn_push(c, d), 0);
	assert_int_equal(tconn_wait(c, &e, 10000), 0);
	return e.status;
}

/* ---- each client reaches only its own memory ---- */

struct peek {
	pid_t pid;
	int fd;
};

/* As another user: moed's fds, its memory and a client's arena fd are
 * all closed to us. 0 when every open failed with EACCES. */
static int peek_proc(void *arg)
{
	const struct peek *p = arg;
	char path[64];
	int bad = 0, fd;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)p->pid, p->fd);
	fd = open(path, O_RDWR);
	bad |= fd >= 0 || errno != EACCES;
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)md.pid);
	fd = open(path, O_RDONLY);
	bad |= (fd >= 0 || errno != EACCES) << 1;
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)md.pid);
	bad |= (opendir(path) != NULL || errno != EACCES) << 2;
	return bad;
}

static void own_memory_only(void **s)
{
	struct tconn a, b;
	struct ipc_desc d;
	struct stat st;
	float *b_out;

	start("");
	assert_int_equal(tconn_open(&a, md.sock, 4, 2, "sec-a"), 0);
	assert_int_equal(tconn_open(&b, md.sock, 4, 2, "sec-b"), 0);
	/* Two memfds, neither world- nor group-accessible, both sealed. */
	assert_int_equal(fstat(a.a.fd, &st), 0);
	printf("  arena memfd mode %04o\n", (unsigned)(st.st_mode & 07777));
	assert_int_equal(st.st_mode & 0077, 0);
	assert_int_equal(ipc_arena_check_seals(a.a.fd), 0);
	assert_ptr_not_equal(a.a.base, b.a.base);
	forward_ok(&b);
	b_out = ipc_slot_out(&b.a, 0);
	/* a asks for slots and sizes past its grant: each refused. */
	memset(&d, 0, sizeof(d));
	d.layer = 1;
	d.n_tokens = 1;
	d.slot = a.a.lay.slot_count; /* the next slot, were there one */
	assert_int_equal(desc_status(&a, &d), -MOE_EDESC);
	d.slot = UINT32_MAX;
	assert_int_equal(desc_status(&a, &d), -MOE_EDESC);
	d.slot = 0;
	d.n_tokens = a.r.max_tokens + 1;
	assert_int_equal(desc_status(&a, &d), -MOE_EDESC);
	d.n_tokens = 1;
	d.flags = IPC_DESC_ROUTED;
	d.route_k = a.r.max_route_k + 1;
	assert_int_equal(desc_status(&a, &d), -MOE_EDESC);
	/* a rewrites its arena's layout: moed goes by its own copy. */
	a.a.base[offsetof(struct ipc_arena_hdr, slot_off)] ^= 0x40;
	memset(a.a.base + offsetof(struct ipc_arena_hdr, slot_size), 0xff, 8);
	memset(a.a.base + offsetof(struct ipc_arena_hdr, max_tokens), 0xff, 4);
	forward_ok(&a);
	/* and b's answer is still b's. */
	assert_memory_equal(b_out, want, sizeof(want));
	forward_ok(&b);
	if (root("own_memory_only: /proc")) {
		struct peek p = { getpid(), a.a.fd };

		assert_int_equal(as_nobody(peek_proc, &p), 0);
	}
	tconn_close(&a);
	tconn_close(&b);
	assert_true(tmoed_log_count(&md, "refused: slot 4294967295") == 1);
	stop();
}

/* ---- a uid not allowed cannot connect ---- */

/* As nobody: connect and say hello. The hello's status, or the negative
 * errno of the connect (as an exit status: 100 + errno). */
static int hello_as_nobody(void *arg)
{
	struct tconn c;
	int rc = tconn_open(&c, md.sock, 4, 0, "sec-nobody");

	if (rc == 0) { /* no cmocka asserts in a child: it must just exit */
		struct ipc_cqe e;

		rc = tconn_submit(&c, 1, 0, 4, x);
		rc = rc ? rc : tconn_wait(&c, &e, 10000);
		rc = rc ? rc : e.status;
		if (!rc && memcmp(ipc_slot_out(&c.a, 0), want, sizeof(want)))
			rc = 3;
		tconn_close(&c);
		return rc ? 3 : 0;
	}
	if (c.sock < 0)
		return 100 + (-rc & 0x7f);
	return rc == -EPERM ? 1 : 2;
}

static void uid_not_allowed(void **s)
{
	struct stat st;
	char extra[64];

	if (!root("uid_not_allowed")) {
		skip();
		return;
	}
	snprintf(extra, sizeof(extra), "--allow-uid %u", (unsigned)getuid());
	start(extra);
	assert_int_equal(stat(md.sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0660);
	/* The socket's mode turns another user away... */
	assert_int_equal(as_nobody(hello_as_nobody, NULL), 100 + EACCES);
	/* ...and past a looser mode, moed itself does. */
	assert_int_equal(chmod(md.sock, 0666), 0);
	assert_int_equal(as_nobody(hello_as_nobody, NULL), 1);
	assert_int_equal(tmoed_log_count(&md, "not in allow-uid or allow-gid"), 1);
	stop();
	/* A group let in: the socket's group, and --allow-gid. */
	snprintf(extra, sizeof(extra), "--allow-gid %u --allow-uid %u", NOBODY,
		 (unsigned)getuid()); /* and us, to ask for status */
	start(extra);
	assert_int_equal(chown(md.sock, 0, NOBODY), 0);
	assert_int_equal(as_nobody(hello_as_nobody, NULL), 0);
	wait_no_clients(); /* its hang-up logged */
	assert_int_equal(tmoed_log_count(&md, "uid 65534) connected"), 1);
	assert_int_equal(tmoed_log_count(&md, "uid 65534) disconnected"), 1);
	stop();
}

/* A group nobody is not in as its primary group: the socket's group, as
 * an installed moed's socket is group moed. */
#define SUPP_GID 4242

static void supplementary_gid(void **s)
{
	const gid_t groups[] = { 27, SUPP_GID };
	char extra[64];

	if (!root("supplementary_gid")) {
		skip();
		return;
	}
	snprintf(extra, sizeof(extra), "--allow-gid %u --allow-uid %u",
		 SUPP_GID, (unsigned)getuid());
	start(extra);
	assert_int_equal(chown(md.sock, 0, SUPP_GID), 0);
	/* Primary gid 65534, not allowed; gid 4242 among its groups. */
	assert_int_equal(as_nobody_in(groups, 2, hello_as_nobody, NULL), 0);
	wait_no_clients();
	assert_int_equal(tmoed_log_count(&md, "uid 65534) connected"), 1);
	/* Without the group the same user is turned away (the socket's mode
	 * aside, which only moed's check can do here). */
	assert_int_equal(chmod(md.sock, 0666), 0);
	assert_int_equal(as_nobody(hello_as_nobody, NULL), 1);
	assert_int_equal(tmoed_log_count(&md, "not in allow-uid or allow-gid"), 1);
	stop();
}

/* As nobody: moed's answers to status and stats, asked directly, then
 * moectl status's exit status and output through a pipe. Exit 0 when
 * both questions were refused with -EPERM and moectl printed nothing
 * of the daemon's. */
static int status_as_nobody(void *arg)
{
	struct ipc_status_reply st;
	struct ipc_stats_reply sr;
	int out = *(int *)arg, rc;

	memset(&st, 0, sizeof(st));
	rc = ipc_ask(md.sock, 5000, IPC_MSG_STATUS, IPC_MSG_STATUS_REPLY, &st,
		     sizeof(st));
	if (rc != -EPERM || st.pid)
		return 1;
	rc = ipc_ask(md.sock, 5000, IPC_MSG_STATS, IPC_MSG_STATS_REPLY, &sr,
		     sizeof(sr));
	if (rc != -EPERM)
		return 2;
	if (dup2(out, 1) < 0 || dup2(out, 2) < 0)
		return 3;
	execl("/bin/sh", "sh", "-c", "\"$0\"/moectl --socket \"$1\" status; echo \"exit $?\"",
	      bin_dir(), md.sock, (char *)NULL);
	return 4;
}

static void status_not_allowed(void **s)
{
	struct ipc_status_reply st;
	char extra[64], buf[4096];
	ssize_t n, got = 0;
	int p[2];

	if (!root("status_not_allowed")) {
		skip();
		return;
	}
	snprintf(extra, sizeof(extra), "--allow-uid %u", (unsigned)getuid());
	start(extra);
	assert_int_equal(chmod(md.sock, 0666), 0); /* past the socket's mode */
	assert_int_equal(pipe(p), 0);
	assert_int_equal(as_nobody(status_as_nobody, &p[1]), 0);
	close(p[1]);
	while ((n = read(p[0], buf + got, sizeof(buf) - 1 - (size_t)got)) > 0)
		got += n;
	close(p[0]);
	buf[got] = 0;
	printf("  moectl status as nobody: %s", buf);
	assert_non_null(strstr(buf, "exit 1"));
	assert_non_null(strstr(buf, "refused"));
	assert_null(strstr(buf, "model"));
	assert_null(strstr(buf, "clients"));
	/* Three connections, each refused and logged with its uid. */
	assert_int_equal(tmoed_log_count(&md, "(uid 65534, gid 65534) refused: uid 65534"), 3);
	/* An allowed uid is still answered. */
	assert_int_equal(tmoed_status(&md, &st), 0);
	assert_int_equal(st.pid, md.pid);
	stop();
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

#define SILENT 4

static void silent_connections(void **s)
{
	struct ipc_status_reply st;
	struct tconn c, late;
	int quiet[SILENT];
	double t0, dt;

	start("--max-clients 4 --hello-timeout-ms 500");
	assert_int_equal(tconn_open(&c, md.sock, 4, 2, "sec-talker"), 0);
	t0 = now_s();
	for (int i = 0; i < SILENT; i++) {
		quiet[i] = ipc_connect(md.sock, 5000);
		assert_true(quiet[i] >= 0);
	}
	/* max-clients of them wait: the next peer, client or question, is
	 * turned away with a clear status. */
	assert_int_equal(tconn_open(&late, md.sock, 4, 0, "sec-late"), -EUSERS);
	tconn_close(&late);
	assert_int_equal(tmoed_status(&md, &st), -EUSERS);
	forward_ok(&c);
	/* Each silent one is closed once its time is up (the timer ticks
	 * every second), not before. */
	for (int i = 0; i < SILENT; i++) {
		assert_true(sock_hung_up(quiet[i]));
		close(quiet[i]);
	}
	dt = now_s() - t0;
	printf("  %d silent connections closed after %.2f s\n", SILENT, dt);
	assert_true(dt >= 0.45 && dt < 3.0);
	assert_int_equal(tmoed_log_count(&md, "no hello within 500 ms"), SILENT);
	assert_int_equal(tmoed_log_count(&md, "have not said hello yet (max-clients 4)"), 2);
	/* Room again, and the client that said hello was never cut off. */
	forward_ok(&c);
	assert_int_equal(tmoed_status(&md, &st), 0);
	assert_int_equal(st.clients, 1);
	tconn_close(&c);
	stop();
}

/* ---- the unit ---- */

/* The value of key= in the unit's [Service] section, or "" if absent. */
static const char *unit_value(const char *key)
{
	static char val[256];
	char line[512];
	size_t n = strlen(key);
	FILE *f = fopen("systemd/moed.service", "r");

	assert_non_null(f);
	val[0] = 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == '=') {
			snprintf(val, sizeof(val), "%s", line + n + 1);
			val[strcspn(val, "\n")] = 0;
		}
	fclose(f);
	return val;
}

static void unit_unprivileged(void **s)
{
	char cmd[512], line[512];
	bool user_ok = false;
	FILE *p;

	static const char *const keys[] = { "User", "Group", "UMask",
					    "RuntimeDirectoryMode" };

	for (int i = 0; i < 4; i++)
		printf("  %s=%s\n", keys[i], unit_value(keys[i]));
	assert_string_equal(unit_value("User"), "moed");
	assert_string_equal(unit_value("Group"), "moed");
	assert_string_equal(unit_value("NoNewPrivileges"), "yes");
	assert_string_equal(unit_value("CapabilityBoundingSet"), "");
	assert_string_equal(unit_value("AmbientCapabilities"), "");
	/* Nothing it creates (socket, its directory) open to others. */
	assert_int_equal(strtoul(unit_value("UMask"), NULL, 8) & 07, 07);
	assert_int_equal(strtoul(unit_value("RuntimeDirectoryMode"), NULL, 8) & 07, 0);
	if (system("command -v systemd-analyze >/dev/null 2>&1")) {
		printf("  systemd-analyze is not installed: the unit file's lines were checked\n");
		return;
	}
	snprintf(cmd, sizeof(cmd), "systemd-analyze security --offline=true --no-pager systemd/moed.service 2>&1");
	p = popen(cmd, "r");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p)) {
		/* "✓ User=/DynamicUser=  Service runs under a static non-root user identity" */
		if (strstr(line, "User=/DynamicUser=") && strstr(line, "non-root"))
			user_ok = strncmp(line, "\xe2\x9c\x93", 3) == 0; /* ✓ */
		if (strstr(line, "Overall exposure level"))
			printf("  systemd-analyze: %s", strstr(line, "Overall"));
	}
	pclose(p);
	assert_true(user_ok);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(own_memory_only),
		cmocka_unit_test(uid_not_allowed),
		cmocka_unit_test(supplementary_gid),
		cmocka_unit_test(status_not_allowed),
		cmocka_unit_test(silent_connections),
		cmocka_unit_test(unit_unprivileged),
	};
	int rc = cmocka_run_group_tests(tests, setup, NULL);

	tmoed_kill(&md);
	return rc;
}
