/* Helpers shared by the test programs. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <moe/moeclient.h>

#include "engine.h"
#include "model.h"
#include "router.h"
#include "sock.h"
#include "testutil.h"

#define MAX_TMP 64

static char *tmp_files[MAX_TMP];
static int n_tmp;

static void tmp_cleanup(void)
{
	for (int i = 0; i < n_tmp; i++) {
		unlink(tmp_files[i]);
		free(tmp_files[i]);
	}
	n_tmp = 0;
}

void trng_fill(struct trng *r, float *x, size_t n, float lo, float hi)
{
	for (size_t i = 0; i < n; i++)
		x[i] = trng_float(r, lo, hi);
}

char *tmp_path(char *buf, size_t len, const char *tag)
{
	const char *dir = getenv("TMPDIR");
	int fd;

	if (!dir || !*dir)
		dir = "/tmp";
	snprintf(buf, len, "%s/moetest-%s-XXXXXX", dir, tag);
	fd = mkstemp(buf);
	if (fd < 0) {
		perror("mkstemp");
		abort();
	}
	close(fd);
	if (n_tmp == 0)
		atexit(tmp_cleanup);
	if (n_tmp < MAX_TMP)
		tmp_files[n_tmp++] = strdup(buf);
	return buf;
}

double max_rel_err(const float *a, const double *b, size_t n, double floor)
{
	double scale = floor, worst = 0;

	for (size_t i = 0; i < n; i++)
		if (fabs(b[i]) > scale)
			scale = fabs(b[i]);
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);

		if (isnan(d))
			return INFINITY; /* a NaN is never close */
		if (d > worst)
			worst = d;
	}
	return worst / scale;
}

const char *bin_dir(void)
{
	const char *b = getenv("MOE_BIN");

	return b && *b ? b : "build/bin";
}

int run_cmd(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* ---- a real moed ---- */

void tmoed_init(struct tmoed *d, const char *tag)
{
	char t[64];

	memset(d, 0, sizeof(*d));
	snprintf(t, sizeof(t), "%s-model", tag);
	tmp_path(d->model, sizeof(d->model), t);
	snprintf(t, sizeof(t), "%s-sock", tag);
	tmp_path(d->sock, sizeof(d->sock), t);
	unlink(d->sock);
	snprintf(t, sizeof(t), "%s-log", tag);
	tmp_path(d->log, sizeof(d->log), t);
}

static int tmoed_vspawn(struct tmoed *d, const char *fmt, va_list ap)
{
	char opts[1024], cmd[4096];
	pid_t pid;

	vsnprintf(opts, sizeof(opts), fmt, ap);
	snprintf(cmd, sizeof(cmd), "%s%sexec %s/moed --model %s --socket %s %s >>%s 2>&1",
		 d->prefix, d->prefix[0] ? "; " : "", bin_dir(), d->model,
		 d->sock, opts, d->log);
	d->pid = 0;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	d->pid = pid;
	return 0;
}

int tmoed_spawn(struct tmoed *d, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = tmoed_vspawn(d, fmt, ap);
	va_end(ap);
	return rc;
}

int tmoed_start(struct tmoed *d, const char *fmt, ...)
{
	va_list ap;
	pid_t pid;
	int rc;

	va_start(ap, fmt);
	rc = tmoed_vspawn(d, fmt, ap);
	va_end(ap);
	if (rc)
		return -1;
	pid = d->pid;
	for (int i = 0; i < 250; i++) { /* until it answers, as itself */
		struct ipc_status_reply st;
		int q = tmoed_status(d, &st);

		if (!q && st.pid == pid)
			return 0;
		/* Its allow lists leave us out: it refuses, and says so in the
		 * log it writes after it listens. */
		if (q == -EPERM && tmoed_log_count(d, "listening on") > 0)
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			d->pid = 0;
			return -1;
		}
		usleep(20000);
	}
	tmoed_kill(d);
	return -1;
}

