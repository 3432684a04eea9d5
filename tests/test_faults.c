/* Fault injection against a real moed (forked from $MOE_BIN) while
 * checking clients keep comparing every answer, byte for byte, with the
 * engine run in this process:
 *   clients_killed        MOE_FAULT_ROUNDS (200) clients SIGKILLed at a
 *                         random point of their life;
 *   moed_restarted        moed killed (SIGKILL, SIGTERM) and restarted
 *                         MOE_FAULT_RESTARTS (6) times under load, the
 *                         clients reconnecting;
 *   model_truncated       the model file cut short under moed, then put
 *                         back;
 *   reads_failing         the file system under the model shut down
 *                         (ext4 on a loop device, EXT4_IOC_SHUTDOWN: every
 *                         read from then on fails with EIO);
 *   cache_over_cgroup     --cache-mb far above what moed's memory cgroup
 *                         allows.
 * After each: no wrong answer, moed alive with no client left (its
 * sessions, fds and memory back where they were), and its log saying
 * what happened. Checkers and the requests killed clients send stay under
 * 32 tokens per expert at once, below the sgemm threshold, so batching
 * with other clients never changes a bit. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moeclient.h>

#include "../client/bench_cgroup.h"
#include "model.h"
#include "sock.h"
#include "testutil.h"

#define N_EMBD 256
#define N_LAYER 4
#define MAX_TOK 4     /* per request: checkers and victims alike */
#define N_SET 24      /* reference inputs */
#define N_CHECKERS 3
#define RSS_SLACK_KB (8 * 1024)

/* linux/ext4.h, which no header package installs. */
#define EXT4_IOC_SHUTDOWN _IOR('X', 125, uint32_t)
#define EXT4_GOING_FLAGS_NOLOGFLUSH 0x2 /* as a device that vanished */

/* Inputs and the reference's outputs, made before any child forks. */
static struct sample {
	uint32_t layer, nt;
	float x[MAX_TOK * N_EMBD];
	float y[MAX_TOK * N_EMBD];
} set[N_SET];

static char ref_path[256];
static struct tmoed md;

/* What the checkers tell the parent, in memory shared with them. */
struct tally {
	_Atomic uint64_t ok, wrong, io_failed, lost, timeouts, connects;
};

static struct board {
	_Atomic int stop;
	_Atomic uint32_t layers; /* bit L: checkers may ask for layer L */
	struct tally t[N_CHECKERS];
} *board;

static pid_t checkers[N_CHECKERS];
static int n_checkers;   /* running */
static bool passed;      /* the test running got to its end */
static char served[256]; /* md.model between tests */
static struct bench_cgroup cg; /* cache_over_cgroup's, while it exists */

static unsigned env_uint(const char *name, unsigned def)
{
	const char *v = getenv(name);

	return v && *v ? (unsigned)strtoul(v, NULL, 10) : def;
}

static void ms_sleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- setup: one model, its reference outputs ---- */

static int setup(void **s)
{
	struct trng r = { 42 };
	struct tref *ref;

	tmoed_init(&md, "faults");
	tmp_path(ref_path, sizeof(ref_path), "faults-ref");
	if (run_cmd("%s/moe-gen %s -q --arch qwen3moe --layers %d --experts 32 --top-k 4 --embd %d --ff 256 --type Q8_0",
		    bin_dir(), ref_path, N_LAYER, N_EMBD) ||
	    run_cmd("cp %s %s", ref_path, md.model))
		return -1;
	strcpy(served, md.model);
	ref = tref_open(ref_path, 2);
	if (!ref)
		return -1;
	for (int i = 0; i < N_SET; i++) {
		set[i].layer = (uint32_t)i % N_LAYER;
		set[i].nt = 1 + (uint32_t)(i / N_LAYER) % MAX_TOK;
		trng_fill(&r, set[i].x, set[i].nt * N_EMBD, -1.5f, 1.5f);
		if (tref_forward(ref, set[i].layer, set[i].x, set[i].nt, NULL,
				 NULL, set[i].y))
			return -1;
	}
	tref_close(ref);
	board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return board == MAP_FAILED ? -1 : 0;
}

