/* The engine's log sink: one function pointer, set at start-up. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

static moe_log_fn sink;
static void *sink_ctx;
static _Atomic int max_level = MOE_LOG_INFO;

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

void moe_log(enum moe_log_level level, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (!sink || (int)level > atomic_load_explicit(&max_level,
						       memory_order_relaxed))
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sink(sink_ctx, level, buf);
}

void moe_log_stderr(void *ctx, enum moe_log_level level, const char *msg)
{
	(void)ctx;
	fprintf(stderr, "<%d>%s\n", (int)level, msg);
}
