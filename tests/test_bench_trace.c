/* moe-bench's synthetic traces produce the distributions they claim:
 * uniform picks pass a chi-square test, Zipf picks follow 1 / r^s (each
 * layer with hot experts of its own), the correlated trace repeats the
 * previous token's experts at the rate asked for; every token's experts
 * are distinct and in range; a seed gives one sequence; bad options and
 * specs are refused. The statistical tests use fixed seeds and a 0.1%
 * significance level, so a correct generator passes every time and a
 * biased one (a skewed draw, an off-by-one leaving an expert out, a
 * repeat rate off by a few percent) fails. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../client/bench_trace.h"

/* Upper 0.1% point of chi-square with df degrees of freedom
 * (Wilson-Hilferty; within a fraction of a percent for df >= 10). */
static double chi2_crit(unsigned df)
{
	double z = 3.0902, h = 2.0 / (9.0 * df);

	return df * pow(1 - h + z * sqrt(h), 3);
}

static double chi2(const double *obs, const double *expect, unsigned n)
{
	double x = 0;

	for (unsigned i = 0; i < n; i++)
		x += (obs[i] - expect[i]) * (obs[i] - expect[i]) / expect[i];
	return x;
}

static struct bench_trace *make(enum bench_dist d, uint32_t layers,
				uint32_t n, uint32_t k, double s,
				double repeat, uint64_t seed)
{
	struct bench_trace_opts o = { .dist = d, .n_layer = layers,
				      .n_expert = n, .k = k, .zipf_s = s,
				      .repeat = repeat, .seed = seed };
	struct bench_trace *t = NULL;

	assert_int_equal(bench_trace_new(&t, &o), 0);
	return t;
}

static void assert_token_ok(const uint32_t *ids, uint32_t k, uint32_t n)
{
	for (uint32_t i = 0; i < k; i++) {
		assert_true(ids[i] < n);
		for (uint32_t j = 0; j < i; j++)
			assert_int_not_equal(ids[i], ids[j]);
	}
}

static void uniform_passes_chi_square(void **state)
{
	enum { N = 64, K = 4, TOKENS = 40000 };
	struct bench_trace *t = make(BENCH_UNIFORM, 3, N, K, 0, 0, 7);
	double obs[N] = { 0 }, expect[N];
	uint32_t ids[K];

	(void)state;
	for (int i = 0; i < TOKENS; i++) {
		bench_trace_next(t, 1, ids);
		assert_token_ok(ids, K, N);
		for (int j = 0; j < K; j++)
			obs[ids[j]]++;
	}
	for (int e = 0; e < N; e++)
		expect[e] = (double)TOKENS * K / N;
	/* Picks without replacement vary a little less than multinomial
	 * counts: the test is, if anything, conservative. */
	printf("uniform: chi-square %.1f, 0.1%% critical value %.1f (df %d)\n",
	       chi2(obs, expect, N), chi2_crit(N - 1), N - 1);
	assert_true(chi2(obs, expect, N) < chi2_crit(N - 1));
	bench_trace_free(t);
}

/* Counts of the first pick of each token by Zipf rank at layer l. */
static void zipf_ranks(struct bench_trace *t, uint32_t l, uint32_t n,
		       uint32_t k, int tokens, double *by_rank)
{
	uint32_t ids[8], rank_of[256];

	for (uint32_t r = 0; r < n; r++)
		rank_of[bench_trace_expert_at(t, l, r)] = r;
	for (int i = 0; i < tokens; i++) {
		bench_trace_next(t, l, ids);
		assert_token_ok(ids, k, n);
		by_rank[rank_of[ids[0]]]++;
	}
}