static int teardown(void **s)
{
	tmoed_kill(&md);
	return 0;
}

static void fs_release(void);

/* After each test, passed or not: nothing of it left running, moed's
 * log shown when it failed. */
static int after(void **s)
{
	if (n_checkers) {
		board->stop = 1;
		for (int k = 0; k < n_checkers; k++) {
			kill(checkers[k], SIGKILL);
			waitpid(checkers[k], NULL, 0);
		}
		n_checkers = 0;
	}
	if (!passed)
		tmoed_print_log(&md);
	passed = false;
	tmoed_kill(&md);
	fs_release();
	if (cg.path[0]) {
		struct moe_msg err = { "" };

		if (bench_cgroup_remove(&cg, &err))
			fprintf(stderr, "%s\n", err.text);
	}
	md.prefix[0] = 0;
	strcpy(md.model, served);
	return 0;
}

/* ---- checkers: clients that compare every answer ---- */

/* One request of sample i on c; counts its fate. False when the
 * connection is gone (or unusable) and must be made again. */
static bool check_one(struct tconn *c, struct tally *t, int i)
{
	size_t bytes = (size_t)set[i].nt * N_EMBD * sizeof(float);
	struct ipc_cqe e;
	int rc = tconn_submit(c, set[i].layer, 0, set[i].nt, set[i].x);

	if (!rc)
		rc = tconn_wait(c, &e, 10000);
	if (rc == -ETIMEDOUT) {
		t->timeouts++;
		fprintf(stderr, "checker %d: no answer in 10 s\n", (int)getpid());
		return false;
	}
	if (rc) {
		t->lost++; /* moed went away with the request */
		return false;
	}
	if (e.id != c->next_id || e.n_tokens != set[i].nt)
		t->wrong++;
	else if (e.status == 0 && !memcmp(ipc_slot_out(&c->a, 0), set[i].y, bytes))
		t->ok++;
	else if (e.status == -MOE_EEXPERT_IO)
		t->io_failed++;
	else {
		t->wrong++;
		fprintf(stderr, "checker %d: sample %d (layer %u): status %d, %s\n",
			(int)getpid(), i, set[i].layer, e.status,
			e.status ? moe_strerror(e.status) : "output differs");
	}
	return true;
}

static void checker(struct tally *t, uint64_t seed)
{
	struct trng r = { seed };
	struct tconn c = { .sock = -1 };
	bool up = false;

	while (!board->stop) {
		int i = (int)(trng_next(&r) % N_SET);

		if (!(board->layers & (1u << set[i].layer)))
			continue;
		if (!up) {
			if (tconn_open(&c, md.sock, MAX_TOK, 0, "fault-checker")) {
				tconn_close(&c);
				ms_sleep(10);
				continue;
			}
			up = true;
			t->connects++;
		}
		if (!check_one(&c, t, i)) {
			tconn_close(&c);
			up = false;
		}
	}
	tconn_close(&c);
}

static void start_checkers(uint32_t layers)
{
	memset(board, 0, sizeof(*board));
	n_checkers = N_CHECKERS;
	board->layers = layers;
	for (int k = 0; k < N_CHECKERS; k++) {
		checkers[k] = fork();
		assert_true(checkers[k] >= 0);
		if (checkers[k] == 0) {
			checker(&board->t[k], 1000 + (uint64_t)k);
			_exit(0);
		}
	}
}

static uint64_t total(size_t field)
{
	uint64_t n = 0;

	for (int k = 0; k < N_CHECKERS; k++)
		n += *(_Atomic uint64_t *)((char *)&board->t[k] + field);
	return n;
}

#define TOTAL(f) total(offsetof(struct tally, f))

