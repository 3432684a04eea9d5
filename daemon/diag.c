/* moe_msgf(): formats an error line into a caller's buffer. */
#include <stdarg.h>
#include <stdio.h>

#include "diag.h"

int moe_msgf(struct moe_msg *m, int code, const char *fmt, ...)
{
	va_list ap;

	if (!m)
		return code;
	va_start(ap, fmt);
	vsnprintf(m->text, sizeof(m->text), fmt, ap);
	va_end(ap);
	return code;
}