static void zipf_follows_its_law(void **state)
{
	enum { N = 32, TOKENS = 100000 };
	static const double exps[] = { 0.8, 1.1, 1.6 };
	double obs[N], expect[N];

	(void)state;
	for (size_t x = 0; x < sizeof(exps) / sizeof(exps[0]); x++) {
		/* k = 1 is pure Zipf; with k = 4 the first pick still is, the
		 * others being drawn among the experts left. */
		for (uint32_t k = 1; k <= 4; k += 3) {
			struct bench_trace *t = make(BENCH_ZIPF, 2, N, k, exps[x], 0, 11 + k);

			memset(obs, 0, sizeof(obs));
			zipf_ranks(t, 1, N, k, TOKENS, obs);
			for (uint32_t r = 0; r < N; r++)
				expect[r] = TOKENS * bench_zipf_pmf(N, exps[x], r);
			printf("zipf s=%.1f k=%u: chi-square %.1f, critical %.1f; rank 1 drew %.4f, expected %.4f\n",
			       exps[x], k, chi2(obs, expect, N), chi2_crit(N - 1),
			       obs[0] / TOKENS, expect[0] / TOKENS);
			assert_true(chi2(obs, expect, N) < chi2_crit(N - 1));
			bench_trace_free(t);
		}
	}
}

static void zipf_pmf_is_a_distribution(void **state)
{
	double sum = 0;

	(void)state;
	for (uint32_t r = 0; r < 100; r++)
		sum += bench_zipf_pmf(100, 1.3, r);
	assert_true(fabs(sum - 1) < 1e-12);
	assert_true(fabs(bench_zipf_pmf(100, 1.3, 0) / bench_zipf_pmf(100, 1.3, 1) -
			 pow(2, 1.3)) < 1e-9);
	assert_true(fabs(bench_zipf_pmf(10, 0, 3) - 0.1) < 1e-12);
}

/* Every layer has hot experts of its own: its most drawn expert is its
 * rank 0, and the layers do not all share it. */
static void zipf_layers_rank_their_own(void **state)
{
	enum { N = 64, L = 8, K = 2, TOKENS = 5000 };
	struct bench_trace *t = make(BENCH_ZIPF, L, N, K, 1.2, 0, 3);
	uint32_t ids[K], hottest[L];
	int distinct = 0;

	(void)state;
	for (uint32_t l = 0; l < L; l++) {
		unsigned count[N] = { 0 }, best = 0;

		for (int i = 0; i < TOKENS; i++) {
			bench_trace_next(t, l, ids);
			for (int j = 0; j < K; j++)
				count[ids[j]]++;
		}
		for (uint32_t e = 1; e < N; e++)
			if (count[e] > count[best])
				best = e;
		assert_int_equal(best, bench_trace_expert_at(t, l, 0));
		hottest[l] = best;
		for (uint32_t m = 0; m < l; m++)
			distinct += hottest[m] == best ? 0 : 1;
	}
	assert_true(distinct > 0);
	bench_trace_free(t);
}

/* Fraction of a token's experts that the previous token at that layer
 * used too. */
static double repeat_rate(struct bench_trace *t, uint32_t n, uint32_t k,
			  int tokens)
{
	uint32_t ids[8];
	double hits = 0;

	for (uint32_t l = 0; l < 2; l++) {
		uint32_t last[8];

		bench_trace_next(t, l, last);
		for (int i = 0; i < tokens; i++) {
			bench_trace_next(t, l, ids);
			assert_token_ok(ids, k, n);
			for (uint32_t a = 0; a < k; a++)
				for (uint32_t b = 0; b < k; b++)
					hits += ids[a] == last[b];
			memcpy(last, ids, sizeof(ids));
		}
	}
	return hits / (2.0 * tokens * k);
}

static void correlated_repeats_at_its_rate(void **state)
{
	enum { N = 64, K = 4, TOKENS = 20000 };
	static const double ps[] = { 0.3, 0.6, 0.9 };

	(void)state;
	for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
		for (int zipf = 0; zipf < 2; zipf++) {
			struct bench_trace *t = make(BENCH_CORRELATED, 2, N, K,
						     zipf ? 1.1 : 0, ps[i], 5 + i);
			double got = repeat_rate(t, N, K, TOKENS);
			double sd = sqrt(ps[i] * (1 - ps[i]) / (2.0 * TOKENS * K));

			printf("correlated p=%.1f (%s base): repeat rate %.4f (sd %.4f)\n",
			       ps[i], zipf ? "Zipf" : "uniform", got, sd);
			assert_true(fabs(got - ps[i]) < 5 * sd);
			bench_trace_free(t);
		}
	}
}