/* Until every checker has n more answers checked than now (10 s). */
static void await_progress(uint64_t n)
{
	uint64_t want[N_CHECKERS];

	for (int k = 0; k < N_CHECKERS; k++)
		want[k] = board->t[k].ok + n;
	for (int w = 0; w < 1000; w++) {
		int behind = 0;

		for (int k = 0; k < N_CHECKERS; k++)
			behind += board->t[k].ok < want[k];
		if (!behind)
			return;
		ms_sleep(10);
	}
	fail_msg("checkers made no progress in 10 s");
}

static void stop_checkers(void)
{
	int st;

	board->stop = 1;
	n_checkers = 0;
	for (int k = 0; k < N_CHECKERS; k++) {
		assert_int_equal(waitpid(checkers[k], &st, 0), checkers[k]);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	printf("  checkers: %lu answers identical to the reference, %lu wrong, %lu failed with an I/O status, %lu lost to a dying moed, %lu timeouts, %lu connections\n",
	       (unsigned long)TOTAL(ok), (unsigned long)TOTAL(wrong),
	       (unsigned long)TOTAL(io_failed), (unsigned long)TOTAL(lost),
	       (unsigned long)TOTAL(timeouts), (unsigned long)TOTAL(connects));
	assert_int_equal(TOTAL(wrong), 0);
	assert_int_equal(TOTAL(timeouts), 0);
}

/* ---- moed's health afterwards ---- */

struct baseline {
	long rss_kb;
	int fds;
};

static void start(const char *extra)
{
	if (tmoed_start(&md, "--cache-mb 16 --threads 2 %s", extra)) {
		tmoed_print_log(&md);
		fail_msg("moed did not start");
	}
}

/* moed's open fds once the connection of our last question to it is
 * gone too (moed closes it when it sees the hang-up, a moment later). */
static int settled_fds(void)
{
	ms_sleep(50);
	return proc_fd_count(md.pid);
}

/* A test's first moed: its log starts empty, so counts are the test's.
 * Its fds are counted once it has served a request (some are opened on
 * first use), with no client left. */
static void begin(const char *extra, struct baseline *b)
{
	struct ipc_status_reply st;
	struct tconn c;
	struct ipc_cqe e;

	assert_int_equal(truncate(md.log, 0), 0);
	start(extra);
	assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
	assert_int_equal(tconn_submit(&c, 0, 0, set[0].nt, set[0].x), 0);
	assert_int_equal(tconn_wait(&c, &e, 10000), 0);
	tconn_close(&c);
	for (;;) {
		assert_int_equal(tmoed_status(&md, &st), 0);
		if (!st.clients)
			break;
		ms_sleep(5);
	}
	b->fds = settled_fds();
	b->rss_kb = 0;
}

/* The baseline of a moed that has served: no client left, its fds and
 * its RSS as they are now. */
static void warm_baseline(struct baseline *b)
{
	struct ipc_status_reply st;

	for (int w = 0; w < 400; w++) {
		assert_int_equal(tmoed_status(&md, &st), 0);
		if (!st.clients)
			break;
		ms_sleep(5);
	}
	assert_int_equal(st.clients, 0);
	b->fds = settled_fds();
	b->rss_kb = proc_rss_kb(md.pid);
}

/* No client left (hang-ups are seen at once, give it 2 s), the cache in
 * its budget, every fd of a session closed, memory back near where it
 * was with the cache warm. */
static void check_recovered(const struct baseline *b)
{
	struct ipc_status_reply st;
	long rss;
	int fds = -1;

	for (int w = 0; w < 40; w++) {
		assert_int_equal(tmoed_status(&md, &st), 0);
		fds = settled_fds();
		if (st.clients == 0 && fds == b->fds)
			break;
	}
	rss = proc_rss_kb(md.pid);
	printf("  moed: %u clients, cache %.1f of %.1f MiB, %d fds (%d at start), RSS %ld KiB (%ld warm)\n",
	       st.clients, st.cache_used / 1048576.0,
	       st.cache_budget / 1048576.0, fds, b->fds, rss, b->rss_kb);
	if (fds != b->fds)
		run_cmd("ls -l /proc/%d/fd", (int)md.pid);
	assert_int_equal(st.clients, 0);
	assert_true(st.cache_used <= st.cache_budget);
	assert_int_equal(fds, b->fds);
	assert_true(rss > 0 && rss <= b->rss_kb + RSS_SLACK_KB);
}

static void stop(void)
{
	int rc = tmoed_stop(&md);

	if (rc) {
		tmoed_print_log(&md);
		fail_msg("moed exited with %d", rc);
	}
}

/* Every log line about a client named `name` says it connected, or that
 * it went, with one of the reasons given; and as many went as came. */
static void check_client_lines(const char *name, const char *const *why,
			       int n_why)
{
	char line[1024], tag[64];
	FILE *f = fopen(md.log, "r");
	int came = 0, went = 0;

	assert_non_null(f);
	snprintf(tag, sizeof(tag), "client %s ", name);
	while (fgets(line, sizeof(line), f)) {
		bool known = false;

		if (!strstr(line, tag))
			continue; /* another client's, or moed's own */
		if (strstr(line, ") connected: ")) {
			came++;
			continue;
		}
		if (!strstr(line, ") disconnected: "))
			continue; /* a request refused, say */
		for (int i = 0; i < n_why && !known; i++)
			known = strstr(line, why[i]) != NULL;
		if (!known)
			fail_msg("unexpected log line: %s", line);
		went++;
	}
	fclose(f);
	printf("  log: %d %s connections, %d disconnections\n", came, name,
	       went);
	assert_int_equal(came, went);
}

static int probe(struct tconn *c, int i);

/* Every sample answered right on a new connection: no expert slot was
 * left held by a client that went. */
static void serve_all(void)
{
	struct tconn c;

	assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
	for (int i = 0; i < N_SET; i++)
		assert_int_equal(probe(&c, i), 0);
	tconn_close(&c);
}

/* ---- clients killed ---- */

/* A client killed somewhere in its life: the parent picks when (a byte
 * on `ready` says it got through connecting); the mode picks what it
 * does meanwhile. */
static void victim(int mode, uint64_t seed, int ready)
{
	struct trng r = { seed };
	struct tconn c;
	struct ipc_msg_hdr h;
	struct ipc_cqe e;
	int fd;

	if (mode == 0 || mode == 1) {
		fd = ipc_connect(md.sock, 5000);
		ipc_msg_init(&h, IPC_MSG_HELLO, sizeof(h), 0);
		if (mode == 1) /* a hello cut short; else none at all */
			ipc_send(fd, &h, sizeof(h), -1, 0);
		if (write(ready, "r", 1) < 0 || fd < 0)
			_exit(1);
		pause();
		_exit(0);
	}
	if (tconn_open(&c, md.sock, MAX_TOK, 0, "fault-victim") ||
	    write(ready, "r", 1) < 0)
		_exit(1);
	for (uint32_t i = 0;; i++) {
		int k = (int)(trng_next(&r) % N_SET);

		if (mode == 2 && i == 4) /* requests in flight, then still */
			pause();
		if (mode == 3 && i >= 4 && tconn_wait(&c, &e, 10000))
			_exit(1); /* one in flight per slot, always */
		tconn_submit(&c, set[k].layer, i % 4, set[k].nt, set[k].x);
		if (mode == 4) /* never collects: moed finds its ring full */
			ms_sleep(1);
	}
}

static void clients_killed(void **s)
{
	const char *const why[] = {
		"disconnected: hung up", "disconnected: completion ring unusable",
		moe_strerror(-ECONNRESET), /* killed with a message unread */
	};
	unsigned rounds = env_uint("MOE_FAULT_ROUNDS", 200), connected = 0;
	struct trng r = { 7 };
	struct baseline b;

	begin("", &b);
	start_checkers((1u << N_LAYER) - 1);
	await_progress(20);
	b.rss_kb = proc_rss_kb(md.pid);
	for (unsigned i = 0; i < rounds; i++) {
		int p[2];
		pid_t v;
		char c;

		assert_int_equal(pipe(p), 0);
		v = fork();
		assert_true(v >= 0);
		if (v == 0) {
			close(p[0]);
			victim((int)(i % 5), i, p[1]);
		}
		close(p[1]);
		/* Every other round from its start (maybe before it even
		 * connects), else once it has its connection, so the
		 * handshake and requests are hit however slow the build. */
		if (i % 2 && read(p[0], &c, 1) == 1)
			connected++;
		ms_sleep((unsigned)(trng_next(&r) % 20));
		kill(v, SIGKILL);
		assert_int_equal(waitpid(v, NULL, 0), v);
		close(p[0]);
	}
	await_progress(20);
	stop_checkers();
	printf("  %u clients killed: %u once connected, the others at any moment from their start\n",
	       rounds, connected);
	assert_int_equal(TOTAL(lost), 0);
	assert_int_equal(TOTAL(io_failed), 0);
	check_recovered(&b);
	serve_all();
	check_client_lines("fault-victim", why, 3);
	check_client_lines("fault-checker", why, 1);
	stop();
	passed = true;
}

/* ---- moed killed and restarted ---- */

/* SIGTERM while the checkers keep submitting: moed answers what was
 * submitted before it, exits 0, and does so in bounded time (it once
 * kept serving whatever came next, for as long as clients sent it). */
static void stop_busy(void)
{
	int st;

	kill(md.pid, SIGTERM);
	for (int w = 0; w < 1000; w++) {
		if (waitpid(md.pid, &st, WNOHANG) == md.pid) {
			md.pid = 0;
			assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
			return;
		}
		ms_sleep(10);
	}
	fail_msg("moed still running 10 s after SIGTERM under load");
}

static void moed_restarted(void **s)
{
	unsigned restarts = env_uint("MOE_FAULT_RESTARTS", 6);
	struct trng r = { 8 };
	struct baseline b;

	long first_rss, last_rss;

	begin("", &b);
	start_checkers((1u << N_LAYER) - 1);
	/* The first moed's memory after a warm-up, the baseline the last
	 * moed's after the same warm-up is held to: a restart must not
	 * leave a moed that needs more. */
	await_progress(20);
	first_rss = proc_rss_kb(md.pid);
	for (unsigned i = 0; i < restarts; i++) {
		await_progress(5);
		ms_sleep(20 + (unsigned)(trng_next(&r) % 80));
		if (i % 2)
			stop_busy();
		else
			tmoed_kill(&md);
		start("");
	}
	await_progress(20);
	last_rss = proc_rss_kb(md.pid);
	b.rss_kb = last_rss;
	stop_checkers();
	printf("  moed restarted %u times under load: RSS after warm-up %ld KiB, the first moed's %ld KiB (slack %d KiB)\n",
	       restarts, last_rss, first_rss, RSS_SLACK_KB);
	assert_true(first_rss > 0 && last_rss > 0);
	assert_true(last_rss <= first_rss + RSS_SLACK_KB);
	for (int k = 0; k < N_CHECKERS; k++)
		assert_true(board->t[k].connects >= restarts + 1);
	assert_true(TOTAL(lost) <= (uint64_t)restarts * N_CHECKERS);
	check_recovered(&b);
	serve_all();
	assert_int_equal(tmoed_log_count(&md, "finishing submitted requests, then stopping"),
			 (int)restarts / 2);
	assert_int_equal(tmoed_log_count(&md, "info: listening on"),
			 (int)restarts + 1);
	stop();
	passed = true;
}

/* ---- the model file cut short, then restored ---- */

/* The first file offset of layer's experts (all of them lie past it). */
static uint64_t layer_start(uint32_t layer)
{
	struct moe_msg err = { "" };
	struct moe_model *m;
	uint64_t lo = UINT64_MAX;

	assert_int_equal(moe_model_open(&m, ref_path, &err), 0);
	for (uint32_t e = 0; e < m->layers[layer].n_expert; e++) {
		const struct moe_ffn_mats *f = &m->layers[layer].experts[e];

		lo = f->gate.off < lo ? f->gate.off : lo;
		lo = f->up.off < lo ? f->up.off : lo;
		lo = f->down.off < lo ? f->down.off : lo;
	}
	for (uint32_t l = 0; l < layer; l++) /* the others lie before it */
		for (uint32_t e = 0; e < m->layers[l].n_expert; e++)
			assert_true(m->layers[l].experts[e].down.off < lo);
	moe_model_close(m);
	return lo;
}

/* A request for sample i from the test itself: its status, and the
 * output checked when it succeeded. */
static int probe(struct tconn *c, int i)
{
	struct ipc_cqe e;

	assert_int_equal(tconn_submit(c, set[i].layer, 0, set[i].nt, set[i].x), 0);
	assert_int_equal(tconn_wait(c, &e, 10000), 0);
	if (e.status == 0)
		assert_memory_equal(ipc_slot_out(&c->a, 0), set[i].y,
				    (size_t)set[i].nt * N_EMBD * sizeof(float));
	return e.status;
}

static void model_truncated(void **s)
{
	const uint32_t lost = N_LAYER - 1;
	struct baseline b;
	struct tconn c;
	int fd, failed = 0;

	/* No prefetch: nothing of the lost layer is resident when it goes. */
	begin("--prefetch=no", &b);
	start_checkers((1u << lost) - 1); /* never the layer cut off */
	await_progress(20);
	b.rss_kb = proc_rss_kb(md.pid);
	fd = open(md.model, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)layer_start(lost)), 0);
	close(fd);
	assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
	for (int i = (int)lost; i < N_SET; i += N_LAYER)
		failed += probe(&c, i) == -MOE_EEXPERT_IO;
	await_progress(20);
	printf("  %d of %d requests for the lost layer failed with \"%s\"\n",
	       failed, N_SET / N_LAYER, moe_strerror(-MOE_EEXPERT_IO));
	assert_int_equal(failed, N_SET / N_LAYER);
	assert_int_equal(run_cmd("cat %s > %s", ref_path, md.model), 0);
	for (int i = (int)lost; i < N_SET; i += N_LAYER)
		assert_int_equal(probe(&c, i), 0);
	tconn_close(&c);
	stop_checkers();
	assert_int_equal(TOTAL(io_failed) + TOTAL(lost), 0);
	check_recovered(&b);
	assert_true(tmoed_log_count(&md, "short read at file offset") >= 1);
	assert_true(tmoed_log_count(&md, "client fault-probe: request") >= 1);
	stop();
	passed = true;
}

