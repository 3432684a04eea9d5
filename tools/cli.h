/* Command-line helpers shared by moe-layer and moectl (header-only, so
 * each program stays linked against only what it needs). */
#ifndef MOE_TOOLS_CLI_H
#define MOE_TOOLS_CLI_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse s as a number in [lo, hi] for option opt; on failure say so on
 * stderr as prog and return -1. */
static inline int cli_num(const char *prog, const char *opt, const char *s,
			  double lo, double hi, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || end == s || !(v >= lo && v <= hi)) {
		fprintf(stderr, "%s: %s: '%s' is not a number in [%g, %g]\n",
			prog, opt, s, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

/* Write n floats to path as raw little-endian rows; on failure say so on
 * stderr as prog and return -1. */
static inline int cli_write_f32(const char *prog, const char *path,
				const float *y, size_t n)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(y, sizeof(float), n, f) != n || fclose(f)) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return -1;
	}
	return 0;
}

#endif
