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

#endif
