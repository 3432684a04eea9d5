/* The engine's log sink: one function pointer, set at start-up. */
#include <stdarg.h>
#include <stdio.h>

#include "log.h"

static moe_log_fn sink;
static void *sink_ctx;

void moe_log_set(moe_log_fn fn, void *ctx)
{
	sink = fn;
	sink_ctx = ctx;
}

void moe_log(enum moe_log_level level, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (!sink)
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
