/* Logging for the engine's long-lived parts (store, io, topology): they
 * report events (a fallback taken, a read that failed) through one sink
 * the program installs. With no sink installed nothing is printed, so the
 * engine stays a quiet library inside tools and tests. */
#ifndef MOE_LOG_H
#define MOE_LOG_H

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

/* A sink writing "<level>msg" lines to stderr: the prefix is what
 * systemd's journal reads as the priority. */
void moe_log_stderr(void *ctx, enum moe_log_level level, const char *msg);

#endif