/* ---- reads failing: a file system shut down under the model ---- */

struct fsdev {
	char img[256], mnt[256], loop[64];
	bool mounted;
};

static struct fsdev fs;

static void fs_release(void)
{
	if (fs.mounted)
		umount2(fs.mnt, MNT_DETACH);
	fs.mounted = false;
	if (fs.loop[0])
		run_cmd("losetup -d %s 2>/dev/null", fs.loop);
	fs.loop[0] = 0;
	if (fs.mnt[0])
		rmdir(fs.mnt);
}

/* ext4 on a loop device over a file; "" or why it cannot be had. */
static const char *fs_make(void)
{
	char cmd[512];
	FILE *p;

	tmp_path(fs.img, sizeof(fs.img), "faults-fs");
	if (snprintf(fs.mnt, sizeof(fs.mnt), "%s.mnt", fs.img) >=
	    (int)sizeof(fs.mnt))
		return "TMPDIR too long";
	if (getuid() != 0)
		return "not root";
	if (run_cmd("truncate -s 64M %s && mkdir -p %s", fs.img, fs.mnt))
		return "cannot make the image file";
	snprintf(cmd, sizeof(cmd), "losetup -f --show %s 2>/dev/null", fs.img);
	p = popen(cmd, "r");
	fs.loop[0] = 0;
	if (p && fgets(fs.loop, sizeof(fs.loop), p))
		fs.loop[strcspn(fs.loop, "\n")] = 0;
	if (p)
		pclose(p);
	if (strncmp(fs.loop, "/dev/", 5)) {
		fs.loop[0] = 0;
		return "no loop device (losetup -f --show failed)";
	}
	if (run_cmd("mkfs.ext4 -q -F %s >/dev/null 2>&1", fs.loop))
		return "mkfs.ext4 failed or is missing";
	if (mount(fs.loop, fs.mnt, "ext4", 0, NULL))
		return strerror(errno);
	fs.mounted = true;
	return "";
}

