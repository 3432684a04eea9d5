/* Helpers shared by the test programs: a seeded random source, temporary
 * files that clean up after themselves, and float comparisons. */
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

struct trng {
	uint64_t s;
};

static inline uint64_t trng_next(struct trng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static inline float trng_float(struct trng *r, float lo, float hi)
{
	return lo + (hi - lo) * (float)((trng_next(r) >> 40) * 0x1p-24);
}

void trng_fill(struct trng *r, float *x, size_t n, float lo, float hi);

/* A new empty file under $TMPDIR (or /tmp); the path is written into buf
 * (at least 64 bytes). Removed at exit. Returns buf. */
char *tmp_path(char *buf, size_t len, const char *tag);

/* max |a[i]-b[i]| / max(|b|max, floor). */
double max_rel_err(const float *a, const double *b, size_t n, double floor);

/* Run a shell command built from fmt; returns its exit status (or -1).
 * $MOE_BIN (default build/bin) names where the tools are. */
int run_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *bin_dir(void);

/* ---- a real moed, spoken to over the wire protocol ---- */

#include <stdbool.h>
#include <sys/types.h>

#include "shm.h"

struct tmoed {
	char model[256];  /* the file it serves */
	char sock[256];
	char log[256];    /* its output, appended to */
	char prefix[512]; /* shell commands run just before it in the same
			   * shell (e.g. entering a cgroup); "" for none */
	pid_t pid;        /* 0 when not running */
};

/* Temporary files for d: tag-model (empty), tag-sock (removed, for
 * moed to make) and tag-log; removed at exit. */
void tmoed_init(struct tmoed *d, const char *tag);

/* Start $MOE_BIN/moed --model d->model --socket d->sock and the options
 * fmt formats, and wait (up to 5 s) until its socket takes connections.
 * 0, or -1 when it exited or never listened (its log says why). */
int tmoed_start(struct tmoed *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The same without waiting: 0 once forked (d->pid), -1. */
int tmoed_spawn(struct tmoed *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* SIGTERM and wait: its exit status, -1 if a signal ended it. */
int tmoed_stop(struct tmoed *d);

/* SIGKILL and wait. */
void tmoed_kill(struct tmoed *d);

/* Print the log, each line behind "  moed| "; count lines holding s. */
void tmoed_print_log(const struct tmoed *d);
int tmoed_log_count(const struct tmoed *d, const char *s);

/* moed's answers to moectl's questions. 0 or an ipc_ask error. */
int tmoed_status(const struct tmoed *d, struct ipc_status_reply *st);
int tmoed_stats(const struct tmoed *d, struct ipc_stats_reply *st);

/* A process's resident memory in KiB and its open fds; -1 if gone. */
long proc_rss_kb(pid_t pid);
int proc_fd_count(pid_t pid);

/* One client connection. */
struct tconn {
	int sock;
	struct ipc_arena a;
	struct ipc_hello_reply r;
	uint64_t next_id;
};

/* A hello message from a client named name asking for these limits, in
 * the versions this build speaks. */
void thello_init(struct ipc_hello *h, uint32_t max_tokens,
		 uint32_t max_inflight, uint32_t max_route_k, const char *name);

/* Connect to path and say hello asking for max_tokens, 4 in flight and
 * max_route_k. Returns the reply's status (0: the arena is attached), or
 * a negative errno when the socket failed (c->sock then -1). */
int tconn_open(struct tconn *c, const char *path, uint32_t max_tokens,
	       uint32_t max_route_k, const char *name);
void tconn_close(struct tconn *c);

/* Wake moed if it sleeps (after pushing to the submission ring). */
void tconn_kick(struct tconn *c);

/* Give d the next id, push it and wake moed. 0 or a ring error. */
int tconn_push(struct tconn *c, struct ipc_desc *d);

/* Copy nt rows of x (if not NULL) into slot's input and push a plain
 * request for layer. 0 or a ring error. */
int tconn_submit(struct tconn *c, uint32_t layer, uint32_t slot,
		 uint32_t nt, const float *x);

/* The next completion, waiting up to timeout_ms. 0; -ETIMEDOUT;
 * -MOE_EDEAD (moed hung up); a ring error. */
int tconn_wait(struct tconn *c, struct ipc_cqe *e, int timeout_ms);

/* Whether the peer hung up on sock (waits for its next message). */
bool sock_hung_up(int sock);

/* ---- the engine in this process, as the reference ---- */

struct moe_route_opts;
struct moe_route;
struct tref;

/* The model at path, mapped, with an engine of `threads` workers. */
struct tref *tref_open(const char *path, uint32_t threads);
void tref_close(struct tref *r);
uint32_t tref_n_embd(const struct tref *r);

/* y = layer's output for nt rows of x, routed by the model's router with
 * options o (NULL: none), or as routes says when routes is not NULL.
 * 0 or the engine's error. */
int tref_forward(struct tref *r, uint32_t layer, const float *x,
		 uint32_t nt, const struct moe_route_opts *o,
		 const struct moe_route *routes, float *y);

#endif