int tmoed_stop(struct tmoed *d)
{
	int st;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	if (waitpid(d->pid, &st, 0) != d->pid)
		st = -1;
	d->pid = 0;
	return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void tmoed_kill(struct tmoed *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = 0;
}

/* Each line of d's log through fn; returns the count fn accepted. */
static int log_lines(const struct tmoed *d, const char *s, bool print)
{
	char line[1024];
	FILE *f = fopen(d->log, "r");
	int n = 0;

	while (f && fgets(line, sizeof(line), f)) {
		if (print)
			printf("  moed| %s", line);
		else
			n += strstr(line, s) != NULL;
	}
	if (f)
		fclose(f);
	return n;
}

void tmoed_print_log(const struct tmoed *d)
{
	log_lines(d, NULL, true);
}

int tmoed_log_count(const struct tmoed *d, const char *s)
{
	return log_lines(d, s, false);
}

int tmoed_status(const struct tmoed *d, struct ipc_status_reply *st)
{
	return ipc_ask(d->sock, 5000, IPC_MSG_STATUS, IPC_MSG_STATUS_REPLY,
		       st, sizeof(*st));
}

int tmoed_stats(const struct tmoed *d, struct ipc_stats_reply *st)
{
	return ipc_ask(d->sock, 5000, IPC_MSG_STATS, IPC_MSG_STATS_REPLY,
		       st, sizeof(*st));
}

long proc_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

int proc_fd_count(pid_t pid)
{
	char path[64];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---- a client on the wire protocol ---- */

void thello_init(struct ipc_hello *h, uint32_t max_tokens,
		 uint32_t max_inflight, uint32_t max_route_k, const char *name)
{
	memset(h, 0, sizeof(*h));
	ipc_msg_init(&h->h, IPC_MSG_HELLO, sizeof(*h), 0);
	h->ver_min = IPC_PROTO_VERSION_MIN;
	h->ver_max = IPC_PROTO_VERSION_MAX;
	h->max_tokens = max_tokens;
	h->max_inflight = max_inflight;
	h->max_route_k = max_route_k;
	h->pid = getpid();
	snprintf(h->name, sizeof(h->name), "%s", name);
}

int tconn_open(struct tconn *c, const char *path, uint32_t max_tokens,
	       uint32_t max_route_k, const char *name)
{
	struct ipc_hello h;
	ssize_t n;
	int fd = -1, rc;

	memset(c, 0, sizeof(*c));
	c->a.fd = -1;
	c->sock = ipc_connect(path, 5000);
	if (c->sock < 0) {
		rc = c->sock;
		c->sock = -1;
		return rc;
	}
	thello_init(&h, max_tokens, 4, max_route_k, name);
	rc = ipc_send(c->sock, &h, sizeof(h), -1, 0);
	if (rc && rc != -EPIPE && rc != -ECONNRESET)
		return rc; /* those two: a refusal at accept may be queued */
	ipc_sock_timeout(c->sock, 5000);
	n = ipc_recv(c->sock, &c->r, sizeof(c->r), &fd, 0);
	if (n >= (ssize_t)sizeof(c->r.h) && c->r.h.status < 0 &&
	    ipc_msg_check(&c->r, (size_t)n, sizeof(c->r.h)) == IPC_MSG_HELLO_REPLY)
		return c->r.h.status; /* refused (a header-only reply) */
	if (n != sizeof(c->r))
		return n < 0 ? (int)n : rc ? rc : -MOE_EDEAD;
	if (c->r.h.status)
		return c->r.h.status;
	if (fd < 0)
		return -MOE_EPROTO;
	rc = ipc_arena_attach(&c->a, fd);
	if (rc)
		close(fd);
	return rc;
}

void tconn_close(struct tconn *c)
{
	ipc_arena_close(&c->a);
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
}

/* Wake moed if it sleeps. An RMW, after the push: pairs with moed's RMW
 * on waiters before its last look at the ring, so one of us sees the
 * other. */
void tconn_kick(struct tconn *c)
{
	struct ipc_msg_hdr k;

	ipc_bell_ring(c->a.sq_bell);
	if (atomic_fetch_add_explicit(&c->a.sq_bell->waiters, 0,
				      memory_order_seq_cst)) {
		ipc_msg_init(&k, IPC_MSG_KICK, sizeof(k), 0);
		ipc_send(c->sock, &k, sizeof(k), -1, MSG_DONTWAIT);
	}
}

int tconn_push(struct tconn *c, struct ipc_desc *d)
{
	int rc;

	d->id = ++c->next_id;
	rc = ipc_ring_push(&c->a.sq, d);
	if (!rc)
		tconn_kick(c);
	return rc;
}

int tconn_submit(struct tconn *c, uint32_t layer, uint32_t slot,
		 uint32_t nt, const float *x)
{
	struct ipc_desc d;

	memset(&d, 0, sizeof(d));
	d.layer = layer;
	d.n_tokens = nt;
	d.slot = slot;
	if (x)
		memcpy(ipc_slot_in(&c->a, slot), x,
		       (size_t)nt * c->r.n_embd * sizeof(float));
	return tconn_push(c, &d);
}

/* moed gone: its end of the socket reads as a hang-up. */
static bool moed_gone(int sock)
{
	char buf[64];
	ssize_t n = ipc_recv(sock, buf, sizeof(buf), NULL, MSG_DONTWAIT);

	return n == 0 || (n < 0 && n != -EAGAIN);
}

int tconn_wait(struct tconn *c, struct ipc_cqe *e, int timeout_ms)
{
	/* In slices, looking at the socket between them: a dead moed never
	 * rings the bell. */
	for (int waited = 0; waited < timeout_ms; waited += 20) {
		int rc = ipc_bell_wait(c->a.cq_bell, ipc_ring_ready, &c->a.cq,
				       IPC_BELL_SPINS, 20000000ll);

		if (rc >= 0)
			return ipc_ring_pop(&c->a.cq, e);
		if (rc != -ETIMEDOUT)
			return rc;
		if (moed_gone(c->sock))
			return -MOE_EDEAD;
	}
	return -ETIMEDOUT;
}

bool sock_hung_up(int sock)
{
	char buf[64];
	ssize_t n = ipc_recv(sock, buf, sizeof(buf), NULL, 0);

	return n == 0 || n == -ECONNRESET;
}

/* ---- the reference engine ---- */

struct tref {
	struct moe_model *m;
	struct moe_mapsrc *ms;
	struct moe_engine *e;
};

struct tref *tref_open(const char *path, uint32_t threads)
{
	struct moe_engine_opts eo = { .threads = threads };
	struct moe_msg err = { "" };
	struct moe_expert_src src;
	struct tref *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	if (moe_model_open(&r->m, path, &err) ||
	    moe_mapsrc_open(&r->ms, r->m, &src, &err) ||
	    moe_engine_new(&r->e, r->m, &src, &eo, &err)) {
		fprintf(stderr, "reference: %s\n", err.text);
		tref_close(r);
		return NULL;
	}
	return r;
}

void tref_close(struct tref *r)
{
	if (!r)
		return;
	moe_engine_free(r->e);
	moe_mapsrc_close(r->ms);
	moe_model_close(r->m);
	free(r);
}

uint32_t tref_n_embd(const struct tref *r)
{
	return r->m->n_embd;
}

int tref_forward(struct tref *r, uint32_t layer, const float *x,
		 uint32_t nt, const struct moe_route_opts *o,
		 const struct moe_route *routes, float *y)
{
	struct moe_msg err = { "" };

	if (routes)
		return moe_engine_apply(r->e, layer, x, nt, routes, y, &err);
	return moe_engine_forward(r->e, layer, x, nt, o, NULL, y, &err);
}