/* After this, every read on the file system fails with EIO. */
static void fs_shutdown(void)
{
	uint32_t how = EXT4_GOING_FLAGS_NOLOGFLUSH;
	int fd = open(fs.mnt, O_RDONLY | O_DIRECTORY);

	assert_true(fd >= 0);
	assert_int_equal(ioctl(fd, EXT4_IOC_SHUTDOWN, &how), 0);
	close(fd);
}

static void reads_failing(void **s)
{
	char model[256];
	const char *why = fs_make();
	struct baseline b;
	struct tconn c;
	int failed = 0;

	if (why[0]) {
		printf("  SKIP reads_failing: %s (model_truncated covers short reads)\n", why);
		fs_release();
		skip();
	}
	assert_true(snprintf(model, sizeof(model), "%s/model.gguf", fs.mnt) <
		    (int)sizeof(model));
	/* On disk before the shutdown, which drops what is not. */
	assert_int_equal(run_cmd("cp %s %s && sync -f %s", ref_path, model, model), 0);
	strcpy(md.model, model);
	begin("--prefetch=no", &b);
	start_checkers(1u << 0);
	await_progress(20);
	b.rss_kb = proc_rss_kb(md.pid);
	fs_shutdown();
	assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
	for (int i = 1; i < N_SET; i++) /* layers 1..: mostly not resident */
		if (set[i].layer)
			failed += probe(&c, i) == -MOE_EEXPERT_IO;
	tconn_close(&c);
	/* Layer 0 stays served from the cache while it holds the experts;
	 * what it must read fails cleanly: no wrong answer either way. */
	board->layers = 1u << 0;
	ms_sleep(200);
	stop_checkers();
	printf("  %d of %d requests needing reads failed with \"%s\"\n", failed,
	       N_SET - N_SET / N_LAYER, moe_strerror(-MOE_EEXPERT_IO));
	assert_int_equal(failed, N_SET - N_SET / N_LAYER);
	check_recovered(&b);
	assert_true(tmoed_log_count(&md, "read failed at file offset") >= 1);
	assert_true(tmoed_log_count(&md, moe_strerror(-EIO)) >= 1);
	stop();
	/* The device back: unmount the dead file system, mount it again,
	 * and a new moed serves every layer. io_uring lets go of the file
	 * a moment after moed exits (its rings are torn down in the
	 * background): until then the file system is busy. */
	for (int w = 0; umount2(fs.mnt, 0); w++)
		if (errno != EBUSY || w == 500)
			fail_msg("umount %s: %s", fs.mnt, strerror(errno));
		else
			ms_sleep(10);
	fs.mounted = false;
	assert_int_equal(mount(fs.loop, fs.mnt, "ext4", 0, NULL), 0);
	fs.mounted = true;
	start("");
	assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
	for (int i = 0; i < N_SET; i++)
		assert_int_equal(probe(&c, i), 0);
	tconn_close(&c);
	stop();
	fs_release();
	passed = true;
}

