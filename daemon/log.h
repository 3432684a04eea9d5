/* Logging for the engine's long-lived parts (store, io, topology) and
 * moed: they report events (a fallback taken, a read that failed) through
 * one sink the program installs. With no sink installed nothing is
 * printed, so the engine stays a quiet library inside tools and tests.
 *
 * A daemon can also turn on rate limiting, so that one fault repeating
 * (a client sending garbage, a failing disk) cannot flood the journal:
 * see moe_log_set_ratelimit(). */
#ifndef MOE_LOG_H
#define MOE_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum moe_log_level {
	MOE_LOG_ERR = 3,
	MOE_LOG_WARNING = 4,
	MOE_LOG_NOTICE = 5,
	MOE_LOG_INFO = 6,
	MOE_LOG_DEBUG = 7,
};

typedef void (*moe_log_fn)(void *ctx, enum moe_log_level level,
			   const char *msg);

/* Install the sink (NULL: silence). Not thread-safe: call at start-up. */
void moe_log_set(moe_log_fn fn, void *ctx);

/* Drop messages less severe than level (default MOE_LOG_INFO). */
void moe_log_set_level(enum moe_log_level level);

/* "err", "warning", "notice", "info", "debug" to a level; -1 if none. */
int moe_log_level_by_name(const char *name);

void moe_log(enum moe_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Where moe_log_stream writes: the stream, and its format. */
struct moe_log_out {
	FILE *f;
	bool journal;      /* "<N>msg": the journal reads N as the priority
			    * and stamps the time itself */
	const char *ident; /* otherwise "DATE TIME.ms ident[pid] level: msg" */
};

/* A sink (ctx: a struct moe_log_out) writing one line per message. */
void moe_log_stream(void *ctx, enum moe_log_level level, const char *msg);

/* Whether fd is the stream systemd connected to the journal: $JOURNAL_STREAM
 * set and naming fd's device and inode ("DEV:INO", as systemd.exec(5)
 * says to check). False when unset, malformed or naming another file. */
bool moe_log_is_journal(int fd);

/* Rate limiting of errors, warnings and notices (info and debug always
 * pass). Messages are told apart by their call site: the level and the
 * format string, whatever the arguments. Past `burst` messages of one
 * call site within `interval_ms`, the rest of that interval's are
 * dropped and counted; once the interval is over, the next message of
 * that site, or moe_log_flush(), logs the last one dropped followed by
 * " ... repeated K times in N s". burst 0 turns limiting off (the
 * default: tools and tests see every message). Call at start-up. */
void moe_log_set_ratelimit(uint32_t burst, uint32_t interval_ms);

/* Log the summaries of drops whose interval is over. A daemon calls it
 * now and then (moed: every timer tick), so a burst that stops is still
 * reported. Thread-safe. */
void moe_log_flush(void);

/* Test hook: the clock rate limiting reads, in milliseconds (NULL: the
 * monotonic clock). */
void moe_log_set_clock(uint64_t (*now_ms)(void));

#endif
