/* Error details for the engine. A call that fails returns a negative code
 * and, when given a struct moe_msg, writes one line naming what was wrong:
 * the file, field, value and byte offset. The engine never prints. */
#ifndef MOE_DIAG_H
#define MOE_DIAG_H

#define MOE_MSG_MAX 512

struct moe_msg {
	char text[MOE_MSG_MAX];
};

/* Format into m (if not NULL) and return code, so that a failure reads
 * `return moe_msgf(m, -MOE_EFORMAT, "...", ...);`. */
int moe_msgf(struct moe_msg *m, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
