/* Helpers shared by the test programs. */
#include <math.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
