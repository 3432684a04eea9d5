/* The engine's log sink: one function pointer, set at start-up; and the
 * rate limiter moed turns on. Logging is never on a hot path (each line
 * is a write to the journal), so the limiter simply takes a mutex. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LOG_LINE 512
#define RL_KEYS 64 /* call sites tracked at once; more recycle the oldest */

static moe_log_fn sink;
static void *sink_ctx;
static _Atomic int max_level = MOE_LOG_INFO;

/* One call site's current interval. */
struct rl_key {
	const char *fmt;  /* NULL: unused */
	int level;
	uint64_t start;   /* ms: when its interval began */
	uint32_t n;       /* messages in the interval, logged or dropped */
	uint32_t dropped;
	char last[LOG_LINE]; /* the last one dropped, for the summary */
};

static pthread_mutex_t rl_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rl_key rl_keys[RL_KEYS];
static uint32_t rl_burst, rl_interval_ms;
static uint64_t (*rl_clock)(void);

void moe_log_set_level(enum moe_log_level level)
{
	atomic_store_explicit(&max_level, (int)level, memory_order_relaxed);
}

int moe_log_level_by_name(const char *name)
{
	static const char *const names[] = { "err", "warning", "notice",
					     "info", "debug" };

	for (int i = 0; i < 5; i++)
		if (strcmp(name, names[i]) == 0)
			return MOE_LOG_ERR + i;
	return -1;
}

void moe_log_set(moe_log_fn fn, void *ctx)
{
	sink = fn;
	sink_ctx = ctx;
}

void moe_log_set_ratelimit(uint32_t burst, uint32_t interval_ms)
{
	pthread_mutex_lock(&rl_mu);
	rl_burst = burst;
	rl_interval_ms = interval_ms;
	memset(rl_keys, 0, sizeof(rl_keys));
	pthread_mutex_unlock(&rl_mu);
}

void moe_log_set_clock(uint64_t (*now_ms)(void))
{
	pthread_mutex_lock(&rl_mu);
	rl_clock = now_ms;
	pthread_mutex_unlock(&rl_mu);
}

static uint64_t rl_now(void)
{
	struct timespec ts;

	if (rl_clock)
		return rl_clock();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* With rl_mu held: say how many of k's messages were dropped, and start
 * a new interval. */
static void rl_close(struct rl_key *k, uint64_t now)
{
	char line[LOG_LINE + 64];

	if (k->dropped) {
		snprintf(line, sizeof(line), "%s ... repeated %u more times in %.0f s",
			 k->last, k->dropped, (double)(now - k->start) / 1000);
		sink(sink_ctx, (enum moe_log_level)k->level, line);
	}
	k->start = now;
	k->n = k->dropped = 0;
}

static bool rl_over(const struct rl_key *k, uint64_t now)
{
	return now - k->start >= rl_interval_ms;
}

/* With rl_mu held: the key of (fmt, level), claimed if new. A full table
 * gives up the entry whose interval began first, its drops reported. */
static struct rl_key *rl_find(const char *fmt, int level, uint64_t now)
{
	struct rl_key *free_k = NULL, *oldest = &rl_keys[0];

	for (int i = 0; i < RL_KEYS; i++) {
		struct rl_key *k = &rl_keys[i];

		if (k->fmt == fmt && k->level == level)
			return k;
		if (!k->fmt && !free_k)
			free_k = k;
		if (k->fmt && k->start < oldest->start)
			oldest = k;
	}
	if (!free_k) {
		rl_close(oldest, now);
		free_k = oldest;
	}
	free_k->fmt = fmt;
	free_k->level = level;
	free_k->start = now;
	free_k->n = free_k->dropped = 0;
	return free_k;
}

/* With rl_mu held: log msg unless its call site is over its burst. */
static void rl_log(const char *fmt, enum moe_log_level level, const char *msg)
{
	uint64_t now = rl_now();
	struct rl_key *k = rl_find(fmt, (int)level, now);

	if (rl_over(k, now))
		rl_close(k, now);
	if (k->n++ < rl_burst) {
		sink(sink_ctx, level, msg);
		return;
	}
	k->dropped++;
	snprintf(k->last, sizeof(k->last), "%s", msg);
}

void moe_log_flush(void)
{
	uint64_t now;

	pthread_mutex_lock(&rl_mu);
	now = rl_now();
	for (int i = 0; sink && i < RL_KEYS; i++)
		if (rl_keys[i].fmt && rl_keys[i].dropped &&
		    rl_over(&rl_keys[i], now))
			rl_close(&rl_keys[i], now);
	pthread_mutex_unlock(&rl_mu);
}

void moe_log(enum moe_log_level level, const char *fmt, ...)
{
	char buf[LOG_LINE];
	va_list ap;

	if (!sink || (int)level > atomic_load_explicit(&max_level,
						       memory_order_relaxed))
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (level > MOE_LOG_NOTICE) {
		sink(sink_ctx, level, buf);
		return;
	}
	pthread_mutex_lock(&rl_mu);
	if (rl_burst)
		rl_log(fmt, level, buf);
	else
		sink(sink_ctx, level, buf);
	pthread_mutex_unlock(&rl_mu);
}

/* systemd: "JOURNAL_STREAM ... contains the device and inode numbers of
 * the file descriptor, formatted in decimal, separated by a colon";
 * compared with stderr's fstat, it tells a stream still going to the
 * journal from one a wrapper redirected while the variable stayed set. */
bool moe_log_is_journal(int fd)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	int end = 0;

	if (!v || sscanf(v, "%llu:%llu%n", &dev, &ino, &end) != 2 || v[end])
		return false;
	if (fstat(fd, &st))
		return false;
	return (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

void moe_log_stream(void *ctx, enum moe_log_level level, const char *msg)
{
	static const char *const names[] = { "err", "warning", "notice",
					     "info", "debug" };
	const struct moe_log_out *o = ctx;
	struct timespec ts;
	struct tm tm;
	char when[32];

	if (o->journal) {
		fprintf(o->f, "<%d>%s\n", (int)level, msg);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	fprintf(o->f, "%s.%03ld %s[%d] %s: %s\n", when, ts.tv_nsec / 1000000,
		o->ident, (int)getpid(), names[level - MOE_LOG_ERR], msg);
}