static void correlated_extremes(void **state)
{
	struct bench_trace *never = make(BENCH_CORRELATED, 2, 64, 4, 0, 0, 1);
	struct bench_trace *always = make(BENCH_CORRELATED, 2, 64, 4, 0, 1, 1);
	/* Fewer than 2k - 1 experts: fresh picks run out of experts the
	 * previous token did not use, and must still be distinct. */
	struct bench_trace *tight = make(BENCH_CORRELATED, 2, 5, 4, 0, 0.2, 1);

	(void)state;
	assert_true(repeat_rate(never, 64, 4, 2000) == 0.0);
	assert_true(repeat_rate(always, 64, 4, 2000) == 1.0);
	repeat_rate(tight, 5, 4, 2000);
	bench_trace_free(never);
	bench_trace_free(always);
	bench_trace_free(tight);
}

static void a_seed_is_a_sequence(void **state)
{
	struct bench_trace *a = make(BENCH_ZIPF, 4, 64, 4, 1.0, 0, 99);
	struct bench_trace *b = make(BENCH_ZIPF, 4, 64, 4, 1.0, 0, 99);
	struct bench_trace *c = make(BENCH_ZIPF, 4, 64, 4, 1.0, 0, 100);
	uint32_t x[4], y[4], z[4];
	int differ = 0;

	(void)state;
	for (int i = 0; i < 1000; i++) {
		bench_trace_next(a, i % 4, x);
		bench_trace_next(b, i % 4, y);
		bench_trace_next(c, i % 4, z);
		assert_memory_equal(x, y, sizeof(x));
		differ += memcmp(x, z, sizeof(x)) != 0;
	}
	assert_true(differ > 500);
	bench_trace_free(a);
	bench_trace_free(b);
	bench_trace_free(c);
}

static void bad_options_refused(void **state)
{
	struct bench_trace_opts ok = { .dist = BENCH_UNIFORM, .n_layer = 2,
				       .n_expert = 8, .k = 2, .seed = 1 };
	struct bench_trace_opts o;
	struct bench_trace *t;

	(void)state;
	o = ok; o.k = 0;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.k = 9;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.n_layer = 0;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.n_expert = BENCH_TRACE_MAX_EXPERT + 1; o.k = 1;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.dist = BENCH_ZIPF;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL); /* s = 0 */
	o = ok; o.dist = BENCH_ZIPF; o.zipf_s = NAN;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.dist = BENCH_CORRELATED; o.repeat = 1.5;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok; o.dist = (enum bench_dist)7;
	assert_int_equal(bench_trace_new(&t, &o), -EINVAL);
	o = ok;
	assert_int_equal(bench_trace_new(&t, &o), 0);
	bench_trace_free(t);
}

static void specs_parsed(void **state)
{
	struct bench_trace_opts o = { 0 };

	(void)state;
	assert_int_equal(bench_trace_parse("uniform", &o), 0);
	assert_int_equal(o.dist, BENCH_UNIFORM);
	assert_int_equal(bench_trace_parse("zipf", &o), 0);
	assert_int_equal(o.dist, BENCH_ZIPF);
	assert_true(o.zipf_s == 1.0);
	assert_int_equal(bench_trace_parse("zipf:1.5", &o), 0);
	assert_true(o.zipf_s == 1.5);
	assert_int_equal(bench_trace_parse("correlated:0.3", &o), 0);
	assert_int_equal(o.dist, BENCH_CORRELATED);
	assert_true(o.repeat == 0.3 && o.zipf_s == 0);
	assert_int_equal(bench_trace_parse("correlated:0.3:1.2", &o), 0);
	assert_true(o.repeat == 0.3 && o.zipf_s == 1.2);
	assert_int_equal(bench_trace_parse("zipf:0", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("zipf:x", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("zipf:1:2", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("uniform:3", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("correlated", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("correlated:2", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("router", &o), -EINVAL);
	assert_int_equal(bench_trace_parse("", &o), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(uniform_passes_chi_square),
		cmocka_unit_test(zipf_follows_its_law),
		cmocka_unit_test(zipf_pmf_is_a_distribution),
		cmocka_unit_test(zipf_layers_rank_their_own),
		cmocka_unit_test(correlated_repeats_at_its_rate),
		cmocka_unit_test(correlated_extremes),
		cmocka_unit_test(a_seed_is_a_sequence),
		cmocka_unit_test(bad_options_refused),
		cmocka_unit_test(specs_parsed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