/* ---- the cache larger than the memory cgroup allows ---- */

static void cache_over_cgroup(void **s)
{
	const uint64_t cap = 160ull << 20;
	struct moe_msg err = { "" };
	char big[256], name[64];
	struct ipc_status_reply st;
	struct tref *ref;
	struct tconn c;
	struct baseline b;
	float y[MAX_TOK * N_EMBD];

	/* ThreadSanitizer maps shadow memory far beyond any such cap. */
	if (getenv("SAN") && strstr(getenv("SAN"), "thread")) {
		printf("  SKIP cache_over_cgroup: under ThreadSanitizer moed cannot live in a %lu MiB cgroup\n",
		       (unsigned long)(cap >> 20));
		skip();
	}
	snprintf(name, sizeof(name), "moe-test-faults-%d", (int)getpid());
	if (bench_cgroup_make(&cg, NULL, name, cap, &err)) {
		printf("  SKIP cache_over_cgroup: %s\n", err.text);
		skip();
	}
	/* A model of 214 MB of experts: more than the cgroup holds. */
	tmp_path(big, sizeof(big), "faults-big");
	assert_int_equal(run_cmd("%s/moe-gen %s -q --arch qwen3moe --layers 16 --experts 16 --top-k 4 --embd %d --ff 1024 --type Q8_0",
				 bin_dir(), big, N_EMBD), 0);
	strcpy(md.model, big);
	assert_true(snprintf(md.prefix, sizeof(md.prefix),
			     "echo $$ > %s/cgroup.procs", cg.path) <
		    (int)sizeof(md.prefix));
	if (tmoed_start(&md, "--cache-mb 1024 --threads 2")) {
		tmoed_print_log(&md);
		fail_msg("moed did not start in the cgroup");
	}
	md.prefix[0] = 0;
	assert_int_equal(tmoed_status(&md, &st), 0);
	printf("  cgroup %s capped at %lu MiB: moed's cache budget %.1f MiB (asked for 1024)\n",
	       cg.path, (unsigned long)(cap >> 20), st.cache_budget / 1048576.0);
	assert_true(st.cache_budget < cap);
	assert_int_equal(tmoed_log_count(&md, "does not fit memory cgroup"), 1);
	/* Every layer twice over, other tokens each time: the cache fills,
	 * experts are evicted and read again. */
	ref = tref_open(big, 2);
	assert_non_null(ref);
	/* The first pass warms the cache and is the baseline (fds with no
	 * client left, RSS with the cache full); after the second, moed
	 * must be back there as after every other fault. */
	for (int pass = 0; pass < 2; pass++) {
		assert_int_equal(tconn_open(&c, md.sock, MAX_TOK, 0, "fault-probe"), 0);
		for (uint32_t l = 0; l < 16; l++) {
			struct ipc_cqe e;

			const float *x = set[(pass * 16 + l) % N_SET].x;

			assert_int_equal(tref_forward(ref, l, x, MAX_TOK, NULL, NULL, y), 0);
			assert_int_equal(tconn_submit(&c, l, 0, MAX_TOK, x), 0);
			assert_int_equal(tconn_wait(&c, &e, 10000), 0);
			assert_int_equal(e.status, 0);
			assert_memory_equal(ipc_slot_out(&c.a, 0), y, sizeof(y));
		}
		tconn_close(&c);
		if (pass == 0)
			warm_baseline(&b);
	}
	tref_close(ref);
	check_recovered(&b);
	assert_int_equal(tmoed_status(&md, &st), 0);
	printf("  after 32 layers: cache %.1f of %.1f MiB, cgroup peak %.1f MiB, OOM kills %lu\n",
	       st.cache_used / 1048576.0, st.cache_budget / 1048576.0,
	       bench_cgroup_peak(&cg) / 1048576.0,
	       (unsigned long)bench_cgroup_oom_kills(&cg));
	assert_true(st.cache_used <= st.cache_budget);
	assert_int_equal(bench_cgroup_oom_kills(&cg), 0);
	stop();
	unlink(big);
	assert_int_equal(bench_cgroup_remove(&cg, &err), 0);
	passed = true;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(clients_killed, after),
		cmocka_unit_test_teardown(moed_restarted, after),
		cmocka_unit_test_teardown(model_truncated, after),
		cmocka_unit_test_teardown(reads_failing, after),
		cmocka_unit_test_teardown(cache_over_cgroup, after),
	};
	int rc;

	if (getenv("MOE_FAULT_ONLY")) /* one test by name, or a pattern */
		cmocka_set_test_filter(getenv("MOE_FAULT_ONLY"));
	rc = cmocka_run_group_tests(tests, setup, teardown);
	fs_release();
	return rc;
}
